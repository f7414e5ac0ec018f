"""What every dataset layout gives: ``Sample``, ``ImageSource``, and how an HR image is loaded.

Images are decoded by :func:`clipsr_cli.io.images.read_image`, the decode ``clipsr upscale``
uses (EXIF orientation applied, grayscale replicated, CMYK through its ICC profile, 16-bit PNG
and TIFF at full precision), then converted for training and evaluation: alpha is composited
over white (``rgb * a + (1 - a)``, in float). :func:`load_rgb` gives that as a float tensor;
:func:`load_image` rounds it to an 8-bit RGB ``PIL.Image`` (a 16-bit sample ``v`` becomes
``round(v / 65535 * 255)``), so an 8-bit RGB file gives exactly its own pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clipsr_cli.errors import DataError, InputError

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "Sample", "load_image", "load_rgb", "split_name",
           "walk_images"]

#: Extensions of dataset images (a GIF's first frame is read too), lower case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
_SPLITS = {"train": "train", "test": "test", "val": "test"}


@dataclass(frozen=True)
class Sample:
    path: Path
    captions: tuple[str, ...]
    """Captions of the image, possibly none."""


def load_rgb(path: str | os.PathLike):
    """(1, 3, H, W) float32 tensor in [0, 1]: the image as ``clipsr upscale`` decodes it, any
    transparency composited over white. Raises ``DataError`` if it cannot be read."""
    from clipsr_cli.io.images import read_image  # torch and the decoders: only when loading

    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}; check the dataset folder")
    try:
        image = read_image(path)
    except InputError as e:
        reason = str(e)
        if reason.startswith(str(path)):
            reason = reason[len(str(path)):].lstrip(" :")
        raise DataError(f"cannot read image {path}: {reason}") from None
    if image.alpha is None:
        return image.rgb
    return image.rgb * image.alpha + (1.0 - image.alpha)


def load_image(path: str | os.PathLike):
    """:func:`load_rgb` as an 8-bit RGB ``PIL.Image`` (rounded). Raises ``DataError``."""
    from PIL import Image

    rgb = load_rgb(path)
    arr = rgb[0].permute(1, 2, 0).mul(255.0).round_().clamp_(0, 255).byte().numpy()
    return Image.fromarray(arr, "RGB")


class ImageSource:
    """A list of captioned images. ``name`` is the format, ``root`` the dataset path,
    ``missing`` how many listed images were not found (and skipped)."""

    name: str = "images"

    def __init__(self, root: Path, samples: Sequence[Sample], *, missing: int = 0):
        self.root = Path(root)
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.missing = missing
        if not self.samples:
            if missing:
                raise DataError(f"none of the {missing} images listed in {self.root} was found; "
                                "check where the images are")
            raise DataError(f"no images found in {self.root}; point to a folder of images, a "
                            "manifest (.csv, .tsv, .jsonl, .json) or a birds/celeba/coco dataset")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def load(self, i: int):
        """(RGB ``PIL.Image``, captions) of sample ``i``; ``DataError`` if it is unreadable."""
        s = self.samples[i]
        return load_image(s.path), s.captions

    @property
    def num_captioned(self) -> int:
        return sum(1 for s in self.samples if s.captions)

    def __repr__(self) -> str:
        extra = f", missing={self.missing}" if self.missing else ""
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} images{extra})"


def image_name(source, i: int) -> str:
    """Image ``i`` of ``source`` as a user knows it: its path under the dataset root (else
    ``image i``)."""
    try:
        path = Path(source[i].path)
    except (TypeError, AttributeError, IndexError, KeyError):
        return f"image {i}"
    root = getattr(source, "root", None)
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def split_name(split: str) -> str:
    """``"train"`` or ``"test"`` (``"val"`` is the test split); DataError otherwise."""
    try:
        return _SPLITS[split.lower()]
    except (KeyError, AttributeError):
        raise DataError(f"unknown split {split!r}; use train, test or val") from None


def walk_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden files/folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
