"""Image formats by name and by extension: which clipsr reads, which it writes, and how a
destination's format is told (torch-free).
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


def format_for(dest: str | os.PathLike[str], format: str | None = None) -> str:
    """The format to write ``dest`` in (``"-"``: standard output, ``format`` required).

    ``format`` wins but must agree with a known extension; without it the extension decides.
    """
    if os.fspath(dest) == "-":
        if format is None:
            raise UsageError("writing to standard output (-) needs a format; pass `format='png'` "
                             "(or jpeg, webp, tiff, bmp)", param="format")
        return normalise_format(format)
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
