"""Reading and writing images: the one place where clipsr touches image files.

Contract
--------
* Read: PNG, JPEG (also camera MPO), WebP, TIFF, BMP, and the first frame of a GIF / multi-page
  file. ``read_image`` returns a :class:`LoadedImage` whose ``rgb`` is a (1, 3, H, W) float32
  tensor in [0, 1] on the CPU (grayscale is replicated to three channels) and whose ``alpha``
  is (1, 1, H, W) or None. The EXIF orientation is applied (the image comes out upright); the
  ICC profile and the EXIF block (orientation reset to 1) ride along for the writer.
* 16-bit: 16-bit grayscale, grayscale + alpha, RGB and RGBA PNG and TIFF are read with their
  full precision (``bit_depth == 16``) and, written back as PNG or TIFF, stay 16-bit.
* Write: ``write_image`` takes a (1, 3, H, W) / (3, H, W) float tensor in [0, 1] (clamped and
  rounded here) or an already quantised (H, W, 3) uint8 / uint16 array, and writes atomically
  (temporary file in the destination folder, then rename): a failed or interrupted write never
  leaves a partial file, and an existing file is only replaced with ``overwrite=True``.
* Every failure a user can cause raises :class:`~clipsr_cli.errors.InputError` with a one-line
  message that says what to do next. Wrong tensor shapes (a programming error) raise ValueError.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipsr_cli.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "LoadedImage",
    "from_pil",
    "is_image_path",
    "output_path_for",
    "read_image",
    "to_pil",
    "write_image",
]

#: Extensions that ``is_image_path`` accepts (and ``batch`` processes), lower case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
#: Largest image read, in pixels. Pillow's own decompression-bomb limit (~179 MP) would refuse
#: legitimate panoramas; this cap still stops a crafted header from claiming terapixels.
MAX_PIXELS = 2**31

PixelSource = torch.Tensor | np.ndarray

_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF",
            "tif": "TIFF", "bmp": "BMP"}
_EXT_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
               ".tiff": "TIFF", ".bmp": "BMP"}
_FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG includes camera MPO files
_SUPPORTED = "PNG, JPEG, WebP, TIFF or BMP"
_NO_ALPHA = frozenset({"JPEG", "BMP"})  # alpha is composited over white for these
_ORIENTATION, _EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x0112, 0x8769, 0xA002, 0xA003
# decode failures Pillow / pypng / tifffile raise for broken files
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  zlib.error)

_BLOCK = 1 << 21  # samples per row block when converting / filtering big images
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

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.rgb.shape[-1]), int(self.rgb.shape[-2])


# -- public API -----------------------------------------------------------------------------------
def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has an image extension clipsr writes (png jpg jpeg webp tif tiff bmp).

    By name only, case-insensitive; ``batch`` uses it to skip other files quietly.
    """
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(source: str | os.PathLike[str] | bytes) -> LoadedImage:
    """Read and fully decode an image file, ``"-"`` (standard input) or raw bytes.

    Raises InputError for a missing file, a folder, an empty, truncated or corrupt file, an
    unsupported format, or an image larger than ``MAX_PIXELS``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    elif os.fspath(source) == "-":
        if _isatty(sys.stdin):
            raise InputError("nothing is piped into standard input (-); pipe an image in, "
                             "e.g. `clipsr upscale - -o out.png < photo.jpg`")
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        path = Path(source)
        data, name = _read_file(path), str(path)
    if not data:
        raise InputError(f"{name} is empty (0 bytes); pass an image file")
    img = _open(data, name)
    with img:
        _check_size(img, name)
        arr = depth = None
        if img.format == "PNG" and _png_16bit_colour(data):
            arr, depth = _read_png16(data, name), 16
        elif img.format == "TIFF" and _tiff_16bit_colour(img):
            arr, depth = _read_tiff16(data, name), 16
        return _loaded(img, name, arr, depth)


def from_pil(img: Image.Image, *, source: str = "<image>") -> LoadedImage:
    """Convert a PIL image (any mode :func:`read_image` accepts) to a :class:`LoadedImage`.

    The EXIF orientation is applied like on read. 16-bit data survives only where Pillow
    holds it (mode ``I;16``); for 16-bit colour files use :func:`read_image`.
    """
    if not isinstance(img, Image.Image):
        raise InputError(f"expected a PIL image, got {type(img).__name__}; open it with PIL first")
    _check_size(img, source)
    return _loaded(img, source, None, None)


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
    """Write an image atomically to ``dest`` (``"-"``: standard output, ``format`` required).

    ``rgb``: (1, 3, H, W) or (3, H, W) float tensor in [0, 1] (clamped, rounded to 8/16 bits)
    or an (H, W, 3) uint8/uint16 array; ``alpha``: (1, 1, H, W) tensor or (H, W) array, or None.
    ``like`` (usually the input's :class:`LoadedImage`) gives the defaults: bit depth,
    grayscale, ICC profile and EXIF. ``format`` ("png", "jpeg"/"jpg", "webp", "tiff", "bmp")
    defaults to the extension of ``dest``. ``quality`` (1-100) is for JPEG and WebP; JPEG at
    quality >= 90 keeps full colour resolution (4:4:4).

    16-bit output (``bit_depth=16``, or a 16-bit ``like``) is written for PNG and TIFF; other
    formats are 8-bit (an explicit ``bit_depth=16`` for them is an InputError). JPEG and BMP
    cannot hold alpha: the image is composited over white. The ICC profile is embedded in PNG,
    JPEG, WebP and TIFF; EXIF (orientation 1) only in JPEG and WebP.

    Never replaces an existing file (nor the input) unless ``overwrite``; returns the path
    written, or None for standard output.
    """
    to_stdout = os.fspath(dest) == "-"
    fmt = _output_format(dest, format, to_stdout)
    if not 1 <= int(quality) <= 100:
        raise InputError(f"quality must be between 1 and 100, got {quality}; try 95")
    if bit_depth not in (None, 8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise InputError(f"{fmt} cannot hold 16 bits per channel; write a .png or .tif instead")
    colour, a = _pixels(rgb, alpha)
    depth = bit_depth or (like.bit_depth if like is not None else None) or (
        16 if colour.dtype == np.uint16 else 8)
    if fmt not in ("PNG", "TIFF"):
        depth = 8
    gray = like.grayscale if like is not None else colour.shape[2] == 1
    icc = like.icc_profile if like is not None else None
    exif = like.exif if like is not None and fmt in ("JPEG", "WEBP") else None

    path = None if to_stdout else Path(dest)
    if path is not None:
        _check_destination(path, like, overwrite)  # before the work of quantising
    arr = _quantise(colour, a, depth=depth, grayscale=gray and fmt != "WEBP",
                    composite=fmt in _NO_ALPHA)

    def encode(f: BinaryIO) -> None:
        _encode(f, arr, fmt, quality=int(quality), icc=_icc_for(icc, arr.shape[2]), exif=exif)

    if path is None:
        if _isatty(sys.stdout):
            raise InputError("refusing to write image data to a terminal; redirect standard "
                             "output (> out.png) or pass -o FILE")
        buf = io.BytesIO()
        encode(buf)
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
        return None
    _atomic_write(path, encode, overwrite)
    return path


def output_path_for(input_path: str | os.PathLike[str], scale: int, *, format: str | None = None,
                    suffix: str | None = None) -> Path:
    """Default output beside the input: ``<stem>_x<scale><ext>``.

    ``format`` picks the extension (else the input's own, or ``.png`` when the input is not a
    format clipsr writes, e.g. a GIF); ``suffix`` replaces ``_x<scale>`` (e.g. ``"_edited"``).
    """
    if os.fspath(input_path) == "-":
        raise InputError("reading from standard input (-) needs an explicit output: pass -o FILE, "
                         "or -o - with --format")
    p = Path(input_path)
    if format is not None:
        ext = _FORMAT_EXT[_normalise_format(format)]
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        ext = p.suffix
    else:
        ext = ".png"
    tag = f"_x{scale}" if suffix is None else suffix
    return p.with_name(f"{p.stem}{tag}{ext}")


def _isatty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# -- reading --------------------------------------------------------------------------------------
def _read_file(path: Path) -> bytes:
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass an image file (use `clipsr batch` for folders)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; check the path") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied; check its permissions") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}; check the file") from None


def _open(data: bytes, name: str) -> Image.Image:
    """Open (header only) with Pillow's bomb check replaced by our own MAX_PIXELS cap."""
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


def _check_size(img: Image.Image, name: str) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{name} has zero size ({w}×{h}); pass a non-empty image")
    if w * h > MAX_PIXELS:
        raise InputError(f"{name} is {w}×{h} ({w * h / 1e6:.0f} megapixels), more than clipsr's "
                         f"limit of {MAX_PIXELS / 1e6:.0f} MP; crop or downscale it first")


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


def _read_tiff16(data: bytes, name: str) -> np.ndarray:
    import tifffile  # Pillow cannot hold 16-bit colour; it would reduce these TIFFs to 8 bits

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            if page.compression not in tifffile.TIFF.DECOMPRESSORS:
                raise InputError(f"{name} is a 16-bit TIFF with {page.compression.name} "
                                 "compression, which needs the imagecodecs package: run `pip "
                                 "install imagecodecs`, or re-save it with ZIP or no compression")
            photometric, axes = page.photometric, page.axes
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
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=int(depth), grayscale=gray,
                       icc_profile=icc, exif=exif, format=fmt, source=name)


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


# -- writing --------------------------------------------------------------------------------------
def _normalise_format(format: str) -> str:
    fmt = _FORMATS.get(str(format).lower().lstrip("."))
    if fmt is None:
        raise InputError(f"unknown image format {format!r}; use png, jpeg, webp, tiff or bmp")
    return fmt


def _output_format(dest: str | os.PathLike[str], format: str | None, to_stdout: bool) -> str:
    if to_stdout:
        if format is None:
            raise InputError("writing to standard output (-) needs a format; pass --format png "
                             "(or jpeg, webp, tiff, bmp)")
        return _normalise_format(format)
    ext = Path(dest).suffix.lower()
    by_ext = _EXT_FORMAT.get(ext)
    if format is None:
        if by_ext is None:
            raise InputError(f"cannot tell the image format of {dest} from its extension; "
                             "use .png, .jpg, .webp, .tif or .bmp, or pass --format")
        return by_ext
    fmt = _normalise_format(format)
    if by_ext is not None and by_ext != fmt:
        raise InputError(f"format {format} does not match the extension of {dest}; change one "
                         "of them")
    return fmt


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
    dtype, maxv = (np.uint16, 65535.0) if depth == 16 else (np.uint8, 255.0)
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
        out[y:y + step] = np.rint(np.clip(c, 0.0, 1.0) * maxv)
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


def _check_destination(path: Path, like: LoadedImage | None, overwrite: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name such as "
                         f"{path / ('out' + (path.suffix or '.png'))}")
    if path.exists() and not overwrite:
        if like is not None and _same_file(path, like.source):
            raise InputError(f"refusing to overwrite the input image {path}; choose another "
                             "output name, or pass --overwrite")
        raise InputError(f"{path} exists; use --overwrite to replace it")


def _same_file(path: Path, source: str) -> bool:
    try:
        return not source.startswith("<") and os.path.samefile(path, source)
    except OSError:
        return False


def _atomic_write(path: Path, encode: Callable[[BinaryIO], None], overwrite: bool) -> None:
    """``_fs.atomic_write`` with user-facing errors (nothing partial is ever left)."""
    from clipsr_cli.io.atomic import atomic_write

    try:
        atomic_write(path, encode, overwrite=overwrite)
    except FileExistsError:
        raise InputError(f"{path} exists; use --overwrite to replace it") from None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; check the free space and "
                         "permissions of the output folder") from e
