"""PSNR / SSIM by the standard SR protocol, checked against exact values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsr_cli.data.degrade import degrade, imresize
from clipsr_cli.errors import DataError
from clipsr_cli.data.metrics import psnr, rgb_to_y, ssim

skm = pytest.importorskip("skimage.metrics")


def _y_reference(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> Y on the 0-255 scale, written out independently (numpy)."""
    a = np.floor(x.double().numpy() * 255 + 0.5) / 255
    return 16 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2]


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)


def test_rgb_to_y_known_values():
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 0.0],
                      [0.0, 1.0, 0.0, 0.0, 1.0]], dtype=torch.float64).view(3, 1, 5)
    y = rgb_to_y(x).flatten()
    want = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    assert torch.allclose(y, want, atol=1e-12)
    assert rgb_to_y(torch.rand(2, 3, 4, 4)).shape == (2, 1, 4, 4)


def test_psnr_of_a_known_mse_is_exact():
    hr = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    sr = hr.clone()
    sr[0] += 10 / 255  # every RGB value off by 10 levels
    sr[1, :, :8] += 20 / 255  # half the pixels off by 20 levels: MSE 200
    rgb = psnr(sr, hr, y_channel=False)
    assert rgb.shape == (2,)
    assert rgb[0].item() == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-10)
    assert rgb[1].item() == pytest.approx(10 * math.log10(255 ** 2 / 200), abs=1e-10)
    # on Y: an offset of 10 levels in R, G and B moves Y by 10 * (65.481 + 128.553 + 24.966) / 255
    dy = 10 * 219.0 / 255
    assert psnr(sr[:1], hr[:1]).item() == pytest.approx(20 * math.log10(255 / dy), abs=1e-10)
    # data_range: the same images on the 0-255 scale
    assert torch.allclose(psnr(sr * 255, hr * 255, y_channel=False, data_range=255), rgb)


def test_psnr_matches_skimage_on_rgb():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 40, 36, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    q = lambda t: np.floor(t.double().numpy() * 255 + 0.5)  # noqa: E731
    ref = skm.peak_signal_noise_ratio(q(hr), q(sr), data_range=255)
    assert psnr(sr[None], hr[None], y_channel=False).item() == pytest.approx(ref, abs=1e-9)
    ref_y = skm.peak_signal_noise_ratio(_y_reference(hr)[4:-4, 4:-4], _y_reference(sr)[4:-4, 4:-4],
                                        data_range=255)
    assert psnr(sr, hr, border=4).item() == pytest.approx(ref_y, abs=1e-9)


def test_identical_images_and_quantisation_and_border():
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.isinf(psnr(hr, hr)).all()
    assert torch.equal(ssim(hr, hr), torch.ones(2, dtype=torch.float64))
    # differences below half an 8-bit level vanish in the quantisation
    levels = torch.floor(hr * 255 + 0.5) / 255
    assert torch.isinf(psnr(levels + 0.4 / 255, levels)).all()
    # differences confined to the border are cropped away
    sr = levels.clone()
    sr[..., :4, :] = 1 - sr[..., :4, :]
    assert torch.isfinite(psnr(sr, levels, border=3)).all()
    assert torch.isinf(psnr(sr, levels, border=4)).all()
    assert ssim(sr, levels, border=4).eq(1).all()


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_matches_skimage_on_random_images(noise):
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, 48, 40, generator=g)
    sr = (hr + noise * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    got = ssim(sr, hr, border=2)
    assert got.shape == (2,)
    for i in range(2):
        ref = _sk_ssim(_y_reference(sr[i])[2:-2, 2:-2], _y_reference(hr[i])[2:-2, 2:-2])
        assert got[i].item() == pytest.approx(ref, abs=1e-8)
    # RGB: mean of the per-channel SSIMs (skimage's channel_axis does the same)
    q = lambda t: np.floor(t.double().numpy() * 255 + 0.5)  # noqa: E731
    ref = skm.structural_similarity(q(sr[0]), q(hr[0]), channel_axis=0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(sr[:1], hr[:1], y_channel=False).item() == pytest.approx(ref, abs=1e-8)


def test_ssim_and_psnr_on_a_natural_image_super_resolved_by_bicubic():
    from skimage import data

    hr = torch.from_numpy(data.astronaut()[96:288, 160:352].copy()).permute(2, 0, 1).float() / 255
    hr = hr[None]
    sr = imresize(degrade(hr, 4), 4).clamp(0, 1)  # the bicubic baseline
    got_ssim = ssim(sr, hr, border=4).item()
    ref = _sk_ssim(_y_reference(sr[0])[4:-4, 4:-4], _y_reference(hr[0])[4:-4, 4:-4])
    assert got_ssim == pytest.approx(ref, abs=1e-8)
    assert 0.4 < got_ssim < 0.95
    got_psnr = psnr(sr, hr, border=4).item()
    ref = skm.peak_signal_noise_ratio(_y_reference(hr[0])[4:-4, 4:-4],
                                      _y_reference(sr[0])[4:-4, 4:-4], data_range=255)
    assert got_psnr == pytest.approx(ref, abs=1e-9)
    assert 18 < got_psnr < 40


def test_metrics_do_not_depend_on_the_batch_or_dtype():
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(3, 3, 32, 32, generator=g)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    batch = ssim(sr, hr)
    single = torch.stack([ssim(sr[i:i + 1], hr[i:i + 1])[0] for i in range(3)])
    assert torch.equal(batch, single)
    assert torch.allclose(ssim(sr.double(), hr.double()), batch, atol=1e-12)
    assert torch.allclose(psnr(sr.half().float(), hr), psnr(sr.half(), hr))


def test_metric_input_errors():
    a = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, torch.rand(1, 3, 20, 21))
    with pytest.raises(DataError, match="too small"):
        psnr(a, a, border=10)
    with pytest.raises(DataError, match="11x11"):
        ssim(a, a, border=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(4)
    hr = torch.rand(2, 3, 64, 64, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(psnr(sr.cuda(), hr.cuda(), border=4).cpu(), psnr(sr, hr, border=4), atol=1e-9)
    assert torch.allclose(ssim(sr.cuda(), hr.cuda(), border=4).cpu(), ssim(sr, hr, border=4), atol=1e-9)
