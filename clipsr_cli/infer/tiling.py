"""Tiling as pure functions over tensors: plan → run each tile → blend into finished row bands.

A tile's *core* is the part of the LR image it is responsible for; its *input* is the core grown
by ``overlap`` LR pixels of real context on each inner side. Neighbouring outputs are blended
with complementary linear ramps in a band of ``overlap`` pixels centred on each seam, so a tile's
output is only used at least ``overlap / 2`` pixels away from the edge of its input, where
zero-padding no longer reaches. Blend weights sum to one, so no weight map is needed, and
output rows are handed back as soon as they are final, so a huge output never has to exist in
float32 at once.

A part of a network whose receptive field is known exactly (the CLIP-SR tail) is run with
``run_plan(..., blend=False)``: its tiles are grown by that radius and their cores kept as they
are, which equals the untiled result. :class:`RowStream` feeds one part's row bands (the LR
feature map) to the next part's tiles, holding only a window of rows.
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


def plan_tiles(height: int, width: int, *, tile: int, overlap: int, multiple: int = 1,
               tile_width: int | None = None) -> list[list[Tile]]:
    """Rows of tiles covering a (height × width) LR image. ``tile`` ≤ 0 means one tile.

    ``tile`` bounds a core's height and ``tile_width`` (default: ``tile``) its width.
    ``overlap`` and the cut points are multiples of ``multiple`` so every tile input starts on
    the model's padding grid; ``height``/``width`` should already be multiples of it.
    """
    if overlap % multiple:
        overlap += multiple - overlap % multiple
    tile_width = tile if tile_width is None else tile_width
    if tile > 0:
        tile = max(tile, overlap, multiple)  # a core must hold a whole blend band
    if tile_width > 0:
        tile_width = max(tile_width, overlap, multiple)
    rows = _spans(height, tile, overlap, multiple)
    cols = _spans(width, tile_width, overlap, multiple)
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
    def tile_fn(t: Tile) -> torch.Tensor:
        rs, cs = t.row, t.col
        return fn(lr[:, :, rs.i0:rs.i1, cs.i0:cs.i1], (rs.i0, cs.i0))

    return run_plan(tile_fn, lr.shape[-2:], scale, plan, overlap, device=lr.device,
                    on_tile=on_tile)


def run_plan(fn: Callable[[Tile], torch.Tensor], size: tuple[int, int], scale: int,
             plan: list[list[Tile]], overlap: int, *, blend: bool = True, device=None,
             dtype: torch.dtype | None = torch.float32,
             on_tile: Callable[[], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``run_tiled`` over an image of ``size`` (H, W) that only ``fn(tile) -> (B, C, s·h, s·w)``
    (the output of the tile's input span) knows how to read.

    ``blend=False``: each tile's core is kept exactly and nothing is blended (for a part whose
    receptive field the ``plan``'s overlap covers; the plan's overlap is then the margin).
    Bands are ``dtype`` (None: as ``fn`` returns them; blended bands are always float32).
    """
    h, w = size
    tiled = len(plan) > 1 or len(plan[0]) > 1
    half = overlap // 2 if tiled and blend else 0
    pending: torch.Tensor | None = None  # blended rows shared with the next tile row
    for ri, row in enumerate(plan):
        rs = row[0].row
        last = ri == len(plan) - 1
        lo = max(0, rs.c0 - half) * scale
        hi = (h if rs.c1 >= h else rs.c1 + half) * scale
        if half == 0 and len(row) == 1:  # a whole row of output as it comes: no copy
            out = fn(row[0])
            band = out[:, :, lo - rs.i0 * scale:hi - rs.i0 * scale]
            band = band.to(dtype) if dtype is not None else band
            if on_tile is not None:
                on_tile()
            yield lo, band
            continue
        band = None
        wy = _ramp(rs, h, half, scale, lo, hi, device)
        for t in row:
            cs = t.col
            out = fn(t)
            if band is None:
                bdt = torch.float32 if half else (dtype or out.dtype)
                band = (torch.zeros if half else torch.empty)(
                    out.shape[0], out.shape[1], hi - lo, w * scale, device=device, dtype=bdt)
            clo = max(0, cs.c0 - half) * scale
            chi = (w if cs.c1 >= w else cs.c1 + half) * scale
            piece = out[:, :, lo - rs.i0 * scale:hi - rs.i0 * scale,
                        clo - cs.i0 * scale:chi - cs.i0 * scale]
            if half:
                wx = _ramp(cs, w, half, scale, clo, chi, device)
                band[:, :, :, clo:chi] += piece.float() * (wy[:, None] * wx[None, :])
            else:
                band[:, :, :, clo:chi] = piece
            if on_tile is not None:
                on_tile()
        if pending is not None:
            band[:, :, :pending.shape[2]] += pending
        if last:
            yield lo, band
        else:
            cut = (rs.c1 - half) * scale - lo
            pending = band[:, :, cut:].clone() if half else None  # a copy: the finished rows
            yield lo, band[:, :, :cut]  # can be freed (and changed in place by the consumer)
            del band


class RowStream:
    """Rows of a (B, C, H, W) map that arrives as row bands ``(y0, band)``, top to bottom.

    ``rows(i0, i1)`` returns rows [i0, i1), pulling bands as needed; ``i0`` never decreases
    between calls, and rows above it are forgotten, so only a window of rows is ever held.
    Bands are stored as ``dtype`` (channels-last on the CPU when ``channels_last``).
    """

    def __init__(self, bands: Iterator[tuple[int, torch.Tensor]], dtype: torch.dtype,
                 channels_last: bool = False):
        self._bands = iter(bands)
        self._dtype, self._cl = dtype, channels_last
        self._chunks: list[tuple[int, torch.Tensor]] = []
        self._end = 0
        self._last: tuple[int, int, torch.Tensor] | None = None

    def rows(self, i0: int, i1: int) -> torch.Tensor:
        if self._last is not None and self._last[:2] == (i0, i1):
            return self._last[2]
        while self._end < i1:
            y0, band = next(self._bands)
            band = band.to(self._dtype)
            if self._cl:
                band = band.contiguous(memory_format=torch.channels_last)
            self._chunks.append((y0, band))
            self._end = y0 + band.shape[2]
        self._chunks = [(y, c) for y, c in self._chunks if y + c.shape[2] > i0]
        parts = [c[:, :, max(0, i0 - y):i1 - y] for y, c in self._chunks if y < i1]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        self._last = (i0, i1, out)
        return out


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def count_tiles(plan: list[list[Tile]]) -> int:
    return sum(len(r) for r in plan)
