"""How an LR image is made from an HR one: MATLAB-style bicubic ``imresize`` and ``degrade``.

``degrade`` is the one degradation used by training, ``clipsr eval`` and ``clipsr edit``: the
antialiased bicubic downscale of the SR literature (MATLAB ``imresize``; BasicSR's
``matlab_functions.imresize`` behaves the same), clamped to [0, 1] and quantised to 8 bits as an
LR image saved to disk would be. Optional blur, noise and JPEG (``DegradeOptions``) are off by
default.

Everything here is plain torch (no numpy), so it runs on the tensors' device, CUDA included; only
the optional JPEG step goes through the CPU (PIL).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from clipsr_cli.errors import DataError

__all__ = ["imresize", "imresize_bands", "resize_matrix", "DegradeOptions", "degrade", "crop_to_multiple",
           "quantize_8bit", "PracticalMix", "degrade_practical"]


# -- MATLAB imresize ---------------------------------------------------------------------------------
def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=128)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB's ``contributions``: for each output pixel, the input indices (0-based, out-of-range
    ones mirrored: ``symmetric`` padding) and their normalised weights, both (out_len, P), float64
    on the CPU. When downscaling the kernel is widened by 1/scale (antialiasing)."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    p = math.ceil(width) + 2
    ind = left[:, None] + torch.arange(p, dtype=torch.float64)[None, :]
    dist = u[:, None] - ind
    w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric padding: index sequence 1..n, n..1 repeated (MATLAB's aux array)
    k = torch.remainder(ind.long() - 1, 2 * in_len)
    ind = torch.where(k < in_len, k, 2 * in_len - 1 - k)
    keep = (w != 0).any(dim=0)  # drop all-zero columns, as MATLAB does
    return ind[:, keep].contiguous(), w[:, keep].contiguous()


@functools.lru_cache(maxsize=128)
def resize_matrix(in_len: int, out_len: int, scale: float) -> torch.Tensor:
    """MATLAB ``imresize`` along one axis as a dense (out_len, in_len) float64 CPU matrix:
    ``m @ x`` resamples ``in_len`` samples to ``out_len`` (``scale`` = out_len / in_len, or the
    scale ``imresize`` was given). Cached; do not modify the returned tensor."""
    ind, w = _contributions(in_len, out_len, scale)
    return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, ind, w)


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float) -> torch.Tensor:
    """Resample ``x`` along ``dim`` (-1 or -2) to ``out_len`` samples."""
    in_len = x.shape[dim]
    ind, w = _contributions(in_len, out_len, scale)
    taps = ind.shape[1]
    if x.device.type == "cpu":
        # measured crossover of a BLAS matmul (cost ~ in * out) and the tap loop (~ out * P)
        dense = in_len <= (256 if scale > 1 else 64) * taps
    else:
        # matmuls are cheap on accelerators (bound the matrix's memory), but not with TF32 on:
        # its 10-bit mantissa would move LR pixels by ~0.1 of an 8-bit level
        tf32 = (x.device.type == "cuda" and x.dtype == torch.float32
                and torch.backends.cuda.matmul.allow_tf32)
        dense = not tf32 and in_len * out_len <= 1 << 24
    if dense:
        m = resize_matrix(in_len, out_len, scale).to(device=x.device, dtype=x.dtype)
        return x @ m.T if dim == -1 else m @ x
    ind = ind.to(x.device)
    w = w.to(device=x.device, dtype=x.dtype)
    out = None
    for p in range(taps):  # one tap at a time: no (..., out, P) temporary
        wp = w[:, p] if dim == -1 else w[:, p, None]
        t = x.index_select(dim, ind[:, p]).mul_(wp)
        out = t if out is None else out.add_(t)
    return out


def imresize(x: torch.Tensor, scale: float | None = None, *,
             size: tuple[int, int] | None = None) -> torch.Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')``: cubic kernel a = -0.5, antialiased when
    downscaling (kernel widened by 1/scale), symmetric borders.

    ``x``: (B, C, H, W) or (C, H, W) float tensor, any device. Give either ``scale`` (output size
    ceil(H·scale) x ceil(W·scale)) or ``size=(h, w)`` (per-axis scale h/H, w/W), not both.
    Returns the same dtype, **not clamped** (bicubic overshoots). fp16/bf16 are computed in fp32.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale or size")
    if not torch.is_floating_point(x):
        raise TypeError(f"imresize expects a float tensor, got {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize expects (B,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    in_h, in_w = x.shape[-2:]
    if size is not None:
        out_h, out_w = int(size[0]), int(size[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"imresize: output size must be positive, got {size}")
        scales = (out_h / in_h, out_w / in_w)
    else:
        if not scale > 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        # ceil(n·scale), tolerant of 1/3-style rounding (384 · 0.333… must give 128, not 129)
        out_h = max(1, math.ceil(in_h * scale - 1e-9))
        out_w = max(1, math.ceil(in_w * scale - 1e-9))
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    # MATLAB resizes the dimension with the smaller scale first (also the cheaper order)
    order = [(-2, out_h, scales[0]), (-1, out_w, scales[1])]
    if scales[1] < scales[0]:
        order.reverse()
    for dim, n, s in order:
        if not (x.shape[dim] == n and s == 1.0):
            x = _resize_dim(x, dim, n, s)
    return x.to(dtype)


def imresize_bands(x: torch.Tensor, factor: int, *, rows: int = 64):
    """``imresize(x, factor)`` for a whole-number upscale ``factor``, yielded as output row bands
    ``(y0, band)``: the same numbers (each band is computed from its input rows plus a 3-row
    margin, more than the 4-tap cubic kernel reaches), without ever holding the whole output or its
    temporaries. ``x``: (B, C, H, W) float."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"imresize_bands: factor must be a whole number >= 1, got {factor!r}")
    h = x.shape[-2]
    margin = 3
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        a, b = max(0, r0 - margin), min(h, r1 + margin)
        band = imresize(x[..., a:b, :], factor)
        yield r0 * factor, band[..., (r0 - a) * factor:(r1 - a) * factor, :]


# -- degradation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DegradeOptions:
    """Optional extra degradations, all off by default. Each range is sampled uniformly per image."""

    blur_sigma: tuple[float, float] | None = None
    """Gaussian blur σ range, in HR pixels, applied to the HR image before downscaling."""
    noise_sigma: tuple[float, float] | None = None
    """Gaussian noise std range, in 0-255 units, added to the LR image."""
    jpeg_quality: tuple[int, int] | None = None
    """JPEG re-encode (PIL, on the CPU) of the LR image, quality range (1-100)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            try:
                lo, hi = value
            except (TypeError, ValueError):
                raise DataError(f"degradation option {f.name} must be a [low, high] pair, "
                                f"got {value!r}") from None
            if f.name == "jpeg_quality":
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) \
                        or not 1 <= lo <= hi <= 100:
                    raise DataError(f"degradation option jpeg_quality must be integers "
                                    f"1 <= low <= high <= 100, got {value!r}")
                object.__setattr__(self, f.name, (lo, hi))
            else:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) \
                        or not 0 <= lo <= hi or not math.isfinite(hi):
                    raise DataError(f"degradation option {f.name} must be numbers "
                                    f"0 <= low <= high, got {value!r}")
                object.__setattr__(self, f.name, (float(lo), float(hi)))

    @classmethod
    def extra(cls) -> DegradeOptions:
        """A mild blur + noise + JPEG preset (training's ``data.degradation = "extra"``)."""
        return cls(blur_sigma=(0.0, 1.5), noise_sigma=(0.0, 5.0), jpeg_quality=(70, 95))

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values to the 256 levels of an 8-bit image (half away from zero, like MATLAB's
    ``im2uint8``); returns floats k/255."""
    return torch.floor(x * 255 + 0.5) * (1 / 255)  # a multiply: bit-identical on CPU and CUDA


def crop_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop the bottom/right of (..., H, W) so that H and W are multiples of ``multiple``."""
    if multiple < 1:
        raise DataError(f"crop multiple must be a positive integer, got {multiple}")
    h, w = x.shape[-2:]
    ch, cw = h - h % multiple, w - w % multiple
    if ch == 0 or cw == 0:
        raise DataError(f"image of {w}x{h} px is smaller than {multiple} px; use a larger image "
                        "or a smaller scale")
    return x[..., :ch, :cw]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    """n values uniform in [lo, hi] (float64, CPU), drawn from ``generator`` on its own device."""
    device = generator.device if generator is not None else "cpu"
    r = torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()
    return lo + (hi - lo) * r


def _gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own σ (separable; reflect borders)."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigmas.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t[None, :] / sigmas.clamp_min(1e-6)[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).to(device=x.device, dtype=x.dtype)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per channel of each image
    mode = "reflect" if radius < min(h, w) else "replicate"
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode=mode)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def _jpeg(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """JPEG re-encode each (C, H, W) image of a [0, 1] batch with PIL; returns 8-bit levels."""
    from PIL import Image

    levels = torch.floor(x.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
    out = []
    for img, q in zip(levels, qualities, strict=True):
        c, h, w = img.shape
        mode = {1: "L", 3: "RGB"}.get(c)
        if mode is None:
            raise DataError(f"JPEG degradation needs 1 or 3 channels, got {c}")
        pil = Image.frombytes(mode, (w, h), img.permute(1, 2, 0).contiguous().numpy().tobytes())
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as dec:
            data = bytearray(dec.convert(mode).tobytes())
        out.append(torch.frombuffer(data, dtype=torch.uint8).reshape(h, w, c).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype) * (1 / 255)


def degrade(hr: torch.Tensor, scale: int, *, quantize: bool = True,
            options: DegradeOptions | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1] -> LR (B, 3, H/s, W/s) in [0, 1], on the same device and dtype.

    Steps: [blur HR] -> ``imresize`` by 1/scale -> [+ noise] -> clamp to [0, 1] -> [JPEG] ->
    quantise to 8 bits (``quantize=True``; a JPEG'd image is 8-bit anyway). Bracketed steps only
    with ``options``; their random parameters (one per image) come from ``generator`` (CPU or on
    the device). H and W must be multiples of ``scale`` (see ``crop_to_multiple``).
    A (3, H, W) image is accepted too and gives (3, H/s, W/s).
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale!r}")
    single = hr.dim() == 3
    if single:
        hr = hr[None]
    if hr.dim() != 4 or not torch.is_floating_point(hr):
        raise DataError(f"degrade expects a float (B, C, H, W) image batch, got "
                        f"{hr.dtype} {tuple(hr.shape)}")
    b, _, h, w = hr.shape
    if h % scale or w % scale:
        raise DataError(f"image size {w}x{h} is not divisible by the scale {scale}; crop it first "
                        "(crop_to_multiple)")
    opts = options or DegradeOptions()
    x = hr
    if opts.blur_sigma is not None:
        x = _gaussian_blur(x, _uniform(b, *opts.blur_sigma, generator))
    lr = imresize(x, size=(h // scale, w // scale)) if scale > 1 else x.clone()
    if opts.noise_sigma is not None:
        sigma = (_uniform(b, *opts.noise_sigma, generator) / 255).to(lr.device, lr.dtype)
        device = generator.device if generator is not None else lr.device
        noise = torch.randn(lr.shape, generator=generator, device=device, dtype=lr.dtype)
        lr = lr + noise.to(lr.device) * sigma[:, None, None, None]
    lr = lr.clamp(0, 1)
    if opts.jpeg_quality is not None:
        lo, hi = opts.jpeg_quality
        device = generator.device if generator is not None else "cpu"
        q = torch.randint(lo, hi + 1, (b,), generator=generator, device=device).tolist()
        lr = _jpeg(lr, q)
    if quantize:
        lr = quantize_8bit(lr)
    return lr[0] if single else lr


# -- practical (real-photo) degradation --------------------------------------------------------------
@dataclass(frozen=True)
class PracticalMix:
    """The random mixture of real-photo degradations that trains the degradation-aware built-in
    (``data.degradation = "practical"``). Per image: clean with ``p_clean``; else an optional HR
    blur, the bicubic downscale, then Gaussian noise and a JPEG re-encode, each optional, in a
    random order (noise first with ``p_noise_first``: camera noise, then the camera's JPEG)."""

    p_clean: float = 0.1
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    p_noise: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 15.0)
    """Std in 0-255 units; a third of the noisy images get the same noise in every channel."""
    p_gray_noise: float = 0.3
    p_jpeg: float = 0.7
    jpeg_quality: tuple[int, int] = (30, 95)
    p_noise_first: float = 0.8


def degrade_practical(hr: torch.Tensor, scale: int, *, mix: PracticalMix = PracticalMix(),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1] -> 8-bit LR (B, 3, H/s, W/s) by the ``PracticalMix`` (one random
    draw of every choice per image, from ``generator``). JPEG goes through PIL as a saved file."""
    if hr.dim() != 4 or not torch.is_floating_point(hr):
        raise DataError(f"degrade_practical expects a float (B, C, H, W) batch, got "
                        f"{hr.dtype} {tuple(hr.shape)}")
    b, c, h, w = hr.shape
    if h % scale or w % scale:
        raise DataError(f"image size {w}x{h} is not divisible by the scale {scale}")
    draws = _uniform(b * 7, 0.0, 1.0, generator).reshape(7, b)
    clean = draws[0] < mix.p_clean
    blur = (draws[1] < mix.p_blur) & ~clean
    noisy = (draws[2] < mix.p_noise) & ~clean
    gray = draws[3] < mix.p_gray_noise
    jpeg = (draws[4] < mix.p_jpeg) & ~clean
    noise_first = draws[5] < mix.p_noise_first
    x = hr
    if bool(blur.any()):
        sig = _uniform(b, *mix.blur_sigma, generator) * blur
        x = _gaussian_blur(x, sig)  # sigma 0 (clamped to 1e-6): the identity
    lr = imresize(x, size=(h // scale, w // scale)) if scale > 1 else x.clone()
    sig = (_uniform(b, *mix.noise_sigma, generator) * noisy / 255).to(lr.device, lr.dtype)
    device = generator.device if generator is not None else lr.device
    noise = torch.randn(lr.shape, generator=generator, device=device, dtype=lr.dtype).to(lr.device)
    noise = torch.where(gray.to(lr.device)[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    noise = noise * sig[:, None, None, None]
    q = torch.randint(mix.jpeg_quality[0], mix.jpeg_quality[1] + 1, (b,), generator=generator,
                      device=device).tolist()
    first = noise_first.to(lr.device)[:, None, None, None]
    lr = quantize_8bit((lr + torch.where(first, noise, torch.zeros_like(noise))).clamp(0, 1))
    idx = [i for i in range(b) if bool(jpeg[i])]
    if idx:
        lr = lr.clone()
        lr[idx] = _jpeg(lr[idx], [q[i] for i in idx])
    lr = lr + torch.where(first, torch.zeros_like(noise), noise)
    return quantize_8bit(lr.clamp(0, 1))
