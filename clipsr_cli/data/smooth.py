"""The smooth-region check: does a model invent texture where the scene has none?

An SR model that draws a regular pattern over a clear sky, a gradient or an out-of-focus
background can still score well on PSNR over the whole image. This check looks only at the
*smooth* parts of the ground truth: blocks whose luma varies by less than ``threshold`` (standard
deviation, 0-255 scale) — and compares the SR output there with plain bicubic. Bicubic is close to
ideal on smooth content, so a model that is worse than bicubic there by more than ``tolerance_db``
is adding something that is not in the scene: it is *flagged*.

Everything is on Y of ITU-R BT.601 (as :func:`clipsr_cli.data.metrics.psnr`), 8-bit quantised,
``border`` pixels cropped. Pure torch; deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipsr_cli.data.metrics import rgb_to_y

__all__ = ["SmoothCheck", "smooth_mask", "smooth_region_check"]

#: Defaults: 16-px blocks of the HR image whose Y standard deviation is under 1.5 levels of 255
#: are smooth. The output is flagged when, on them, it is over 0.25 dB worse than bicubic *and*
#: its RMS error exceeds bicubic's by over 0.25 of a level (differences far below one 8-bit level
#: are invisible, and at 55 dB a few tenths of a level are several dB), and only when they cover at
#: least 2 % of the image (otherwise there is nothing to judge).
BLOCK = 16
THRESHOLD = 1.5
TOLERANCE_DB = 0.25
MIN_EXCESS = 0.25
MIN_FRACTION = 0.02


@dataclass(frozen=True)
class SmoothCheck:
    """The result for one image."""

    fraction: float
    """Share of the (border-cropped) image that is smooth."""
    sr_psnr: float | None
    """Y-PSNR of the SR output on the smooth pixels (None: no smooth pixels)."""
    bicubic_psnr: float | None
    """Y-PSNR of bicubic on the same pixels."""
    flagged: bool
    """True when the output is worse than bicubic on smooth regions by more than the tolerance."""
    excess: float | None = None
    """RMS error of the output minus that of bicubic on the smooth pixels, in levels of 255."""

    @property
    def delta_db(self) -> float | None:
        if self.sr_psnr is None or self.bicubic_psnr is None:
            return None
        return self.sr_psnr - self.bicubic_psnr


def _y(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x[None]
    q = (x.float().clamp(0, 1) * 255).round() / 255
    return rgb_to_y(q)


def smooth_mask(hr: torch.Tensor, *, block: int = BLOCK, threshold: float = THRESHOLD) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels inside ``block``×``block`` blocks of ``hr`` whose luma standard
    deviation (0-255 scale) is below ``threshold``. Partial blocks at the right/bottom edge are
    never smooth."""
    y = _y(hr)
    b, _, h, w = y.shape
    hb, wb = h // block, w // block
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool, device=y.device)
    if hb == 0 or wb == 0:
        return mask
    tiles = y[:, :, : hb * block, : wb * block]
    mean = F.avg_pool2d(tiles, block)
    var = (F.avg_pool2d(tiles * tiles, block) - mean * mean).clamp_min(0)
    smooth = var.sqrt() < threshold
    mask[:, :, : hb * block, : wb * block] = smooth.repeat_interleave(block, 2).repeat_interleave(block, 3)
    return mask


def _psnr_on(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> float | None:
    n = int(m.sum())
    if n == 0:
        return None
    mse = float(((a - b) ** 2)[m].mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def smooth_region_check(sr: torch.Tensor, hr: torch.Tensor, bicubic: torch.Tensor, *,
                        border: int = 0, block: int = BLOCK, threshold: float = THRESHOLD,
                        tolerance_db: float = TOLERANCE_DB, min_excess: float = MIN_EXCESS,
                        min_fraction: float = MIN_FRACTION) -> SmoothCheck:
    """Compare ``sr`` and ``bicubic`` with ``hr`` on the smooth regions of ``hr``.

    All three: (3, H, W) or (1, 3, H, W) RGB in [0, 1], the same size.
    """
    if not (sr.shape == hr.shape == bicubic.shape):
        raise ValueError(f"sr, hr and bicubic shapes differ: {tuple(sr.shape)}, "
                         f"{tuple(hr.shape)}, {tuple(bicubic.shape)}")
    if border:
        sr, hr, bicubic = (x[..., border:-border, border:-border] for x in (sr, hr, bicubic))
    m = smooth_mask(hr, block=block, threshold=threshold)
    fraction = float(m.float().mean())
    ys, yh, yb = _y(sr), _y(hr), _y(bicubic)
    p_sr, p_bic = _psnr_on(ys, yh, m), _psnr_on(yb, yh, m)
    excess = None
    if p_sr is not None and p_bic is not None:
        excess = _rmse(p_sr) - _rmse(p_bic)
    flagged = (fraction >= min_fraction and excess is not None and p_sr < p_bic - tolerance_db
               and excess > min_excess)
    return SmoothCheck(fraction, p_sr, p_bic, bool(flagged), excess)


def _rmse(p: float) -> float:
    return 0.0 if math.isinf(p) else 255.0 / 10 ** (p / 20)
