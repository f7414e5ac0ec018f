"""Shell completion of option *values* (``--device <TAB>``, ``-m <TAB>``, ``download <TAB>``),
for the shared option declarations in :mod:`clipsr_cli.cli.options` and a few commands' own.

Each function takes what has been typed so far and returns the candidates that start with it,
without importing torch (a completion must be instant). Typer's shell scripts complete only the
values returned, so model and weight files are listed here too.
"""

from __future__ import annotations

import glob
import os

from clipsr_cli.infer.values import DEVICES, PRECISIONS
from clipsr_cli.io.formats import WRITE_FORMATS


def _starting(values, incomplete: str) -> list[str]:
    return [v for v in dict.fromkeys(values) if v.startswith(incomplete)]


def devices(incomplete: str) -> list[str]:
    return _starting(DEVICES + ("cuda:0", "cuda:1"), incomplete)


def precisions(incomplete: str) -> list[str]:
    return _starting(PRECISIONS, incomplete)


def scales(incomplete: str) -> list[str]:
    return _starting(("4", "8", "16", "2"), incomplete)


def tiles(incomplete: str) -> list[str]:
    return _starting(("auto", "0", "256", "512"), incomplete)


def formats(incomplete: str) -> list[str]:
    return _starting([f.lower() for f in WRITE_FORMATS], incomplete)


def degradations(incomplete: str) -> list[str]:
    from typing import get_args

    from clipsr_cli.infer.degradation import DegradationMode

    return _starting(get_args(DegradationMode), incomplete)


def _registered(*, clip: bool) -> list[str]:
    from clipsr_cli.errors import ClipsrError
    from clipsr_cli.hub.entries import ClipEntry
    from clipsr_cli.hub.registry import load_registry

    try:
        return [e.name for e in load_registry() if clip or not isinstance(e, ClipEntry)]
    except ClipsrError:  # a broken user registry: no names, never a traceback while completing
        return []


def _weight_files(incomplete: str) -> list[str]:
    """Folders and weight files (the endings clipsr reads as models) under what is typed."""
    from clipsr_cli.hub.resolve import is_weights_name

    out = []
    for p in sorted(glob.glob(glob.escape(os.path.expanduser(incomplete)) + "*")):
        if os.path.isdir(p):
            out.append(p + os.sep)
        elif is_weights_name(p):
            out.append(p)
    return out


def models(incomplete: str) -> list[str]:
    """Registered models and pipelines (not CLIP backbones), then model files."""
    return _starting(_registered(clip=False), incomplete) + _weight_files(incomplete)


def downloadable(incomplete: str) -> list[str]:
    """Everything ``clipsr download`` fetches: every registered name, CLIP backbones too."""
    return _starting(_registered(clip=True), incomplete)
