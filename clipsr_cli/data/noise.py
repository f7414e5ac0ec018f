"""How noisy an image is: a standard deviation estimated on its flat regions.

Immerkær's estimator (*Fast Noise Variance Estimation*, CVIU 1996): the response of the 3x3
operator [[1,-2,1],[-2,4,-2],[1,-2,1]] (the difference of two Laplacians, blind to planes and
to most smooth shading) has a mean absolute value of 6·σ·sqrt(2/π) on white Gaussian noise. Edges
and texture respond too, so, as Tai and Yang (2008) do, only flat pixels count: those whose Sobel
gradient is among the lowest ``flat_fraction`` of the image. The result is in 8-bit levels
(0-255 units) per channel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["estimate_noise", "MIN_NOISE_PIXELS"]

#: fewer flat pixels than this (16 blocks) and the estimate is not trusted: on small images
#: (under about 100 x 100 px) dense texture reads as noise
MIN_NOISE_PIXELS = 1024

_BLOCK = 8  # side of the blocks whose flatness is judged
_OP = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _channels(rgb: torch.Tensor) -> torch.Tensor:
    """(C, 1, H, W) in 0-255 of a (1, C, H, W) or (C, H, W) [0, 1] image: each channel on its
    own (colour noise is independent per channel; measuring a weighted sum like luminance would
    report 0.67 of it)."""
    x = rgb if rgb.dim() == 4 else rgb[None]
    return x[0, :, None].double() * 255.0


def estimate_noise(rgb: torch.Tensor, *, flat_fraction: float = 0.1,
                   max_side: int = 1024) -> float | None:
    """σ of the (additive, white) noise of an image in [0, 1], in 8-bit levels per channel (the
    channels' flat blocks measured together); None when the
    image has too few pixels to tell (under ``MIN_NOISE_PIXELS`` flat ones) or none vary at all.

    Large images are measured on a centred ``max_side`` crop (noise is a property of the whole
    image; the crop keeps the cost bounded)."""
    y = _channels(rgb)
    h, w = y.shape[-2:]
    if h > max_side or w > max_side:
        t, l = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        y = y[..., t:t + max_side, l:l + max_side]
    if min(y.shape[-2:]) < 3:
        return None
    resp = F.conv2d(y, _OP.to(y)[None, None]).abs()
    gx = F.conv2d(y, _SOBEL_X.to(y)[None, None])
    gy = F.conv2d(y, _SOBEL_X.t().to(y)[None, None])
    grad = (gx.square() + gy.square()).sqrt()
    # flatness is judged per block, not per pixel: picking single pixels by their own gradient
    # would pick the ones where the noise happens to be small (a biased, low estimate)
    b = _BLOCK if min(grad.shape[-2:]) >= 4 * _BLOCK else 1
    hb, wb = grad.shape[-2] // b, grad.shape[-1] // b
    if hb * wb * b * b < MIN_NOISE_PIXELS:
        return None
    g_blocks = F.avg_pool2d(grad[..., :hb * b, :wb * b], b).flatten()
    r_blocks = F.avg_pool2d(resp[..., :hb * b, :wb * b], b).flatten()
    n = max(1, int(g_blocks.numel() * flat_fraction))
    if n * b * b < MIN_NOISE_PIXELS:
        return None
    flat = torch.topk(g_blocks, n, largest=False).indices
    return float(r_blocks[flat].mean()) * math.sqrt(math.pi / 2) / 6
