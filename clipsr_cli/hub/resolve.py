"""What a model string names, decided once: :func:`resolve` → a frozen :data:`ModelRef`.

A model string is a registered name (``clipsr-lite-x4``), a registered pipeline (the built-in
×8/×16), a clipsr checkpoint (a ``.safetensors`` file with clipsr's metadata, or a run folder
holding ``model.safetensors``), a third-party SR file (``.pth``/``.pt``/``.ckpt``/``.bin``, or
a ``.safetensors`` file without clipsr's metadata) or a CLIP backbone's name/tag (not an
upscaler). The engine, ``inspect``, batch planning, ``compare`` and ``eval`` branch on the type
of the reference only; what a file name ending means is :mod:`clipsr_cli.hub.weightfiles`.

The rules, in order:

1. a string with a path separator, starting with ``~``, or ending in a weights suffix is a
   path (a folder means its ``model.safetensors``);
2. otherwise a registered name (or a CLIP ``ARCH:WEIGHTS``) wins, also over a file of the same
   name in the working directory (write ``./NAME`` for the file);
3. otherwise an existing file or folder of that name; otherwise ``ModelError`` with close
   registered names.

A third-party ``.pth`` is read only with ``torch.load(weights_only=True)``: nothing is ever
fully unpickled (:mod:`clipsr_cli.model.foreign`). Registered files are verified local files,
downloaded first unless offline (:func:`clipsr_cli.hub.fetch.ensure`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.fetch import Progress, ensure
from clipsr_cli.hub.entries import (UPSCALERS, ClipEntry, GeneratorEntry, ModelEntry,
                                    PipelineEntry, SpandrelEntry, resize_factor)
from clipsr_cli.hub.registry import default_model, load_registry
from clipsr_cli.hub.weightfiles import weights_format
from clipsr_cli.io.files import check_regular
from clipsr_cli.model.header import FORMAT, read_header

__all__ = ["ModelRef", "NetworkRef", "Registered", "PipelineRef", "ClipsrFile", "ForeignFile",
           "ClipRef", "resolve", "known_scale", "resolve_model", "clip_weights_path",
           "clip_weights_file", "is_weights_name"]


@dataclass(frozen=True)
class ClipsrFile:
    """A clipsr checkpoint on disk (read by :func:`clipsr_cli.model.checkpoint.read_checkpoint`,
    which says what is wrong with a file that is not one)."""

    path: Path
    name: str
    """What the user wrote (messages, the engine's name)."""

    def header_scale(self) -> int | None:
        """The scale in the checkpoint's header (no weights read), or None when the header does
        not say (loading the file then reports what is wrong)."""
        try:
            _, _, meta = read_header(self.path)
            scale = json.loads(meta["config"])["scale"]
        except (ModelError, ValueError, KeyError, TypeError, RecursionError):
            return None
        return scale if isinstance(scale, int) and not isinstance(scale, bool) else None


@dataclass(frozen=True)
class ForeignFile:
    """A third-party SR checkpoint (spandrel), read in ``format`` (``safetensors`` or ``torch``)."""

    path: Path
    format: str
    name: str


@dataclass(frozen=True)
class Registered:
    """A registry entry with one file: a clipsr generator or a spandrel model."""

    entry: GeneratorEntry | SpandrelEntry

    @property
    def name(self) -> str:
        return self.entry.name

    def file(self, *, offline: bool | None = None,
             progress: Progress | None = None) -> ClipsrFile | ForeignFile:
        """The verified local file (downloaded first unless offline), as a file reference."""
        path = ensure(self.entry, offline=offline, progress=progress)
        if isinstance(self.entry, SpandrelEntry):
            return ForeignFile(path, weights_format(path) or "torch", self.name)
        return ClipsrFile(path, self.name)


@dataclass(frozen=True)
class PipelineRef:
    """A registered pipeline: its stages in order, each a :class:`Registered` model or an int N
    (a bicubic ×N resize)."""

    entry: PipelineEntry
    stages: tuple[Registered | int, ...]

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass(frozen=True)
class ClipRef:
    """A registered CLIP backbone: named, but no upscaling model."""

    entry: ClipEntry

    @property
    def name(self) -> str:
        return self.entry.name


#: A model reference: what the engine loads (or refuses, for a CLIP backbone).
ModelRef = Union[Registered, PipelineRef, ClipsrFile, ForeignFile, ClipRef]
#: One network: what a pipeline stage or a single engine is built from.
NetworkRef = Union[Registered, ClipsrFile, ForeignFile]
_REF_TYPES = (Registered, PipelineRef, ClipsrFile, ForeignFile, ClipRef)


def resolve(model: str | os.PathLike | ModelRef | None, *, scale: int | None = None) -> ModelRef:
    """The reference ``model`` names (see the module docstring for the rules); ``None`` names the
    built-in model for ``scale``. A reference is returned as it is. Nothing is downloaded and no
    weights are read (a ``.safetensors`` file's header is, to tell clipsr's from others').

    Raises ``ModelError``: unknown name (with close matches), missing file, a folder without
    ``model.safetensors``, a broken pipeline entry."""
    if isinstance(model, _REF_TYPES):
        return model
    if model is None:
        if scale is None:
            raise ModelError("no model given; pass a model name/path or a scale")
        model = default_model(scale)
    s = str(model).strip()
    if _looks_like_path(s):
        return _file_ref(s)
    reg = load_registry()
    entry = reg.find(s)
    if entry is None:
        if Path(s).exists():
            return _file_ref(s)
        reg.get(s)  # raises: unknown name, with close matches
    return _entry_ref(entry)


def is_weights_name(name: str | os.PathLike) -> bool:
    """True if a file of this name is model weights by its ending (what shell completion of
    ``-m`` offers besides folders); which reader loads it is :func:`resolve`'s decision."""
    return weights_format(str(name)) is not None


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.startswith("~") or weights_format(s) is not None


def _file_ref(s: str) -> ClipsrFile | ForeignFile:
    p = Path(s).expanduser()
    if p.is_dir():
        cand = p / "model.safetensors"
        if not cand.is_file():
            raise ModelError(f"{p} is a directory without model.safetensors; pass a checkpoint "
                             "file")
        p = cand
    if not p.exists():
        raise ModelError(f"model file not found: {p}; check the path, or use a registered name "
                         "from 'clipsr models'")
    check_regular(p, what="model file", error=ModelError)  # a FIFO or device: said what it is
    fmt = weights_format(p)
    if fmt == "torch":
        return ForeignFile(p, fmt, s)
    if fmt == "safetensors":
        try:
            _, _, meta = read_header(p)
        except ModelError:  # unreadable: the clipsr reader says what is wrong with it
            return ClipsrFile(p, s)
        return ClipsrFile(p, s) if meta.get("format") == FORMAT else ForeignFile(p, fmt, s)
    return ClipsrFile(p, s)  # any other name is read as clipsr's own checkpoint


def _entry_ref(entry: ModelEntry) -> Registered | PipelineRef | ClipRef:
    if isinstance(entry, ClipEntry):
        return ClipRef(entry)
    if not isinstance(entry, PipelineEntry):
        return Registered(entry)
    reg = load_registry()
    stages: list[Registered | int] = []
    for name in entry.stages:
        factor = resize_factor(name)
        if factor is not None:
            stages.append(factor)
            continue
        sub = reg.find(name)
        if not isinstance(sub, UPSCALERS):
            raise ModelError(f"pipeline {entry.name!r} ({entry.origin}): stage {name!r} is not "
                             "a registered upscaling model; fix the registry file")
        stages.append(Registered(sub))
    return PipelineRef(entry, tuple(stages))


def known_scale(ref: ModelRef) -> int | None:
    """``ref``'s scale known without loading it: a registered entry's, or a clipsr checkpoint's
    header; None when only loading tells (a third-party file, a CLIP backbone)."""
    if isinstance(ref, (Registered, PipelineRef)):
        return ref.entry.scale
    if isinstance(ref, ClipsrFile):
        return ref.header_scale()
    return None


def resolve_model(name_or_path: str | ModelRef, *, offline: bool | None = None,
                  progress: Progress | None = None) -> Path:
    """The one weights file ``name_or_path`` names: a path as it is, or a registered name as its
    verified local file, downloaded first unless offline.

    Raises ``ModelError`` (see :func:`resolve`; a pipeline or a CLIP backbone is no one model
    file) or ``DownloadError`` (offline and not installed; download failed).
    """
    ref = resolve(name_or_path)
    if isinstance(ref, PipelineRef):
        raise ModelError(f"{ref.name!r} is a pipeline of other models "
                         f"({' → '.join(ref.entry.stages)}), not one checkpoint; load it with "
                         "Upscaler.load")
    if isinstance(ref, ClipRef):
        raise ModelError(f"{ref.name!r} is a CLIP backbone, not an upscaling model; choose a "
                         "generator from 'clipsr models'")
    if isinstance(ref, Registered):
        ref = ref.file(offline=offline, progress=progress)
    return ref.path


def clip_weights_path(arch: str, weights: str, *, offline: bool | None = None,
                      progress: Progress | None = None) -> Path | None:
    """The verified local file of the CLIP entry for ``(arch, weights)``, fetched if missing
    (unless offline: ``DownloadError`` with the command to run); None when no entry matches."""
    entry = load_registry().clip_entry(arch, weights)
    if entry is None:
        return None
    return ensure(entry, offline=offline, progress=progress)


def clip_weights_file(arch: str, weights: str) -> Path | None:
    """The CLIP weights named by WEIGHTS of ``ARCH:WEIGHTS`` when it is a file: a registered
    tag's verified file, or a path (a separator, ``~``, a weights suffix, or an existing file;
    ``ModelError`` when such a path does not exist). None: ``random`` or an open_clip tag."""
    if weights == "random":
        return None
    path = clip_weights_path(arch, weights)
    if path is not None:
        return path
    if _looks_like_path(weights) or Path(weights).exists():
        p = Path(weights).expanduser()
        if not p.is_file():
            raise ModelError(f"CLIP weights file not found: {p}")
        return p
    return None
