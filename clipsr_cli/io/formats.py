"""Image formats by name and by extension: which clipsr reads, which it writes, and how a
destination's format is told; and the size limit an image's header is judged by before it is
decoded (torch-free).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsr_cli.errors import InputError, UsageError

__all__ = ["IMAGE_EXTENSIONS", "READ_EXTENSIONS", "WRITE_FORMATS", "extension_for", "format_for",
           "is_image_path",
           "normalise_format"]

#: Extensions that ``is_image_path`` accepts (and ``batch`` processes), lower case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
#: Extensions of the files clipsr reads (``upscale`` and ``batch`` alike): those it writes, and
#: GIF (its first frame).
READ_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}
#: The formats clipsr writes, as Pillow names them.
WRITE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")

#: Default limit on an input image's pixels (width × height), judged from the file's header
#: before anything is decoded. 250 MP covers the largest camera files (pixel-shift 200 MP) while
#: a 900-MP "decompression bomb" (a few MB of PNG that would decode to 17 GB) is refused.
MAX_PIXELS = 250_000_000
#: Environment variable that overrides :data:`MAX_PIXELS` (a number of pixels, e.g. ``1e9``).
MAX_PIXELS_ENV = "CLIPSR_MAX_PIXELS"

_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF",
            "tif": "TIFF", "bmp": "BMP"}
_EXT_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
               ".tiff": "TIFF", ".bmp": "BMP"}
_FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has an image extension clipsr writes (png jpg jpeg webp tif tiff bmp).

    By name only, case-insensitive; ``batch`` uses it to skip other files quietly.
    """
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def normalise_format(format: str) -> str:
    """``"jpg"``, ``".PNG"``, ... → Pillow's name (``"JPEG"``, ``"PNG"``); UsageError if unknown."""
    fmt = _FORMATS.get(str(format).lower().lstrip("."))
    if fmt is None:
        raise UsageError(f"unknown image format {format!r}; use `format` png, jpeg, webp, tiff "
                         "or bmp", param="format")
    return fmt


def extension_for(format: str) -> str:
    """The extension clipsr gives a file of ``format`` (``"jpeg"`` → ``".jpg"``)."""
    return _FORMAT_EXT[normalise_format(format)]


def format_for(dest: str | os.PathLike[str], format: str | None = None,
               source_format: str | None = None) -> str:
    """The format to write ``dest`` in.

    ``format`` wins but must agree with a known extension; without it the extension decides.
    Standard output (``"-"``) has no extension: ``format``, else ``source_format`` (the input's
    format as decoded, Pillow's name; a format clipsr does not write, GIF, gives PNG); with
    neither, a UsageError.
    """
    if os.fspath(dest) == "-":
        if format is not None:
            return normalise_format(format)
        if source_format is not None:
            fmt = "JPEG" if source_format == "MPO" else str(source_format).upper()
            return fmt if fmt in WRITE_FORMATS else "PNG"
        raise UsageError("writing to standard output (-) needs a format; pass `format='png'` "
                         "(or jpeg, webp, tiff, bmp)", param="format")
    by_ext = _EXT_FORMAT.get(Path(dest).suffix.lower())
    if format is None:
        if by_ext is None:
            raise InputError(f"cannot tell the image format of {dest} from its extension; "
                             "use .png, .jpg, .webp, .tif or .bmp, or pass `format`")
        return by_ext
    fmt = normalise_format(format)
    if by_ext is not None and by_ext != fmt:
        raise UsageError(f"format {format} does not match the extension of {dest}; change one "
                         "of them", param="format")
    return fmt


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The input-pixel limit in force: ``max_pixels`` if given, else the environment variable
    ``CLIPSR_MAX_PIXELS``, else :data:`MAX_PIXELS`. UsageError for a value that is not a positive
    number of pixels."""
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise UsageError(f"`max_pixels` must be a positive number of pixels, got "
                             f"{max_pixels!r}", param="max_pixels")
        return max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < float("inf")):
        raise UsageError(f"{MAX_PIXELS_ENV}={raw} is not a positive number of pixels; set it "
                         f"to e.g. 1000000000 (or 1e9), or unset it for the default "
                         f"{MAX_PIXELS / 1e6:.0f} MP")
    return int(value)


def check_dimensions(width: int, height: int, name: str, *, max_pixels: int | None = None) -> None:
    """Refuse (InputError) an image of zero size or of more pixels than
    :func:`max_pixels_limit` allows; called with the size a file's header states, before any
    pixel is decoded."""
    if width <= 0 or height <= 0:
        raise InputError(f"{name} has zero size ({width}×{height}); pass a non-empty image")
    limit = max_pixels_limit(max_pixels)
    if width * height > limit:
        raise InputError(f"{name} is {width}×{height} ({width * height / 1e6:.4g} megapixels), "
                         f"more than the limit of {limit / 1e6:.4g} MP for one image; crop or "
                         f"downscale it, or raise the limit with {MAX_PIXELS_ENV}=N (N pixels; "
                         "`max_pixels` in Python)")


def max_file_bytes(max_pixels: int | None = None) -> int:
    """Most bytes an image file within the pixel limit can need: 16-bit RGBA stored
    uncompressed (8 bytes a pixel) plus 64 MiB of metadata."""
    return max_pixels_limit(max_pixels) * 8 + (64 << 20)


def check_file_size(size: int, name: str, *, max_pixels: int | None = None) -> None:
    """Refuse (InputError) a file longer than :func:`max_file_bytes` before it is read (a sparse
    file, or one padded to exhaust memory)."""
    if size > max_file_bytes(max_pixels):
        limit = max_pixels_limit(max_pixels)
        raise InputError(f"{name} is {size / 2**30:.1f} GiB, more than an image within the limit "
                         f"of {limit / 1e6:.4g} MP can take; pass a smaller file, or raise the "
                         f"limit with {MAX_PIXELS_ENV}=N (N pixels; `max_pixels` in Python)")
