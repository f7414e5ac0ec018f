"""The smooth-region check (invented texture) and the built-in models against it."""

from __future__ import annotations

import math

import pytest
import torch

from clipsr_cli.data.degrade import degrade, imresize
from clipsr_cli.data.smooth import smooth_mask, smooth_region_check


def sky(kind: str = "clear", size: int = 768) -> torch.Tensor:
    """A clear (gradient) or flat blue sky with one small red kite: (1, 3, size, size)."""
    h = w = size
    yy = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xx = torch.linspace(0, 1, w)[None, :].expand(h, w)
    if kind == "clear":
        img = torch.stack([0.25 + 0.3 * yy, 0.5 + 0.25 * yy, 0.9 + 0.05 * yy - 0.03 * xx])
    else:
        img = torch.stack([0.3 + 0 * yy, 0.55 + 0 * yy, 0.92 + 0 * yy])
    img = img.clamp(0, 1)[None].clone()
    cy, cx = h * 0.4, w * 0.55
    kite = (abs(torch.arange(h)[:, None] - cy) / (size / 15) + abs(torch.arange(w)[None, :] - cx)
            / (size / 22)) < 1
    img[0][:, kite] = torch.tensor([0.85, 0.15, 0.1])[:, None]
    return img


def _dimples(shape, period: int, amplitude: float) -> torch.Tensor:
    h, w = shape[-2:]
    y = torch.arange(h)[:, None].float()
    x = torch.arange(w)[None, :].float()
    return amplitude * torch.sin(2 * math.pi * y / period) * torch.sin(2 * math.pi * x / period)


def test_mask_marks_smooth_blocks_only():
    hr = sky("clear", 256)
    noisy = hr.clone()
    noisy[..., 128:, :] += torch.rand_like(noisy[..., 128:, :]) * 0.2  # textured lower half
    m = smooth_mask(noisy)
    assert m[..., :112, :].float().mean() > 0.9
    assert m[..., 128:, :].float().mean() == 0


def test_invented_texture_is_flagged_and_the_truth_is_not():
    hr = sky("clear", 384)
    lr = degrade(hr, 8)
    bic = imresize(lr, 8).clamp(0, 1)
    dimpled = (bic + _dimples(bic.shape, 8, 3 / 255)).clamp(0, 1)
    bad = smooth_region_check(dimpled, hr, bic, border=8)
    assert bad.flagged and bad.delta_db < -3 and bad.excess > 1
    good = smooth_region_check(hr, hr, bic, border=8)
    assert not good.flagged and good.delta_db > 0
    # a difference far below one 8-bit level is not texture, however many dB it is
    faint = (bic + _dimples(bic.shape, 8, 0.2 / 255)).clamp(0, 1)
    assert not smooth_region_check(faint, hr, bic, border=8).flagged


def test_nothing_smooth_nothing_flagged():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 128, 128, generator=g)
    lr = degrade(hr, 4)
    bic = imresize(lr, 4).clamp(0, 1)
    c = smooth_region_check(torch.zeros_like(hr), hr, bic, border=4)
    assert c.fraction < 0.02 and not c.flagged


def test_shapes_must_agree():
    with pytest.raises(ValueError):
        smooth_region_check(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9), torch.zeros(1, 3, 8, 8))
