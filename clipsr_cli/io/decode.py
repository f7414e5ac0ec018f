"""Decoding images: the one place where clipsr turns image files into pixels.

* Read: PNG, JPEG (also camera MPO), WebP, TIFF, BMP, and the first frame of a GIF / multi-page
  file. ``read_image`` returns a :class:`LoadedImage` whose ``rgb`` is a (1, 3, H, W) float32
  tensor in [0, 1] on the CPU (grayscale is replicated to three channels) and whose ``alpha``
  is (1, 1, H, W) or None. The EXIF orientation is applied (the image comes out upright); the
  ICC profile and the EXIF block (orientation reset to 1) ride along for the writer.
* 16-bit: 16-bit grayscale, grayscale + alpha, RGB and RGBA PNG and TIFF are read with their
  full precision (``bit_depth == 16``).
* Size: judged from the file's header before any pixel is decoded (a few-MB "decompression
  bomb" claiming 900 MP is refused at once): at most ``max_pixels`` pixels, by default
  ``CLIPSR_MAX_PIXELS`` or 250 MP (:func:`clipsr_cli.io.formats.max_pixels_limit`); a ``check``
  callback can judge the size too (the engine's output-memory check).
* Every failure a user can cause raises :class:`~clipsr_cli.errors.InputError` with a one-line
  message that says what to do next.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipsr_cli.errors import InputError, log
from clipsr_cli.io.files import open_regular
from clipsr_cli.io.formats import (MAX_PIXELS, check_dimensions, check_file_size, max_file_bytes,
                                   max_pixels_limit)
from clipsr_cli.io.jpeg import JpegQuality, estimate_quality

__all__ = ["MAX_PIXELS", "LoadedImage", "SizeCheck", "from_pil", "read_image"]

#: ``check(width, height, bit_depth)``: called with an image's upright size and its bit depth (8
#: or 16) once its header is read and before any pixel is decoded; raise to refuse the image.
SizeCheck = Callable[[int, int, int], None]

_READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG includes camera MPO files
_SUPPORTED = "PNG, JPEG, WebP, TIFF or BMP"
_ORIENTATION, _EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x0112, 0x8769, 0xA002, 0xA003
# decode failures Pillow / pypng / tifffile raise for broken files
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  zlib.error)

_open_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image plus what the writer needs to give the output the same character."""

    rgb: torch.Tensor  # (1, 3, H, W) float32 in [0, 1], CPU; grayscale replicated to 3 channels
    alpha: torch.Tensor | None  # (1, 1, H, W) float32 in [0, 1], or None when opaque
    bit_depth: int  # 8 or 16: bits per sample of the source (16 only for 16-bit PNG/TIFF)
    grayscale: bool  # the source was grayscale; the output is written grayscale too
    icc_profile: bytes | None  # the source's ICC profile, carried to the output
    exif: bytes | None  # source EXIF with orientation reset to 1 (JPEG/WebP/PNG sources only)
    format: str | None  # source format as Pillow names it: "PNG", "JPEG", "TIFF", ...
    source: str  # the path, "<stdin>" or "<bytes>": for messages
    jpeg: JpegQuality | None = None  # a JPEG source's quality, from its quantisation tables

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.rgb.shape[-1]), int(self.rgb.shape[-2])


def read_image(source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = None,
               check: SizeCheck | None = None) -> LoadedImage:
    """Read and fully decode an image file, ``"-"`` (standard input) or raw bytes.

    Raises InputError for a missing file, a folder, an empty, truncated or corrupt file, an
    unsupported format, or an image of more than ``max_pixels`` pixels (None: the environment
    variable ``CLIPSR_MAX_PIXELS``, else 250 MP) — judged from the header, before decoding, as is
    ``check`` (see :data:`SizeCheck`), whose exceptions propagate.
    """
    limit = max_pixels_limit(max_pixels)
    most = max_file_bytes(limit)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    elif os.fspath(source) == "-":
        if _isatty(sys.stdin):
            raise InputError("nothing is piped into standard input (-); pipe an image in "
                             "(< photo.jpg)")
        data, name = _read_stream(sys.stdin.buffer, most + 1), "<stdin>"
    else:
        path = Path(source)
        data, name = _read_file(path, limit), str(path)
    if not data:
        raise InputError(f"{name} is empty (0 bytes); pass an image file")
    check_file_size(len(data), name, max_pixels=limit)
    img = _open(data, name)
    with img:
        png16 = img.format == "PNG" and _png_16bit_colour(data)
        tiff16 = img.format == "TIFF" and _tiff_16bit_colour(img)
        _check_size(img, name, limit, check, 16 if png16 or tiff16 else None)
        frames = getattr(img, "n_frames", 1) if img.format != "MPO" else 1
        if frames > 1:
            log.warning(f"{name} has {frames} frames; only the first is used")
        arr = depth = None
        if png16:
            arr, depth = _read_png16(data, name), 16
        elif tiff16:
            arr, depth = _read_tiff16(data, name, limit), 16
        return _loaded(img, name, arr, depth)


def from_pil(img: Image.Image, *, source: str = "<image>",
             max_pixels: int | None = None) -> LoadedImage:
    """Convert a PIL image (any mode :func:`read_image` accepts) to a :class:`LoadedImage`.

    The EXIF orientation is applied like on read. 16-bit data survives only where Pillow
    holds it (mode ``I;16``); for 16-bit colour files use :func:`read_image`. ``max_pixels``:
    as for :func:`read_image` (an image opened but not yet loaded is judged before decoding).
    """
    if not isinstance(img, Image.Image):
        raise InputError(f"expected a PIL image, got {type(img).__name__}; open it with PIL first")
    _check_size(img, source, max_pixels_limit(max_pixels), None, None)
    return _loaded(img, source, None, None)


def _isatty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# -- reading --------------------------------------------------------------------------------------
def _read_stream(stream, most: int) -> bytes:
    """Up to ``most`` bytes of a stream, in 1-MiB reads (``read(most)`` allocates ``most``)."""
    chunks, total = [], 0
    while total < most:
        block = stream.read1(min(1 << 20, most - total))
        if not block:
            break
        chunks.append(block)
        total += len(block)
    return b"".join(chunks)


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with open_regular(path, what="image file") as f:  # never a device, FIFO or folder
            # e.g. a sparse file: refused before a byte of it is read
            size = os.fstat(f.fileno()).st_size
            check_file_size(size, str(path), max_pixels=limit)
            # its size, not the cap: read(n) allocates n bytes up front (2 GiB for a 1-KB PNG)
            data = f.read(size + 1)
            if len(data) > size:  # it grew meanwhile: judged again by the cap
                data += f.read(max_file_bytes(limit) + 1 - len(data))
            return data
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; check the path") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied; check its permissions") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}; check the file") from None


def _open(data: bytes, name: str) -> Image.Image:
    """Open (header only) with Pillow's bomb check replaced by our own limit (``max_pixels``)."""
    with _open_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data), formats=_READ_FORMATS)
        except UnidentifiedImageError:
            other = _other_format(data)
            if other:
                raise InputError(f"{name} is a {other} image, which clipsr does not read; "
                                 f"convert it to {_SUPPORTED} first") from None
            raise InputError(f"{name} is not a {_SUPPORTED} image, or it is corrupt; "
                             "check the file (re-export or re-download it)") from None
        except _DECODE_ERRORS as e:
            raise InputError(f"{name} is corrupt ({e}); re-export or re-download it") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _other_format(data: bytes) -> str | None:
    """The name of a format Pillow knows but clipsr does not read (for a better message)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # only improves a message that is raised anyway
        return None


def _check_size(img: Image.Image, name: str, limit: int, check: SizeCheck | None,
                depth: int | None) -> None:
    """Judge the size the header states, before any pixel is decoded."""
    w, h = img.size
    check_dimensions(w, h, name, max_pixels=limit)
    if check is not None:
        try:  # read only: _exif_of resets the orientation of the image's cached EXIF
            orientation = int(img.getexif().get(_ORIENTATION, 1))
        except (*_DECODE_ERRORS, TypeError):
            orientation = 1
        upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        check(*upright, depth or (16 if img.mode.startswith("I") else 8))


def _corrupt(name: str, e: BaseException) -> InputError:
    return InputError(f"{name} is corrupt or truncated ({e}); re-export or re-download it")


def _png_16bit_colour(data: bytes) -> bool:
    """16-bit RGB, RGBA or gray+alpha PNG: Pillow 13 has no mode for these and reduces them to
    8 bits (16-bit grayscale it keeps, as ``I;16``)."""
    return data[12:16] == b"IHDR" and len(data) >= 26 and data[24] == 16 and data[25] in (2, 4, 6)


def _read_png16(data: bytes, name: str) -> np.ndarray:
    import png  # pypng: Pillow cannot hold 16-bit colour, it would reduce these PNGs to 8 bits

    try:
        width, height, rows, info = png.Reader(bytes=data).read()
        planes = info["planes"]
        out = np.empty((height, width * planes), dtype=np.uint16)
        n = 0
        for n, row in enumerate(rows, 1):
            out[n - 1] = np.frombuffer(row, dtype=np.uint16)
        if n != height:
            raise png.FormatError(f"{n} of {height} rows")
    except (png.Error, *_DECODE_ERRORS) as e:
        raise _corrupt(name, e) from None
    out = out.reshape(height, width, planes)
    key = info.get("transparent")  # tRNS: one colour that stands for "transparent"
    if key is not None and planes in (1, 3):
        opaque = np.any(out != np.asarray(key, dtype=np.uint16).reshape(-1), axis=2)
        out = np.concatenate([out, (opaque * 65535).astype(np.uint16)[..., None]], axis=2)
    return out


def _tiff_16bit_colour(img: Image.Image) -> bool:
    """16-bit TIFF that Pillow 13 would reduce to 8 bits (all but plain grayscale)."""
    bps = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample
    bits = bps if isinstance(bps, tuple) else (bps,)
    return 16 in bits and not img.mode.startswith("I;16")


def _read_tiff16(data: bytes, name: str, limit: int) -> np.ndarray:
    import tifffile  # Pillow cannot hold 16-bit colour; it would reduce these TIFFs to 8 bits

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            if page.compression not in tifffile.TIFF.DECOMPRESSORS:
                raise InputError(f"{name} is a 16-bit TIFF with {page.compression.name} "
                                 "compression, which needs the imagecodecs package: run `pip "
                                 "install imagecodecs`, or re-save it with ZIP or no compression")
            photometric, axes = page.photometric, page.axes
            # tifffile's page, not Pillow's view of the file, decides what asarray allocates
            check_dimensions(page.imagewidth, page.imagelength, name, max_pixels=limit)
            if page.size > 4 * limit:  # more than 4 samples a pixel: extra planes, depth, ...
                raise InputError(f"{name} is a 16-bit TIFF of {page.size} samples ({axes} "
                                 f"{page.shape}), more than clipsr reads; convert it to 16-bit "
                                 "RGB or grayscale first")
            arr = page.asarray()
    except InputError:
        raise
    except (tifffile.TiffFileError, KeyError, *_DECODE_ERRORS) as e:
        raise _corrupt(name, e) from None
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    else:
        arr = arr[..., None]
        axes += "S"
    ok = {tifffile.PHOTOMETRIC.RGB: 3, tifffile.PHOTOMETRIC.MINISBLACK: 1}
    if axes != "YXS" or arr.dtype != np.uint16 or photometric not in ok:
        kind = f"{photometric.name}, {axes}, {arr.dtype}"
        raise InputError(f"{name} is a 16-bit TIFF of a kind clipsr does not read ({kind}); "
                         "convert it to 16-bit RGB or grayscale first")
    keep = ok[photometric] + (1 if arr.shape[2] > ok[photometric] else 0)  # colour + first extra
    return np.ascontiguousarray(arr[..., :keep])


def _loaded(img: Image.Image, name: str, arr: np.ndarray | None, depth: int | None) -> LoadedImage:
    mode = img.mode
    if arr is None:
        try:
            img.load()
        except _DECODE_ERRORS as e:
            raise _corrupt(name, e) from None
        arr, depth = _pil_pixels(img, name)
    orientation, exif = _exif_of(img)
    arr = _orient(arr, orientation)
    maxv = 65535.0 if depth == 16 else 255.0
    channels = arr.shape[2]
    gray = channels in (1, 2)
    colour = arr[..., :1] if gray else arr[..., :3]
    rgb = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1), dtype=np.float32))
    rgb = rgb.div_(maxv).unsqueeze(0)
    if gray:
        rgb = rgb.repeat(1, 3, 1, 1)
    alpha = None
    if channels in (2, 4):
        alpha = torch.from_numpy(np.ascontiguousarray(arr[..., -1], dtype=np.float32))
        alpha = alpha.div_(maxv)[None, None]
    icc = None if mode == "CMYK" else (img.info.get("icc_profile") or None)  # CMYK → sRGB below
    fmt = "JPEG" if img.format == "MPO" else img.format
    jpeg = estimate_quality(getattr(img, "quantization", None)) if fmt == "JPEG" else None
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=int(depth), grayscale=gray,
                       icc_profile=icc, exif=exif, format=fmt, source=name, jpeg=jpeg)


def _pil_pixels(img: Image.Image, name: str) -> tuple[np.ndarray, int]:
    """(H, W, C) uint8/uint16 array, C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA), and its depth."""
    mode, key = img.mode, img.info.get("transparency")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # "I" (32-bit int): clipped to 16 bits
        arr = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)[..., None]
        return _with_key(arr, key), 16
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or key is not None else "RGB")
        key = None
    elif mode == "1":
        img = img.convert("L")
        key = None if key is None else (255 if key else 0)
    elif mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif mode in ("RGBX", "YCbCr", "HSV"):
        img = img.convert("RGB")
    elif mode in ("RGBa", "La"):
        img = img.convert(mode.upper())
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise InputError(f"{name} has pixel mode {mode}, which clipsr does not read; convert it "
                         "to 8- or 16-bit RGB or grayscale first")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    return _with_key(arr, key if img.mode in ("L", "RGB") else None), 8


def _with_key(arr: np.ndarray, key) -> np.ndarray:
    """Turn a colour-key transparency (PNG tRNS for L/RGB) into an alpha channel."""
    if key is None or isinstance(key, bytes):
        return arr
    key = np.asarray(key, dtype=arr.dtype).reshape(-1)
    if key.size != arr.shape[2]:
        return arr
    opaque = np.any(arr != key, axis=2)
    full = np.iinfo(arr.dtype).max
    return np.concatenate([arr, (opaque * full).astype(arr.dtype)[..., None]], axis=2)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK → sRGB through the embedded profile when there is one (a naive convert otherwise)."""
    icc = img.info.get("icc_profile")
    if icc:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's formula conversion
    return img.convert("RGB")


def _exif_of(img: Image.Image) -> tuple[int, bytes | None]:
    """(orientation 1-8, EXIF bytes to carry with orientation reset to 1, or None)."""
    try:
        exif = img.getexif()
        orientation = int(exif.get(_ORIENTATION, 1))
        if "exif" not in img.info:  # TIFF: getexif() is the file's own IFD, not an EXIF block
            return (orientation if 1 <= orientation <= 8 else 1), None
        if _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
        sub = exif.get_ifd(_EXIF_IFD)
        for tag in (_EXIF_WIDTH, _EXIF_HEIGHT):  # they would describe the input, not the output
            sub.pop(tag, None)
        data = exif.tobytes()
    except (*_DECODE_ERRORS, TypeError):
        return 1, None  # malformed EXIF: metadata is optional; the pixels are still good
    return (orientation if 1 <= orientation <= 8 else 1), data or None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array, as PIL.ImageOps.exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr

