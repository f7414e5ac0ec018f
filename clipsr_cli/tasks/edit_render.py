"""The views of ``edit``: the labelled side-by-side grid and the animated GIF of a sweep.

Each result is shown at a size where it can be compared: an output whose shorter side is under
:data:`MIN_VIEW_SIDE` px is enlarged by the smallest whole factor that reaches it, with
nearest-neighbour so its pixels stay visible (:func:`view_factor`); a larger one is shown at its
own size, never shrunk. Labels use Pillow's bundled default font (no font files), sized for the
cell's width and wrapped on spaces only (:func:`fit_label`): a word is never split; a single word
too wide for the cell is drawn smaller, and ellipsised only if it is too wide even at
:data:`MIN_FONT_SIZE`.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch

from clipsr_cli.io.quantise import quantise

__all__ = ["GIF_FRAME_MS", "MIN_FONT_SIZE", "MIN_VIEW_SIDE", "compose_gif", "compose_grid",
           "enlarge", "fit_label", "label_font_size", "to_uint8", "view_factor"]

#: Milliseconds per frame of the GIF.
GIF_FRAME_MS = 600
#: A view's shorter side is at least this many pixels (or the output's own size, if larger).
MIN_VIEW_SIDE = 256
#: The enlargement stops before a view's longer side passes this (extreme aspect ratios only).
MAX_VIEW_SIDE = 8192
#: Labels never get smaller than this (px); a word too wide even then is ellipsised.
MIN_FONT_SIZE = 10
_ELLIPSIS = "..."  # ASCII: the default font's coverage is Latin


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] or (H, W, 3) uint8/uint16 → (H, W, 3) uint8, rounded as the
    image writer rounds (so a view of an 8-bit result has exactly the written pixels)."""
    if isinstance(x, torch.Tensor):
        return quantise(x[0].permute(1, 2, 0), 8)
    if x.dtype == np.uint16:
        return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.ascontiguousarray(x, dtype=np.uint8)


def view_factor(height: int, width: int, *, min_side: int = MIN_VIEW_SIDE) -> int:
    """The whole enlargement factor k >= 1 that brings the shorter side to at least ``min_side``
    (1 when it already is), limited so the longer side stays within :data:`MAX_VIEW_SIDE`."""
    short, long = min(height, width), max(height, width)
    if short <= 0 or short >= min_side:
        return 1
    return max(1, min(math.ceil(min_side / short), MAX_VIEW_SIDE // long))


def enlarge(tile: np.ndarray, k: int) -> np.ndarray:
    """``tile`` (H, W, C) enlarged k× with nearest-neighbour (each pixel becomes a k×k block)."""
    return tile if k == 1 else np.repeat(np.repeat(tile, k, axis=0), k, axis=1)


@functools.lru_cache(maxsize=64)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # bundled (FreeType) or bitmap: no font files


def label_font_size(width: int) -> int:
    """A readable font size (px) for a label under a cell ``width`` px wide: ~1/18 of it, 14 px
    for a 256-px cell, at most 40."""
    return int(min(40, max(MIN_FONT_SIZE + 2, round(width / 18))))


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy wrap of ``text`` on spaces to ``width`` px; a word is never split (a line holding a
    single word may be wider than ``width``)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if not line or font.getlength(cand) <= width:
                line = cand
            else:
                lines.append(line.rstrip())
                line = word
        lines.append(line.rstrip())
    return lines


def _ellipsise(word: str, font, width: int) -> str:
    for cut in range(len(word) - 1, 0, -1):
        if font.getlength(word[:cut] + _ELLIPSIS) <= width:
            return word[:cut] + _ELLIPSIS
    return _ELLIPSIS


def fit_label(text: str, width: int, font_size: int) -> tuple[list[str], int]:
    """The lines of ``text`` wrapped on spaces to ``width`` px, and the font size they need.

    Starts at ``font_size``; if a single word is wider than ``width``, the size shrinks (down to
    :data:`MIN_FONT_SIZE`) until every word fits; a word too wide even then is cut and ends in
    ``...``. Words are never split across lines."""
    width = max(1, width)
    size = max(MIN_FONT_SIZE, font_size)
    while True:
        font = _font(size)
        lines = _wrap(text, font, width)
        if all(font.getlength(line) <= width for line in lines):
            return lines, size
        if size <= MIN_FONT_SIZE:
            return [line if font.getlength(line) <= width else _ellipsise(line, font, width)
                    for line in lines], size
        size -= 1


def _labelled(tile: np.ndarray, label: str, *, font_size: int, band: int | None = None):
    """``tile`` with ``label`` written in a white band below it; returns (image, band height)."""
    from PIL import Image, ImageDraw

    h, w = tile.shape[:2]
    pad = max(2, font_size // 3)
    lines, size = fit_label(label, w - 2 * pad, font_size)
    font = _font(size)
    line_h = size + max(2, size // 4)
    need = 2 * pad + line_h * len(lines)
    band = need if band is None else max(band, need)
    img = Image.new("RGB", (w, h + band), (255, 255, 255))
    img.paste(Image.fromarray(tile, "RGB"), (0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((pad, h + pad + i * line_h), line, fill=(0, 0, 0), font=font)
    return img, band


def _views(tiles: list[np.ndarray], labels: list[str], min_side: int):
    """The labelled views of ``tiles``, all enlarged by one common factor, with one band height."""
    if not tiles or len(tiles) != len(labels):
        raise ValueError("one label per image is needed")
    k = view_factor(min(t.shape[0] for t in tiles), min(t.shape[1] for t in tiles),
                    min_side=min_side)
    big = [enlarge(t, k) for t in tiles]
    size = label_font_size(min(t.shape[1] for t in big))
    band = max(_labelled(t, lab, font_size=size)[1] for t, lab in zip(big, labels, strict=True))
    return [_labelled(t, lab, font_size=size, band=band)[0]
            for t, lab in zip(big, labels, strict=True)]


def compose_grid(tiles: list[np.ndarray], labels: list[str], *, gap: int = 4,
                 min_side: int = MIN_VIEW_SIDE) -> np.ndarray:
    """Tiles (H, W, 3 uint8, same height) side by side, each enlarged to a view
    (:func:`view_factor`) with its label below, separated by ``gap`` white pixels; returns an
    (H', W', 3) uint8 array."""
    from PIL import Image

    parts = _views(tiles, labels, min_side)
    height = max(p.height for p in parts)
    width = sum(p.width for p in parts) + gap * (len(parts) - 1)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for p in parts:
        grid.paste(p, (x, 0))
        x += p.width + gap
    return np.asarray(grid)


def compose_gif(frames: list[np.ndarray], labels: list[str], *,
                duration_ms: int = GIF_FRAME_MS, min_side: int = MIN_VIEW_SIDE) -> bytes:
    """An endlessly looping GIF of ``frames`` (H, W, 3 uint8), each enlarged to a view like the
    grid's and labelled below. Labels make every frame distinct, so Pillow never merges two
    frames: the GIF has len(frames) frames."""
    imgs = _views(frames, labels, min_side)
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], loop=0,
                 duration=duration_ms, optimize=False)
    return buf.getvalue()
