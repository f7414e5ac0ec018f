"""The views of ``edit``: the labelled side-by-side grid and the animated GIF of a sweep.

Labels use Pillow's bundled default font (no font files), wrapped to each tile's width.
"""

from __future__ import annotations

import io

import numpy as np
import torch

__all__ = ["GIF_FRAME_MS", "compose_gif", "compose_grid", "to_uint8"]

#: Milliseconds per frame of the GIF.
GIF_FRAME_MS = 600


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] or (H, W, 3) uint8/uint16 → (H, W, 3) uint8."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).mul(255).add_(0.5).floor_()
        return x.to(torch.uint8).numpy()
    if x.dtype == np.uint16:
        return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.ascontiguousarray(x, dtype=np.uint8)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # bundled (FreeType) or bitmap: no font files


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (over-long words are split)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if draw.textlength(cand, font=font) <= width or not line:
                line = cand
            else:
                lines.append(line)
                line = word
            while draw.textlength(line, font=font) > width and len(line) > 1:
                for cut in range(len(line) - 1, 0, -1):
                    if draw.textlength(line[:cut], font=font) <= width:
                        break
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _labelled(tile: np.ndarray, label: str, *, font_size: int, band: int | None = None):
    """``tile`` with ``label`` written in a white band below it; returns (image, band height)."""
    from PIL import Image, ImageDraw

    h, w = tile.shape[:2]
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(2, font_size // 3)
    lines = _wrap(probe, label, font, max(1, w - 2 * pad))
    line_h = font_size + max(2, font_size // 4)
    need = 2 * pad + line_h * len(lines)
    band = need if band is None else max(band, need)
    img = Image.new("RGB", (w, h + band), (255, 255, 255))
    img.paste(Image.fromarray(tile, "RGB"), (0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((pad, h + pad + i * line_h), line, fill=(0, 0, 0), font=font)
    return img, band


def _font_size(width: int) -> int:
    return int(min(40, max(10, round(width / 22))))


def compose_grid(tiles: list[np.ndarray], labels: list[str], *, gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3 uint8, same height) side by side, each with its label below, separated by
    ``gap`` white pixels; returns an (H', W', 3) uint8 array."""
    from PIL import Image

    if not tiles or len(tiles) != len(labels):
        raise ValueError("compose_grid needs one label per tile")
    size = _font_size(min(t.shape[1] for t in tiles))
    band = max(_labelled(t, lab, font_size=size)[1] for t, lab in zip(tiles, labels, strict=True))
    parts = [_labelled(t, lab, font_size=size, band=band)[0]
             for t, lab in zip(tiles, labels, strict=True)]
    height = max(p.height for p in parts)
    width = sum(p.width for p in parts) + gap * (len(parts) - 1)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for p in parts:
        grid.paste(p, (x, 0))
        x += p.width + gap
    return np.asarray(grid)


def compose_gif(frames: list[np.ndarray], labels: list[str], *,
                duration_ms: int = GIF_FRAME_MS) -> bytes:
    """An endlessly looping GIF of ``frames`` (H, W, 3 uint8), each labelled below. Labels make
    every frame distinct, so Pillow never merges two frames: the GIF has len(frames) frames."""
    if not frames or len(frames) != len(labels):
        raise ValueError("compose_gif needs one label per frame")
    size = _font_size(frames[0].shape[1])
    band = max(_labelled(f, lab, font_size=size)[1] for f, lab in zip(frames, labels, strict=True))
    imgs = [_labelled(f, lab, font_size=size, band=band)[0]
            for f, lab in zip(frames, labels, strict=True)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], loop=0,
                 duration=duration_ms, optimize=False)
    return buf.getvalue()
