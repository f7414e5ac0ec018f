"""Tiling as pure functions over tensors: plan → run each tile → blend into finished row bands.

A tile's *core* is the part of the LR image it is responsible for; its *input* is the core grown
by ``overlap`` LR pixels of real context on each inner side. Neighbouring outputs are blended
with complementary linear ramps in a band of ``overlap`` pixels centred on each seam, so a tile's
output is only used at least ``overlap / 2`` pixels away from the edge of its input, where
zero-padding no longer reaches. Blend weights sum to one, so no weight map is needed, and
output rows are handed back as soon as they are final, so a huge output never has to exist in
float32 at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Span:
    """A 1-D tile extent in LR pixels: the core [c0, c1) and the input [i0, i1) ⊇ core."""

    c0: int
    c1: int
    i0: int
    i1: int


@dataclass(frozen=True)
class Tile:
    row: Span
    col: Span


def _spans(n: int, tile: int, overlap: int, multiple: int) -> list[Span]:
    """Split [0, n) into cores of at most ``tile`` (aligned to ``multiple``), grown by overlap."""
    if tile <= 0 or tile >= n:
        return [Span(0, n, 0, n)]
    # every core must be at least ``overlap`` long, or the two blend ramps of a core would meet
    count = max(1, min(-(-n // tile), n // max(overlap, multiple)))
    if count == 1:
        return [Span(0, n, 0, n)]
    units = -(-n // multiple)  # cut points on the ``multiple`` grid
    cuts = [min(n, round(units * k / count) * multiple) for k in range(count + 1)]
    cuts[-1] = n
    cuts = sorted(set(cuts))
    return [Span(a, b, max(0, a - overlap), min(n, b + overlap)) for a, b in zip(cuts, cuts[1:])]


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, multiple: int = 1) -> list[list[Tile]]:
    """Rows of tiles covering a (height × width) LR image. ``tile`` ≤ 0 means one tile.

    ``overlap`` and the cut points are multiples of ``multiple`` so every tile input starts on
    the model's padding grid; ``height``/``width`` should already be multiples of it.
    """
    if overlap % multiple:
        overlap += multiple - overlap % multiple
    if tile > 0:
        tile = max(tile, overlap, multiple)  # a core must hold a whole blend band
    rows = _spans(height, tile, overlap, multiple)
    cols = _spans(width, tile, overlap, multiple)
    return [[Tile(r, c) for c in cols] for r in rows]


def _ramp(span: Span, n: int, half: int, scale: int, lo: int, hi: int, device) -> torch.Tensor:
    """1-D blend weights of one tile over output coordinates [lo, hi)·... (already scaled)."""
    y = torch.arange(lo, hi, device=device, dtype=torch.float32) + 0.5
    w = torch.ones_like(y)
    band = 2 * half * scale
    if half > 0:
        if span.c0 > 0:  # ramp up across the seam at c0
            start = (span.c0 - half) * scale
            w = torch.minimum(w, ((y - start) / band).clamp(0, 1))
        if span.c1 < n:  # ramp down across the seam at c1
            end = (span.c1 + half) * scale
            w = torch.minimum(w, ((end - y) / band).clamp(0, 1))
    return w


def run_tiled(fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], lr: torch.Tensor,
              scale: int, plan: list[list[Tile]], overlap: int,
              on_tile: Callable[[], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``fn(tile_input, (y0, x0)) -> (B, C, s·h, s·w)`` over ``plan`` and yield finished
    output row bands ``(y0_out, band)`` top to bottom (float32, on ``lr``'s device), which
    together cover the whole (s·H × s·W) output exactly once. A band is the consumer's: it may be
    modified in place, and is not kept.
    """
    b, _, h, w = lr.shape
    half = overlap // 2 if len(plan) > 1 or len(plan[0]) > 1 else 0
    pending: torch.Tensor | None = None  # blended rows shared with the next tile row
    for ri, row in enumerate(plan):
        rs = row[0].row
        last = ri == len(plan) - 1
        lo = max(0, rs.c0 - half) * scale
        hi = (h if rs.c1 >= h else rs.c1 + half) * scale
        band = None
        wy = _ramp(rs, h, half, scale, lo, hi, lr.device)
        for t in row:
            cs = t.col
            out = fn(lr[:, :, rs.i0:rs.i1, cs.i0:cs.i1], (rs.i0, cs.i0)).float()
            if band is None:
                band = torch.zeros(b, out.shape[1], hi - lo, w * scale, device=lr.device)
            clo = max(0, cs.c0 - half) * scale
            chi = (w if cs.c1 >= w else cs.c1 + half) * scale
            wx = _ramp(cs, w, half, scale, clo, chi, lr.device)
            piece = out[:, :, lo - rs.i0 * scale:hi - rs.i0 * scale,
                        clo - cs.i0 * scale:chi - cs.i0 * scale]
            band[:, :, :, clo:chi] += piece * (wy[:, None] * wx[None, :])
            if on_tile is not None:
                on_tile()
        if pending is not None:
            band[:, :, :pending.shape[2]] += pending
        if last:
            yield lo, band
        else:
            cut = (rs.c1 - half) * scale - lo
            pending = band[:, :, cut:].clone()  # a copy: the finished rows can be freed (and
            yield lo, band[:, :, :cut]         # changed in place by the consumer)
            del band


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def count_tiles(plan: list[list[Tile]]) -> int:
    return sum(len(r) for r in plan)
