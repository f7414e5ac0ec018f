"""Encoding and writing images: tensors or arrays → PNG, JPEG, WebP, TIFF or BMP files.

``write_image`` takes a (1, 3, H, W) / (3, H, W) float tensor in [0, 1] (clamped and rounded
here) or an already quantised (H, W, 3) uint8 / uint16 array, and writes it through the output
policy (:mod:`clipsr_cli.io.outputs`): atomically, and an existing file (or the input) is only
replaced with ``overwrite=True``. 16-bit PNG and TIFF are written here (Pillow cannot).
``to_pil`` makes a PIL image instead. Wrong tensor shapes (a programming error) raise ValueError.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from clipsr_cli.errors import UsageError
from clipsr_cli.io.decode import LoadedImage
from clipsr_cli.io.formats import format_for
from clipsr_cli.io.outputs import check_destination, check_stdout, write_atomic, write_stdout
from clipsr_cli.io.quantise import levels, quantise

__all__ = ["PixelSource", "to_pil", "write_image"]

PixelSource = torch.Tensor | np.ndarray

_NO_ALPHA = frozenset({"JPEG", "BMP"})  # alpha is composited over white for these
_BLOCK = 1 << 21  # samples per row block when converting / filtering big images


def to_pil(rgb: PixelSource, alpha: PixelSource | None = None, *, bit_depth: int = 8,
           grayscale: bool = False, icc_profile: bytes | None = None) -> Image.Image:
    """Make a PIL image from a (1, 3, H, W) float tensor in [0, 1] or an (H, W, 3) uint array.

    Best effort for 16-bit: Pillow has no 16-bit colour or grayscale+alpha mode, so only a
    grayscale image without alpha comes out 16-bit (mode ``I;16``); everything else is 8-bit
    (``L``, ``LA``, ``RGB``, ``RGBA``). The ICC profile is set in ``img.info`` if it fits.
    """
    colour, a = _pixels(rgb, alpha)
    depth = 16 if bit_depth == 16 and grayscale and a is None else 8
    arr = _quantise(colour, a, depth=depth, grayscale=grayscale, composite=False)
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    icc = _icc_for(icc_profile, arr.shape[2])
    if icc:
        img.info["icc_profile"] = icc
    return img


def write_image(dest: str | os.PathLike[str], rgb: PixelSource, alpha: PixelSource | None = None,
                *, like: LoadedImage | None = None, format: str | None = None, quality: int = 95,
                overwrite: bool = False, bit_depth: int | None = None) -> Path | None:
    """Write an image atomically to ``dest`` (``"-"``: standard output, in ``format`` or else
    the format of ``like``).

    ``rgb``: (1, 3, H, W) or (3, H, W) float tensor in [0, 1] (clamped, rounded to 8/16 bits)
    or an (H, W, 3) uint8/uint16 array; ``alpha``: (1, 1, H, W) tensor or (H, W) array, or None.
    ``like`` (usually the input's :class:`LoadedImage`) gives the defaults: bit depth,
    grayscale, ICC profile and EXIF. ``format`` ("png", "jpeg"/"jpg", "webp", "tiff", "bmp")
    defaults to the extension of ``dest``. ``quality`` (1-100) is for JPEG and WebP; JPEG at
    quality >= 90 keeps full colour resolution (4:4:4).

    16-bit output (``bit_depth=16``, or a 16-bit ``like``) is written for PNG and TIFF; other
    formats are 8-bit (an explicit ``bit_depth=16`` for them is a UsageError). JPEG and BMP
    cannot hold alpha: the image is composited over white. The ICC profile is embedded in PNG,
    JPEG, WebP and TIFF; EXIF (orientation 1) only in JPEG and WebP.

    Never replaces an existing file (nor the input) unless ``overwrite``; returns the path
    written, or None for standard output.
    """
    to_stdout = os.fspath(dest) == "-"
    fmt = format_for(dest, format, like.format if like is not None else None)
    if not 1 <= int(quality) <= 100:
        raise UsageError(f"`quality` must be between 1 and 100, got {quality}; try "
                         "`quality=95`", param="quality")
    if bit_depth not in (None, 8, 16):
        raise UsageError(f"`bit_depth` must be 8 or 16, got {bit_depth}", param="bit_depth")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise UsageError(f"{fmt} cannot hold 16 bits per channel; write a .png or .tif instead",
                         param="bit_depth")
    colour, a = _pixels(rgb, alpha)
    depth = bit_depth or (like.bit_depth if like is not None else None) or (
        16 if colour.dtype == np.uint16 else 8)
    if fmt not in ("PNG", "TIFF"):
        depth = 8
    gray = like.grayscale if like is not None else colour.shape[2] == 1
    icc = like.icc_profile if like is not None else None
    exif = like.exif if like is not None and fmt in ("JPEG", "WEBP") else None

    path = None if to_stdout else Path(dest)
    if path is not None:  # before the work of quantising
        check_destination(path, source=like.source if like is not None else None,
                          overwrite=overwrite)
    arr = _quantise(colour, a, depth=depth, grayscale=gray and fmt != "WEBP",
                    composite=fmt in _NO_ALPHA)

    def encode(f: BinaryIO) -> None:
        _encode(f, arr, fmt, quality=int(quality), icc=_icc_for(icc, arr.shape[2]), exif=exif)

    if path is None:
        check_stdout()  # before the work of encoding
        buf = io.BytesIO()
        encode(buf)
        write_stdout(buf.getvalue())
        return None
    return write_atomic(path, encode, overwrite=overwrite)


def _pixels(rgb: PixelSource, alpha: PixelSource | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Views as (H, W, C) and (H, W) numpy arrays (float in [0, 1], or uint8/uint16)."""
    colour = _as_numpy(rgb, "rgb")
    if colour.ndim == 2:
        colour = colour[..., None]
    if colour.ndim != 3 or colour.shape[2] not in (1, 3):
        raise ValueError(f"rgb must be (1, 3, H, W) / (3, H, W) or an (H, W, 3) array, "
                         f"got shape {tuple(colour.shape)}")
    a = None
    if alpha is not None:
        a = _as_numpy(alpha, "alpha")
        a = a.reshape(a.shape[:2]) if a.ndim == 3 and a.shape[2] == 1 else a
        if a.shape != colour.shape[:2]:
            raise ValueError(f"alpha {tuple(a.shape)} does not match the image "
                             f"{tuple(colour.shape[:2])}")
    return colour, a


def _as_numpy(x: PixelSource, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"{what} must hold one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        if not t.is_floating_point():
            raise ValueError(f"{what} tensor must be float in [0, 1], got {t.dtype}")
        return t.to("cpu", torch.float32).numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{what} array must be uint8, uint16 or float, got {arr.dtype}")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    """Block → float32 in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == np.uint16:
        return x.astype(np.float32) / 65535.0
    if np.isnan(x).any():
        raise ValueError("the image contains NaN values; the model output is broken (try fp32)")
    return np.clip(x, 0.0, 1.0)


def _quantise(colour: np.ndarray, alpha: np.ndarray | None, *, depth: int, grayscale: bool,
              composite: bool) -> np.ndarray:
    """→ (H, W, C) uint8/uint16 (rounded), C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    Works in row blocks so a huge already-quantised output is not turned into float at once.
    """
    h, w = colour.shape[:2]
    dtype = levels(depth)[0]
    keep_alpha = alpha is not None and not composite
    channels = (1 if grayscale else 3) + (1 if keep_alpha else 0)
    if alpha is None and colour.dtype == dtype and colour.shape[2] == channels:
        return np.ascontiguousarray(colour)  # already final: no copy of a huge output
    out = np.empty((h, w, channels), dtype=dtype)
    step = max(1, _BLOCK // max(1, w))
    for y in range(0, h, step):
        c = colour[y:y + step]
        a = None if alpha is None else alpha[y:y + step, :, None]
        if (c.dtype == dtype and (a is None or a.dtype == dtype) and not composite
                and c.shape[2] == (1 if grayscale else 3)):
            out[y:y + step] = c if a is None else np.concatenate([c, a], axis=2)
            continue
        c = _unit(c)
        if grayscale and c.shape[2] == 3:
            c = c @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)  # ITU-R 601 luma
        elif not grayscale and c.shape[2] == 1:
            c = np.repeat(c, 3, axis=2)
        if a is not None:
            a = _unit(a)
            c = c * a + (1.0 - a) if composite else np.concatenate([c, a], axis=2)
        out[y:y + step] = quantise(c, depth)
    return out


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile, if its colour space fits the pixels written (GRAY for L/LA, RGB otherwise)."""
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if channels in (1, 2) else b"RGB ") else None


def _encode(f: BinaryIO, arr: np.ndarray, fmt: str, *, quality: int, icc: bytes | None,
            exif: bytes | None) -> None:
    channels = arr.shape[2]
    if arr.dtype == np.uint16:
        if fmt == "PNG":
            _write_png16(f, arr, icc)
        else:
            _write_tiff16(f, arr, icc)
        return
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    kw: dict = {"icc_profile": icc} if icc else {}
    if fmt == "PNG":
        kw["compress_level"] = 6
    elif fmt == "TIFF":
        kw["compression"] = "tiff_adobe_deflate"
    elif fmt in ("JPEG", "WEBP"):
        kw["quality"] = quality
        if fmt == "JPEG" and quality >= 90:
            kw["subsampling"] = 0  # 4:4:4: chroma subsampling would blur the upscaled detail
        if exif and (fmt == "WEBP" or len(exif) <= 65000):  # a JPEG APP1 segment holds < 64 KiB
            kw["exif"] = exif
    img.save(f, fmt, **kw)


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data)
    f.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _write_png16(f: BinaryIO, arr: np.ndarray, icc: bytes | None) -> None:
    """16-bit PNG (gray, gray+alpha, RGB, RGBA), Paeth-filtered.

    Written here because Pillow cannot write 16-bit colour and pypng writes only unfiltered
    rows (about twice the size) without an ICC chunk; the format is a few lines of numpy + zlib.
    """
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = arr.astype(">u2").reshape(h, w * c).view(np.uint8)  # big-endian sample bytes
    bpp, stride = 2 * c, 2 * w * c
    f.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    comp = zlib.compressobj(6)
    prior = np.zeros(stride, dtype=np.int16)
    step = max(1, 2 * _BLOCK // stride)
    for y in range(0, h, step):
        x = raw[y:y + step].astype(np.int16)
        up = np.concatenate([prior[None], x[:-1]])
        left = np.zeros_like(x)
        left[:, bpp:] = x[:, :-bpp]
        upleft = np.zeros_like(x)
        upleft[:, bpp:] = up[:, :-bpp]
        pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows = np.empty((x.shape[0], stride + 1), dtype=np.uint8)
        rows[:, 0] = 4  # filter type: Paeth
        rows[:, 1:] = (x - pred).astype(np.uint8)  # wraps modulo 256, as the format wants
        data = comp.compress(rows.tobytes())
        if data:
            _png_chunk(f, b"IDAT", data)
        prior = x[-1]
    _png_chunk(f, b"IDAT", comp.flush())
    _png_chunk(f, b"IEND", b"")


def _write_tiff16(f: BinaryIO, arr: np.ndarray, icc: bytes | None) -> None:
    import tifffile  # Pillow cannot write 16-bit colour TIFF

    c = arr.shape[2]
    buf = io.BytesIO()  # tifffile wants a named file or a BytesIO, not an os.fdopen() handle
    tifffile.imwrite(buf, arr[..., 0] if c == 1 else arr,
                     photometric="rgb" if c >= 3 else "minisblack",
                     extrasamples=("unassalpha",) if c in (2, 4) else None,
                     compression="zlib", predictor=True, iccprofile=icc)
    f.write(buf.getvalue())

