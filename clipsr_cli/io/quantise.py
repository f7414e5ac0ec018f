"""The one float → integer image conversion in clipsr.

Every output pixel clipsr writes, shows or measures as 8/16-bit goes through :func:`quantise`:
clamp to [0, 1], scale by 2**bits − 1, round half to even (``np.rint`` / ``torch.round``), cast.
(The training degradation and the PSNR/SSIM metrics keep MATLAB's ``im2uint8`` rounding, half
up, on purpose: they reproduce published LR images and numbers; see ``data/degrade.py``.)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["quantise", "levels"]


def levels(bits: int) -> tuple[type, float]:
    """(numpy dtype, largest level) of ``bits``-bit samples: 8 → uint8/255, 16 → uint16/65535."""
    if bits == 8:
        return np.uint8, 255.0
    if bits == 16:
        return np.uint16, 65535.0
    raise ValueError(f"bits must be 8 or 16, not {bits!r}")


def quantise(x: torch.Tensor | np.ndarray, bits: int = 8) -> np.ndarray:
    """Floats in [0, 1] (a tensor on any device, or an array) → a uint8 (``bits=8``) or uint16
    (``bits=16``) array of the same shape: clamped, scaled, rounded half to even.

    >>> quantise(np.array([0.0, 0.5, 1.0, 1.5]))
    array([  0, 128, 255, 255], dtype=uint8)
    """
    dtype, maxv = levels(bits)
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return t.clamp(0, 1).mul_(maxv).round_().cpu().numpy().astype(dtype)
    return np.rint(np.clip(x, 0.0, 1.0) * maxv).astype(dtype)
