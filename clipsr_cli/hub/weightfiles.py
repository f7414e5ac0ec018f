"""The one table of weight-file name endings: how a file of each kind is read.

Only :mod:`clipsr_cli.hub.resolve` (what a model string names) and
:mod:`clipsr_cli.hub.entries` (which files a registry entry of each kind may name) ask it;
``tests/test_layers.py`` checks that no other module tests weight-file suffixes. Below the hub,
a reader is told the format (e.g. :class:`~clipsr_cli.hub.resolve.ForeignFile.format`) instead
of guessing it from a name.
"""

from __future__ import annotations

from pathlib import PurePath
from types import MappingProxyType
from typing import Literal

__all__ = ["WeightsFormat", "SUFFIXES", "weights_format", "suffixes_of", "kind_reads"]

#: ``safetensors``: read by safetensors (nothing executed); ``torch``: a PyTorch pickle, read only
#: with ``torch.load(weights_only=True)`` (never a full unpickle); ``torchscript``: an OpenAI CLIP
#: archive, which only open_clip reads (registered CLIP weights, sha256-verified).
WeightsFormat = Literal["safetensors", "torch", "torchscript"]

#: name ending → format of a *model* file (a user's path, a third-party or clipsr checkpoint).
SUFFIXES = MappingProxyType({
    ".safetensors": "safetensors",
    ".pth": "torch",
    ".pt": "torch",
    ".ckpt": "torch",
    ".bin": "torch",
})

#: Which endings a registry entry of each kind may name (a subset of :data:`SUFFIXES`; a CLIP
#: ``.pt`` is OpenAI's TorchScript archive).
_KIND_SUFFIXES = MappingProxyType({
    "generator": (".safetensors",),
    "spandrel": (".safetensors", ".pth", ".pt", ".ckpt"),
    "clip": (".pt", ".safetensors"),
})


def weights_format(name: str | PurePath) -> WeightsFormat | None:
    """The format a weights file of this name is read in, by its ending; None for any other
    name (a registered name, a folder, a file clipsr reads as its own checkpoint)."""
    return SUFFIXES.get(PurePath(str(name)).suffix.lower())


def suffixes_of(kind: str) -> tuple[str, ...]:
    """The file endings a registry entry of ``kind`` may name (empty: no file, a pipeline)."""
    return _KIND_SUFFIXES.get(kind, ())


def kind_reads(kind: str, name: str | PurePath) -> bool:
    """Whether a registry entry of ``kind`` may name a file called ``name`` (by its ending, case
    as written: registry file names are exact)."""
    return str(name).endswith(suffixes_of(kind))  # no endings (a pipeline): no file
