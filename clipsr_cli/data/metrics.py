"""PSNR and SSIM by the standard super-resolution protocol, deterministic, on any device.

The protocol (as in BasicSR and the MATLAB evaluation scripts of the SR literature): both images
are quantised to 8 bits, converted to the luma channel Y of ITU-R BT.601 (MATLAB ``rgb2ycbcr``,
range [16, 235]), ``border`` pixels (use ``border = scale``) are cropped at each edge, then
PSNR with peak 255 and SSIM with an 11x11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03,
population (co)variances, averaged over the "valid" positions of the window only.

Why SSIM is written here rather than taken from a library (checked against scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`` to 1e-4 in tests/test_metrics.py):

* torchmetrics' ``structural_similarity_index_measure`` (1.5 and later) averages the SSIM map
  over the *whole* image including the reflect-padded borders (Lightning-AI/torchmetrics#2718),
  so it is not the standard SR SSIM; it would also add two runtime dependencies and ~2 s of
  import time (it imports torchvision's model zoo).
* scikit-image is NumPy-only (no GPU tensors during training validation), per image, and would
  pull SciPy into the runtime dependencies.
* pytorch-msssim matches the protocol but is a single-file package unreleased since 2023.

The whole SSIM is two separable Gaussian convolutions, so no dependency is worth it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipsr_cli.errors import DataError

__all__ = ["rgb_to_y", "psnr", "ssim"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Luma of ITU-R BT.601 as MATLAB's ``rgb2ycbcr``: Y = 16 + 65.481 R + 128.553 G + 24.966 B.

    ``x``: (B, 3, H, W) or (3, H, W), RGB in [0, 1]. Returns (B, 1, H, W) or (1, H, W) on the
    0-255 scale, i.e. in [16, 235]; not rounded (as BasicSR; MATLAB rounds when given uint8
    input, a difference of ~0.01 dB in PSNR).
    """
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects 3 channels, got shape {tuple(x.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return 16.0 + (x * w).sum(dim=-3, keepdim=True)


def _prepare(sr: torch.Tensor, hr: torch.Tensor, border: int, y_channel: bool,
             data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as (B, C, H', W') on the 0-255 scale: quantised, to Y, border cropped."""
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() == 3:
        sr, hr = sr[None], hr[None]
    if sr.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(sr.shape)}")
    h, w = sr.shape[-2:]
    if border < 0 or 2 * border >= min(h, w):
        raise DataError(f"a {w}x{h} image is too small to crop a border of {border} px for "
                        "PSNR/SSIM; use larger images")
    # float64 keeps the metric independent of the batch and device; MPS has no float64
    dtype = torch.float32 if sr.device.type == "mps" else torch.float64
    out = []
    for x in (sr, hr):
        x = x.detach().to(dtype) * (255.0 / data_range)
        x = torch.floor(x.clamp(0, 255) + 0.5) / 255.0  # 8-bit levels, as saved images
        x = rgb_to_y(x) if y_channel and x.shape[1] == 3 else x * 255.0
        if border:
            x = x[..., border:-border, border:-border]
        out.append(x)
    return out[0], out[1]


def psnr(sr: torch.Tensor, hr: torch.Tensor, *, border: int = 0, y_channel: bool = True,
         data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image pair, shape (B,) (float64; float32 on MPS); ``inf`` if equal.

    ``sr``, ``hr``: (B, 3, H, W) (or (3, H, W)) with values in [0, ``data_range``]. Both are
    quantised to 8 bits; ``y_channel`` measures the Y channel, else all RGB channels; ``border``
    pixels are cropped at each edge (use the scale factor). Peak is 255 on the 8-bit scale.
    """
    a, b = _prepare(sr, hr, border, y_channel, data_range)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0 ** 2 / mse)  # mse == 0 -> inf


def _gaussian_window(dtype: torch.dtype, device: torch.device, size: int = 11,
                     sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (N, 1, H, W) by the 1-D window ``g``."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim(sr: torch.Tensor, hr: torch.Tensor, *, border: int = 0, y_channel: bool = True,
         data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair, shape (B,) (float64; float32 on MPS); 1 for identical images.

    Same inputs and preprocessing as ``psnr``; then the standard SR SSIM on the 0-255 scale
    (11x11 Gaussian window σ 1.5, K1 0.01, K2 0.03, valid positions only); with
    ``y_channel=False`` the mean of the per-channel SSIMs.
    """
    a, b = _prepare(sr, hr, border, y_channel, data_range)
    n, c, h, w = a.shape
    if min(h, w) < 11:
        raise DataError(f"SSIM needs at least 11x11 px after cropping the border, got {w}x{h}; "
                        "use larger images or a smaller border")
    g = _gaussian_window(a.dtype, a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.reshape(n * c, 1, h, w), b.reshape(n * c, 1, h, w)
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b]), g).chunk(5)
    mu_a, mu_b, aa, bb, ab = stats
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, c, -1).mean(dim=2).mean(dim=1)
