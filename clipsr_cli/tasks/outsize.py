"""Any output size: ``outscale`` (a factor), ``width`` / ``height`` (pixels).

The model always runs at its own scale (``passes`` times when asked); the result is then resized
to the asked size with Pillow's Lanczos filter (antialiased when it shrinks), on the quantised
output: 8-bit RGB in Pillow's own mode, 16-bit and alpha channel by channel in 32-bit float
(rounded once at the end), so the bit depth and the alpha channel are kept.

* ``outscale=F`` (a number >= 1): round(F·W) × round(F·H) (halves round up).
* ``width=W``: W wide, the height keeps the aspect ratio; ``height=H`` likewise.
* both: exactly W × H, allowed only when that keeps the image's aspect ratio to within a pixel
  (clipsr never stretches an image); otherwise the file is refused.

Default output names say the size asked for, so they are known before any image is decoded:
``<stem>_x2.5``, ``<stem>_w1920``, ``<stem>_h1080``, ``<stem>_1920x1080``. Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clipsr_cli.errors import InputError, UsageError
from clipsr_cli.io.memory import check_output

__all__ = ["OutputSize", "beyond_note", "format_factor", "resize_output"]


def format_factor(f: float) -> str:
    """2.5 → ``2.5``, 3.0 → ``3``, 1.333333 → ``1.333333`` (for file names and messages)."""
    return f"{f:.6f}".rstrip("0").rstrip(".")


def _half_up(x: float) -> int:
    return max(1, math.floor(x + 0.5))


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"`{name}` must be a whole number of pixels >= 1, not {value!r}",
                         param=name)
    return int(value)


@dataclass(frozen=True)
class OutputSize:
    """The size asked for; build it with :meth:`parse` (None: the model's own size)."""

    outscale: float | None = None
    width: int | None = None
    height: int | None = None

    @classmethod
    def parse(cls, *, outscale: float | None = None, width: int | None = None,
              height: int | None = None) -> "OutputSize | None":
        """Check the values (UsageError for one that can never work); None if none is given."""
        if outscale is None and width is None and height is None:
            return None
        if outscale is not None and (width is not None or height is not None):
            raise UsageError("use either `outscale` or `width`/`height`, not both",
                             param="outscale")
        if outscale is not None:
            try:
                f = float(outscale)
            except (TypeError, ValueError):
                f = math.nan
            if isinstance(outscale, bool) or not math.isfinite(f) or f < 1:
                raise UsageError(f"`outscale` must be a number >= 1 (e.g. 2.5), not {outscale!r}",
                                 param="outscale")
            return cls(outscale=f)
        return cls(width=None if width is None else _whole(width, "width"),
                   height=None if height is None else _whole(height, "height"))

    @property
    def suffix(self) -> str:
        """The default name tag: ``_x2.5``, ``_w1920``, ``_h1080`` or ``_1920x1080``."""
        if self.outscale is not None:
            return f"_x{format_factor(self.outscale)}"
        if self.width is not None and self.height is not None:
            return f"_{self.width}x{self.height}"
        return f"_w{self.width}" if self.width is not None else f"_h{self.height}"

    def target(self, width: int, height: int, *, name: str = "the image") -> tuple[int, int]:
        """The output (width, height) for an input of ``width`` × ``height``; InputError when
        both ``width`` and ``height`` are given and do not keep its aspect ratio."""
        size = self._target(width, height, name=name)
        # judged before any work, with what the resize will need (see resize_output)
        check_output(*size, bytes_per_pixel=_resize_bytes(2, True), what="the resized output",
                     hint="ask for a smaller size")
        return size

    def _target(self, width: int, height: int, *, name: str) -> tuple[int, int]:
        if self.outscale is not None:
            return _half_up(self.outscale * width), _half_up(self.outscale * height)
        if self.width is not None and self.height is not None:
            w, h = self.width, self.height
            if abs(h - w * height / width) > 1 and abs(w - h * width / height) > 1:
                keep = f"{w}×{_half_up(w * height / width)} or {_half_up(h * width / height)}×{h}"
                raise InputError(f"`width={w}` and `height={h}` would stretch {name} "
                                 f"({width}×{height}; same shape: {keep}); give only one of them")
            return w, h
        if self.width is not None:
            return self.width, _half_up(self.width * height / width)
        return _half_up(self.height * width / height), self.height


def beyond_note(size: "OutputSize | None", scale: int) -> str | None:
    """A note when ``outscale`` asks for more than the model's ``scale`` gives (resized up)."""
    if size is None or size.outscale is None or size.outscale <= scale:
        return None
    return (f"×{format_factor(size.outscale)} is above the model's ×{scale}: its output is resized "
            "up (`passes=2` runs the model twice instead)")


def _resize_channels(arr: np.ndarray, size: tuple[int, int], maxv: float) -> np.ndarray:
    """(H, W, C) → (h, w, C): each channel in Pillow's 32-bit float mode, Lanczos."""
    from PIL import Image

    w, h = size
    out = np.empty((h, w, arr.shape[2]), dtype=np.float32)
    for c in range(arr.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, c], dtype=np.float32), mode="F")
        out[:, :, c] = np.asarray(im.resize(size, Image.Resampling.LANCZOS))
    return np.clip(out, 0.0, maxv, out=out)


def _resize_bytes(itemsize: int, alpha: bool) -> int:
    """Bytes a resized pixel costs: the result, plus float32 channels for 16-bit or alpha."""
    return 3 * itemsize + (16 if itemsize > 1 or alpha else 0)


def resize_output(rgb: np.ndarray, alpha, size: tuple[int, int]):
    """Resize an upscaled (H, W, 3) uint8/uint16 array (and its alpha: a (1, 1, H, W) tensor in
    [0, 1], or None) to ``size`` = (width, height); the same arrays back when already that size."""
    w, h = size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb, alpha
    import torch
    from PIL import Image

    check_output(w, h, bytes_per_pixel=_resize_bytes(rgb.itemsize, alpha is not None),
                 what="the resized output", hint="ask for a smaller size")

    if rgb.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
        out = np.asarray(im.resize(size, Image.Resampling.LANCZOS))
    else:
        out = np.rint(_resize_channels(rgb, size, 65535.0)).astype(np.uint16)
    if alpha is not None:
        a = alpha.detach().float().cpu()[0, 0].numpy()[:, :, None]
        alpha = torch.from_numpy(_resize_channels(a, size, 1.0)[:, :, 0].copy())[None, None]
    return out, alpha
