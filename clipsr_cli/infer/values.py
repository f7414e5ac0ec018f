"""Engine option values checked without torch: device and precision names, tiling.

A value that can never work (``device='tpu'``, ``precision='fp8'``, ``tile=-1``) raises
``UsageError`` (exit status 2 in the CLI). This module imports no torch, so the CLI answers a
wrong flag as fast as ``--help`` (issue #22); whether a named device exists *here* (CUDA, MPS)
is judged later, by :func:`clipsr_cli.infer.devices.resolve_device`.
"""

from __future__ import annotations

import re
from typing import Literal

from clipsr_cli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"(auto|(cpu|cuda|mps)(:\d+)?)")


def check_device(spec: str) -> str:
    """``spec`` normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); UsageError for a
    name that is no device."""
    s = str(spec).strip().lower()
    if not _DEVICE.fullmatch(s):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps",
                         param="device")
    return s


def check_precision(precision: str) -> str:
    """``precision`` normalised; UsageError unless auto, fp32, bf16 or fp16."""
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16",
                         param="precision")
    return p


def parse_tiling(tile: int | str, tile_overlap: int | None) -> tuple[int | Literal["auto"], int | None]:
    """Check ``tile`` ('auto', 0 = off, or a size; a string is parsed) and ``tile_overlap``
    (>= 0, or None for the model's hint); UsageError for a value that can never work."""
    if tile_overlap is not None and tile_overlap < 0:
        raise UsageError("`tile_overlap` must be >= 0", param="tile_overlap")
    if isinstance(tile, str):
        if tile.strip().lower() != "auto":
            try:
                tile = int(tile)
            except ValueError:
                raise UsageError(f"`tile` must be 'auto', 0 (off) or a size in LR pixels, "
                                 f"not {tile!r}", param="tile") from None
        else:
            tile = "auto"
    if isinstance(tile, int) and tile < 0:
        raise UsageError("`tile` must be 'auto', 0 (off) or a positive size", param="tile")
    return tile, tile_overlap
