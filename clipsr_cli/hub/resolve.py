"""What the rest of clipsr asks the hub: a model name (or path) → a verified local file.

A registered name is looked up in the registry (``clipsr_cli.hub.registry``), its file checked
in the store (``clipsr_cli.hub.store``) and, when missing, downloaded (``clipsr_cli.hub.fetch``)
unless offline. ``offline`` and ``progress`` are passed on to :func:`clipsr_cli.hub.fetch.ensure`.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.fetch import Progress, ensure
from clipsr_cli.hub.registry import load_registry


def _looks_like_path(s: str) -> bool:
    return ("/" in s or os.sep in s or s.startswith("~")
            or s.lower().endswith((".safetensors", ".pt", ".pth", ".ckpt", ".bin")))


def resolve_model(name_or_path: str, *, offline: bool | None = None,
                  progress: Progress | None = None) -> Path:
    """A generator checkpoint to load: a ``.safetensors`` path as-is, or a registered name as
    its verified local file, downloaded first unless offline.

    Raises ``ModelError`` (unknown name, with close matches; not a generator; not a
    safetensors file) or ``DownloadError`` (offline and not installed; download failed).
    """
    s = str(name_or_path).strip()
    p = Path(s).expanduser()
    reg = None
    if not _looks_like_path(s):
        reg = load_registry()
        if s not in reg and not p.is_file():
            reg.get(s)  # raises: unknown name, with close matches
    if reg is None or s not in reg:  # a path
        if not p.is_file():
            raise ModelError(f"model file not found: {p}; check the path, or use a registered "
                             "name from 'clipsr models'")
        if p.suffix.lower() != ".safetensors":
            raise ModelError(f"{p} is not a .safetensors checkpoint; clipsr loads only "
                             "safetensors files (it never unpickles .pt/.pth weights)")
        return p
    entry = reg.get(s)
    if entry.kind == "pipeline":
        raise ModelError(f"{entry.name!r} is a pipeline of other models ({' → '.join(entry.stages)}), "
                         "not one checkpoint; load it with Upscaler.load")
    if entry.kind == "clip":
        raise ModelError(f"{entry.name!r} is a CLIP backbone, not an upscaling model; choose a "
                         "generator from 'clipsr models'")
    return ensure(entry, offline=offline, progress=progress)


def clip_weights_path(arch: str, weights: str, *, offline: bool | None = None,
                      progress: Progress | None = None) -> Path | None:
    """The verified local file of the CLIP entry for ``(arch, weights)``, fetched if missing
    (unless offline: ``DownloadError`` with the command to run); None when no entry matches."""
    entry = load_registry().clip_entry(arch, weights)
    if entry is None:
        return None
    return ensure(entry, offline=offline, progress=progress)


__all__ = ["resolve_model", "clip_weights_path"]
