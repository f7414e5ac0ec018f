"""Reading and writing images: the public face of clipsr's image I/O.

* :func:`read_image` / :func:`from_pil` → :class:`LoadedImage` (:mod:`clipsr_cli.io.decode`):
  PNG, JPEG, WebP, TIFF, BMP and a GIF's first frame; 16-bit PNG/TIFF at full precision; EXIF
  orientation applied; ICC profile and EXIF carried.
* :func:`write_image` / :func:`to_pil` (:mod:`clipsr_cli.io.encode`): PNG, JPEG, WebP, TIFF,
  BMP, 16-bit PNG/TIFF kept; written through the output policy (:mod:`clipsr_cli.io.outputs`):
  atomic, never replacing an existing file or the input without ``overwrite=True``.
* :func:`is_image_path`, :data:`IMAGE_EXTENSIONS` (:mod:`clipsr_cli.io.formats`).

Every failure a user can cause raises a :class:`~clipsr_cli.errors.ClipsrError` with a one-line
message that says what to do next; wrong tensor shapes (a programming error) raise ValueError.
"""

from __future__ import annotations

from clipsr_cli.io.decode import MAX_PIXELS, LoadedImage, from_pil, read_image
from clipsr_cli.io.encode import PixelSource, to_pil, write_image
from clipsr_cli.io.formats import IMAGE_EXTENSIONS, is_image_path
from clipsr_cli.io.outputs import output_path_for

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "LoadedImage",
    "PixelSource",
    "from_pil",
    "is_image_path",
    "output_path_for",  # temporary: its home is clipsr_cli.io.outputs
    "read_image",
    "to_pil",
    "write_image",
]

