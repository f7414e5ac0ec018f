"""MATLAB imresize and the LR degradation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsr_cli.data.degrade import (DegradeOptions, _resize_dim, crop_to_multiple, degrade,
                                     imresize, quantize_8bit)
from clipsr_cli.errors import DataError


# -- an independent transcription of MATLAB's imresize (imresize.m: cubic, contributions,
#    resizeAlongDim), written with numpy loops -----------------------------------------------------
def _ml_cubic(x):
    absx = np.abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((1 < absx) & (absx <= 2)))


def _ml_contributions(in_length, out_length, scale):
    kernel_width = 4.0
    if scale < 1:
        def h(x):
            return scale * _ml_cubic(scale * x)
        kernel_width = kernel_width / scale
    else:
        h = _ml_cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    p = int(math.ceil(kernel_width)) + 2
    ind = left[:, None] + np.arange(p)[None, :]
    weights = h(u[:, None] - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    ind = aux[np.mod(ind.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], ind[:, keep]


def _ml_resize_along(a, axis, out_length, scale):
    weights, ind = _ml_contributions(a.shape[axis], out_length, scale)
    a = np.moveaxis(a, axis, 0)
    out = np.zeros((out_length,) + a.shape[1:])
    for i in range(out_length):
        for k in range(weights.shape[1]):
            out[i] += weights[i, k] * a[ind[i, k] - 1]
    return np.moveaxis(out, 0, axis)


def _ml_imresize(img, scale=None, size=None):
    """img (H, W, C) float64."""
    if size is None:
        size = (math.ceil(img.shape[0] * scale), math.ceil(img.shape[1] * scale))
        scales = (scale, scale)
    else:
        scales = (size[0] / img.shape[0], size[1] / img.shape[1])
    for dim in np.argsort(scales, kind="stable"):
        img = _ml_resize_along(img, int(dim), size[dim], scales[dim])
    return img


def _to_hwc(x):
    return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 1 / 8, 2, 0.75, 3])
def test_imresize_matches_matlab_transcription(scale):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 48, 40, generator=g, dtype=torch.float64)
    out = imresize(x, scale)
    ref = _ml_imresize(_to_hwc(x), scale=scale)
    assert out.shape == (3, ref.shape[0], ref.shape[1])
    np.testing.assert_allclose(_to_hwc(out), ref, atol=1e-12)


def test_imresize_explicit_size_and_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 30, 45, generator=g, dtype=torch.float64)
    out = imresize(x, size=(10, 90))  # 1/3 vertically, x2 horizontally
    assert out.shape == (2, 3, 10, 90)
    for i in range(2):
        np.testing.assert_allclose(_to_hwc(out[i]), _ml_imresize(_to_hwc(x[i]), size=(10, 90)),
                                   atol=1e-12)


def test_imresize_float32_and_output_size_rounding():
    x = torch.rand(1, 3, 384, 384)
    assert imresize(x, 1 / 3).shape[-2:] == (128, 128)  # not 129 from 384 * 0.333…
    assert imresize(x, 1 / 8).shape[-2:] == (48, 48)
    assert imresize(x[0], size=(100, 77)).shape == (3, 100, 77)
    assert imresize(x.half(), 0.5).dtype == torch.float16
    np.testing.assert_allclose(imresize(x, 1 / 4).double(), imresize(x.double(), 1 / 4), atol=1e-5)


def test_imresize_large_input_path_equals_dense():
    # inputs longer than the dense-matrix threshold go through the tap loop: same numbers
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 5, 1600, generator=g, dtype=torch.float64)
    for scale in (1 / 4, 2.0):
        out_len = math.ceil(1600 * scale)
        loop = _resize_dim(x, -1, out_len, scale)
        ref = _ml_resize_along(x.numpy(), 3, out_len, scale)
        np.testing.assert_allclose(loop.numpy(), ref, atol=1e-12)
        loop_h = _resize_dim(x.transpose(-1, -2), -2, out_len, scale)
        np.testing.assert_allclose(loop_h.transpose(-1, -2).numpy(), ref, atol=1e-12)


def test_imresize_constant_stays_constant():
    x = torch.full((1, 3, 37, 29), 0.3, dtype=torch.float64)
    for scale in (1 / 2, 1 / 3, 1 / 8, 2, 3.5):
        out = imresize(x, scale)
        assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-12), scale


def test_imresize_linear_ramp_interior():
    # The cubic kernel reproduces linear functions (also widened by 1/scale), so in the interior
    # the output is the ramp sampled at the output pixel centres: 0-based output pixel o lies at
    # input coordinate (o + 0.5) / scale - 0.5.
    n = 64
    ramp = torch.arange(n, dtype=torch.float64).expand(1, 8, n).clone()  # (C=1, H=8, W=n)
    down = imresize(ramp, size=(4, n // 2))[0, 0]
    o = torch.arange(n // 2, dtype=torch.float64)
    assert torch.allclose(down[3:-3], 2 * o[3:-3] + 0.5, atol=1e-12)
    up = imresize(ramp, size=(16, 2 * n))[0, 0]
    o = torch.arange(2 * n, dtype=torch.float64)
    assert torch.allclose(up[4:-4], o[4:-4] / 2 - 0.25, atol=1e-12)


def test_imresize_impulse_gives_bicubic_taps():
    # x2 up: an impulse spreads as the cubic kernel sampled at ±0.25, ±0.75, ±1.25, ±1.75:
    # (-3, -9, 29, 111, 111, 29, -9, -3) / 128; x2 down (kernel widened to 8 taps, halved):
    # (-3, 29, 111, -9) / 256 around the impulse.
    x = torch.zeros(1, 1, 16, dtype=torch.float64)
    x[..., 8] = 1
    up = imresize(x, size=(1, 32))[0, 0]
    want = torch.tensor([-3, -9, 29, 111, 111, 29, -9, -3], dtype=torch.float64) / 128
    assert torch.allclose(up[13:21], want, atol=1e-15)
    assert up[:13].abs().max() == 0 and up[21:].abs().max() == 0
    down = imresize(x, size=(1, 8))[0, 0]
    want = torch.tensor([0, 0, -3, 29, 111, -9, 0, 0], dtype=torch.float64) / 256
    assert torch.allclose(down, want, atol=1e-15)


def test_imresize_argument_errors():
    x = torch.rand(3, 8, 8)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, 0.5, size=(4, 4))
    with pytest.raises(TypeError):
        imresize(x.to(torch.uint8), 0.5)


# -- degrade --------------------------------------------------------------------------------------
def test_degrade_default_is_quantised_bicubic():
    g = torch.Generator().manual_seed(4)
    hr = torch.rand(2, 3, 48, 32, generator=g)
    lr = degrade(hr, 4)
    assert lr.shape == (2, 3, 12, 8) and lr.dtype == hr.dtype
    expect = torch.floor(imresize(hr, 1 / 4).clamp(0, 1) * 255 + 0.5)  # 8-bit levels
    assert torch.equal((lr * 255).round(), expect)
    assert torch.allclose(lr, expect / 255, rtol=0, atol=1e-7)
    levels = lr * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert 0 <= lr.min() and lr.max() <= 1
    unq = degrade(hr, 4, quantize=False)
    assert torch.allclose(unq, imresize(hr, 1 / 4).clamp(0, 1))
    assert torch.equal(degrade(hr[0], 4), lr[0])  # (C, H, W) too
    assert torch.equal(degrade(hr, 1), quantize_8bit(hr))


def test_degrade_rejects_bad_sizes_and_scales():
    with pytest.raises(DataError, match="not divisible by the scale 4"):
        degrade(torch.rand(1, 3, 30, 32), 4)
    for bad in (0, 2.0, True):
        with pytest.raises(DataError, match="positive integer"):
            degrade(torch.rand(1, 3, 32, 32), bad)


def test_degrade_options_validation():
    assert not DegradeOptions().active
    opts = DegradeOptions(blur_sigma=[0.5, 1], noise_sigma=(0, 3), jpeg_quality=[50, 90])
    assert opts.blur_sigma == (0.5, 1.0) and opts.jpeg_quality == (50, 90) and opts.active
    assert DegradeOptions.extra().active
    for kw in ({"blur_sigma": (2, 1)}, {"noise_sigma": (-1, 2)}, {"jpeg_quality": (0, 50)},
               {"jpeg_quality": (50.5, 60)}, {"blur_sigma": 3}, {"noise_sigma": ("a", "b")}):
        with pytest.raises(DataError):
            DegradeOptions(**kw)


def _smooth_hr(seed=5, size=64):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return imresize(base, size=(size, size)).clamp(0.05, 0.95).repeat(2, 1, 1, 1)


def test_degrade_blur():
    hr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    plain = degrade(hr, 2, quantize=False)
    zero = degrade(hr, 2, quantize=False, options=DegradeOptions(blur_sigma=(0, 0)))
    assert torch.allclose(zero, plain, atol=1e-6)
    blurred = degrade(hr, 2, quantize=False, options=DegradeOptions(blur_sigma=(2, 2)))
    assert blurred.std() < 0.6 * plain.std()  # white noise loses most of its variance
    assert torch.allclose(blurred.mean(), plain.mean(), atol=0.01)


def test_degrade_noise_and_reproducibility():
    hr = _smooth_hr()
    opts = DegradeOptions(noise_sigma=(5, 5))
    clean = degrade(hr, 2, quantize=False)
    noisy = degrade(hr, 2, quantize=False, options=opts, generator=torch.Generator().manual_seed(0))
    std = (noisy - clean).std().item() * 255
    assert 4.5 < std < 5.5
    again = degrade(hr, 2, quantize=False, options=opts, generator=torch.Generator().manual_seed(0))
    other = degrade(hr, 2, quantize=False, options=opts, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    # per-image sigma drawn from the range
    ranged = degrade(hr, 2, quantize=False, options=DegradeOptions(noise_sigma=(0, 20)),
                     generator=torch.Generator().manual_seed(3))
    stds = (ranged - clean).flatten(1).std(dim=1) * 255
    assert not torch.allclose(stds[0], stds[1], atol=0.5)


def test_degrade_jpeg():
    hr = _smooth_hr().mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)  # gray: no chroma subsampling loss
    clean = degrade(hr, 2)
    low = degrade(hr, 2, options=DegradeOptions(jpeg_quality=(5, 5)))
    high = degrade(hr, 2, options=DegradeOptions(jpeg_quality=(100, 100)), quantize=False)
    levels = high * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # JPEG output is 8-bit
    err_low = (low - clean).abs().mean().item()
    err_high = (high - clean).abs().mean().item()
    assert err_high < 0.005 and err_low > 0.01


def test_crop_to_multiple():
    x = torch.rand(2, 3, 37, 50)
    assert crop_to_multiple(x, 8).shape == (2, 3, 32, 48)
    assert torch.equal(crop_to_multiple(x, 8), x[..., :32, :48])
    assert crop_to_multiple(x[0], 1).shape == (3, 37, 50)
    with pytest.raises(DataError, match="smaller than 64"):
        crop_to_multiple(x, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_degrade_on_cuda_matches_cpu():
    hr = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    for s in (2, 4, 8):
        cpu = imresize(hr, 1 / s)
        gpu = imresize(hr.cuda(), 1 / s)
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
        lr_gpu, lr_cpu = degrade(hr.cuda(), s).cpu(), degrade(hr, s)
        assert (lr_gpu - lr_cpu).abs().max() <= 1 / 255 + 1e-6  # rounding ties may flip a level
        assert (lr_gpu != lr_cpu).float().mean() < 1e-3
    g = torch.Generator(device="cuda").manual_seed(0)
    lr = degrade(hr.cuda(), 4, options=DegradeOptions.extra(), generator=g)
    assert lr.is_cuda and lr.shape == (4, 3, 24, 24)
    big = torch.rand(1, 3, 40, 5000, device="cuda")  # x2: beyond the dense-matrix size bound
    assert torch.allclose(imresize(big, 2).cpu(), imresize(big.cpu(), 2), atol=1e-5)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:  # TF32 matmuls (often switched on for training) must not change the LR
        torch.backends.cuda.matmul.allow_tf32 = True
        assert torch.allclose(imresize(hr.cuda(), 1 / 4).cpu(), imresize(hr, 1 / 4), atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
