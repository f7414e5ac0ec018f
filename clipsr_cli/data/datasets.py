"""Captioned image sources for training and evaluation.

``open_dataset(path, format="auto", split="train")`` returns an ``ImageSource``: a sized,
indexable list of ``Sample(path, captions)`` whose ``load(i)`` gives an RGB ``PIL.Image`` and the
captions. Formats:

* ``folder``   a directory of images (recursive), optional sidecar captions ``x.txt`` beside
  ``x.jpg`` (one per line). If the directory has a subfolder named after the split (``train``;
  ``test`` or ``val`` for the test split), only that subfolder is read.
* ``manifest`` a ``.csv`` (columns ``image``/``path`` and ``caption``/``text``; several captions
  in one cell separated by ``|``, or repeated rows) or ``.jsonl`` file (``{"image": ...,
  "caption": ... | "captions": [...]}``); relative paths are relative to the manifest. An
  optional ``split`` column/key selects rows.
* ``birds`` / ``celeba`` / ``coco``  the CLIP-SR authors' layout: ``<root>/{train,test}/
  filenames.pickle`` (a list of keys), ``<root>/text/<key>.txt``, images under
  ``<root>/image/`` (or ``images/``, CUB's ``CUB_200_2011/images/``). ``coco`` also reads the
  official ``annotations/captions_{train,val}2017.json`` with ``train2017/``, ``val2017/``.

``filenames.pickle`` files come from the internet: they are read by an unpickler that resolves no
class or function at all and must hold a list of strings.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageOps

from clipsr_cli.errors import DataError

__all__ = ["Sample", "ImageSource", "FolderSource", "ManifestSource", "SplitLayoutSource",
           "CocoCaptionsSource", "open_dataset", "load_image", "read_key_list", "FORMATS",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
FORMATS = ("auto", "folder", "manifest", "birds", "celeba", "coco")
_SPLITS = {"train": "train", "test": "test", "val": "test"}
_ROW_SPLITS = {**_SPLITS, "valid": "test", "validation": "test"}  # a manifest's split column
_IMAGE_DIRS = ("image", "images", "CUB_200_2011/images")


@dataclass(frozen=True)
class Sample:
    path: Path
    captions: tuple[str, ...]
    """Captions of the image, possibly none."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image as RGB: EXIF orientation applied, transparency composited over white,
    grayscale/palette/CMYK/16-bit converted. Raises ``DataError`` if it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                # 16-bit grayscale: scale to 8 bits (convert("L") would clip at 255)
                im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            if has_alpha:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            rgb = im.convert("RGB")
            rgb.load()
            return rgb
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; check the dataset folder") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read image {path} ({reason}); remove or replace the file") from None


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
                            ".csv/.jsonl manifest or a birds/celeba/coco dataset")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def load(self, i: int) -> tuple[Image.Image, tuple[str, ...]]:
        """(RGB image, captions) of sample ``i``; ``DataError`` if the image is unreadable."""
        s = self.samples[i]
        return load_image(s.path), s.captions

    @property
    def num_captioned(self) -> int:
        return sum(1 for s in self.samples if s.captions)

    def __repr__(self) -> str:
        extra = f", missing={self.missing}" if self.missing else ""
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} images{extra})"


# -- helpers -----------------------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _read_captions(path: Path) -> tuple[str, ...]:
    """One caption per line, blank lines dropped. Undecodable bytes become U+FFFD."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"cannot read captions {path} ({e.strerror or e}); fix its permissions") from None
    return tuple(line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip())


def _split_name(split: str) -> str:
    try:
        return _SPLITS[split.lower()]
    except (KeyError, AttributeError):
        raise DataError(f"unknown split {split!r}; use train, test or val") from None


def _walk_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden files/folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames
                     if not f.startswith(".") and _is_image(Path(f)))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# -- folder ------------------------------------------------------------------------------------------
class FolderSource(ImageSource):
    """A folder of images (recursive) with optional ``x.txt`` caption files beside ``x.jpg``."""

    name = "folder"

    def __init__(self, root: str | os.PathLike, *, split: str = "train"):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        split = _split_name(split)
        candidates = ("train",) if split == "train" else ("test", "val", "valid", "validation")
        for name in candidates:
            if (root / name).is_dir():
                root = root / name
                break
        samples = []
        for p in _walk_images(root):
            side = p.with_suffix(".txt")
            samples.append(Sample(p, _read_captions(side) if side.is_file() else ()))
        super().__init__(root, samples)


# -- manifest ----------------------------------------------------------------------------------------
class ManifestSource(ImageSource):
    """A CSV or JSONL list of images and captions."""

    name = "manifest"
    _IMAGE_KEYS = ("image", "path", "file", "filename", "file_name")
    _CAPTION_KEYS = ("caption", "captions", "text")

    def __init__(self, path: str | os.PathLike, *, split: str = "train"):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"manifest not found: {path}")
        split = _split_name(split)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = self._read_csv(path)
        elif suffix == ".jsonl":
            rows = self._read_jsonl(path)
        else:
            raise DataError(f"{path}: a manifest must be a .csv or .jsonl file")
        captions: dict[Path, list[str]] = {}
        for image, caps, row_split in rows:
            if row_split and row_split.strip() and _ROW_SPLITS.get(row_split.strip().lower()) != split:
                continue
            p = Path(image).expanduser()
            p = p if p.is_absolute() else path.parent / p
            captions.setdefault(p, []).extend(c.strip() for c in caps if c and c.strip())
        samples, missing = [], 0
        for p, caps in captions.items():
            if p.is_file():
                samples.append(Sample(p, tuple(caps)))
            else:
                missing += 1
        super().__init__(path, samples, missing=missing)

    @classmethod
    def _pick(cls, keys: Iterable[str], wanted: Sequence[str]) -> str | None:
        lower = {k.strip().lower(): k for k in keys if k is not None}
        return next((lower[w] for w in wanted if w in lower), None)

    @classmethod
    def _read_csv(cls, path: Path) -> list[tuple[str, list[str], str | None]]:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                img_col = cls._pick(header, cls._IMAGE_KEYS)
                cap_col = cls._pick(header, cls._CAPTION_KEYS)
                split_col = cls._pick(header, ("split",))
                if img_col is None:
                    raise DataError(f"{path}: no image column (found {', '.join(header) or 'none'}); "
                                    "the header needs an 'image' or 'path' column")
                rows = []
                for row in reader:
                    image = (row.get(img_col) or "").strip()
                    if not image:
                        continue
                    cell = (row.get(cap_col) or "") if cap_col else ""
                    rows.append((image, cell.split("|"), row.get(split_col) if split_col else None))
                return rows
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read manifest {path} ({e}); save it as UTF-8 CSV") from None

    @classmethod
    def _read_jsonl(cls, path: Path) -> list[tuple[str, list[str], str | None]]:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read manifest {path} ({e}); save it as UTF-8 JSONL") from None
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); one object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with an 'image' key")
            img_key = cls._pick(obj.keys(), cls._IMAGE_KEYS)
            image = obj.get(img_key) if img_key else None
            if not isinstance(image, str) or not image.strip():
                raise DataError(f"{path}:{n}: missing 'image' (a path string)")
            caps: list[str] = []
            for key in ("caption", "captions", "text"):
                value = obj.get(key)
                if isinstance(value, str):
                    caps.append(value)
                elif isinstance(value, list) and all(isinstance(c, str) for c in value):
                    caps.extend(value)
                elif value is not None:
                    raise DataError(f"{path}:{n}: '{key}' must be a string or a list of strings")
            row_split = obj.get("split")
            rows.append((image.strip(), caps, row_split if isinstance(row_split, str) else None))
        return rows


# -- the CLIP-SR authors' layout -------------------------------------------------------------------
class _NoGlobalsUnpickler(pickle.Unpickler):
    """Resolves no global at all, so no class can be built and no function called."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_key_list(path: str | os.PathLike) -> list[str]:
    """Read a ``filenames.pickle``: a list (or tuple) of strings, Python 2 or 3 pickle.
    Anything else raises ``DataError`` without running any of its code."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None
    bad = f"{path} is not a list of file names; re-download the dataset's split files"
    try:
        # encoding="bytes": Python 2 str arrive as bytes and are decoded below
        value = _NoGlobalsUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, RecursionError, OverflowError, UnicodeDecodeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{bad} (unpickling refused: {reason})") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{bad} (it holds a {type(value).__name__})")
    keys = []
    for k in value:
        if isinstance(k, bytes):
            try:
                k = k.decode("utf-8")
            except UnicodeDecodeError:
                k = k.decode("latin-1")
        if not isinstance(k, str):
            raise DataError(f"{bad} (an entry is a {type(k).__name__})")
        keys.append(k)
    return keys


def _safe_key(key: str, pickle_path: Path) -> str:
    key = key.strip().replace("\\", "/")
    parts = key.split("/")
    if not key or key.startswith("/") or ".." in parts or ":" in parts[0]:
        raise DataError(f"{pickle_path}: key {key!r} points outside the dataset folder; "
                        "re-download the dataset's split files")
    return key


class SplitLayoutSource(ImageSource):
    """``<root>/{train,test}/filenames.pickle`` + ``<root>/text/<key>.txt`` + images.

    ``missing`` counts keys without an image (skipped), ``missing_captions`` keys without a
    caption file (kept, with no caption)."""

    def __init__(self, root: str | os.PathLike, *, split: str = "train", name: str = "birds",
                 image_dirs: Sequence[str] = _IMAGE_DIRS):
        root = Path(root)
        self.name = name
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        split = _split_name(split)
        pickle_path = root / split / "filenames.pickle"
        if not pickle_path.is_file():
            raise DataError(f"{pickle_path} not found; a {name} dataset needs "
                            f"<root>/{split}/filenames.pickle (the CLIP-SR layout)")
        text_dir = root / "text"
        if not text_dir.is_dir():
            raise DataError(f"caption folder {text_dir} not found; a {name} dataset needs "
                            "<root>/text/<key>.txt")
        keys = [_safe_key(k, pickle_path) for k in read_key_list(pickle_path)]
        # index every image once (stat-ing 11788 keys x dirs x extensions would be slow)
        index: dict[str, Path] = {}
        for sub in image_dirs:
            d = root / sub
            if not d.is_dir():
                continue
            for p in _walk_images(d):
                rel = p.relative_to(d).as_posix()
                index.setdefault(rel, p)
                index.setdefault(rel.rsplit(".", 1)[0], p)
        if not index:
            raise DataError(f"no image folder in {root}; put the images in "
                            f"{root / 'image'} (or images/, CUB_200_2011/images/)")
        samples, missing, no_caption = [], 0, 0
        for key in keys:
            p = index.get(key)
            if p is None:
                missing += 1
                continue
            txt = text_dir / f"{key}.txt"
            caps = _read_captions(txt) if txt.is_file() else ()
            no_caption += not caps
            samples.append(Sample(p, caps))
        self.missing_captions = no_caption
        super().__init__(root, samples, missing=missing)


class CocoCaptionsSource(ImageSource):
    """COCO's official ``annotations/captions_{train,val}{2017,2014}.json`` + image folders."""

    name = "coco"

    def __init__(self, root: str | os.PathLike, *, split: str = "train"):
        root = Path(root)
        split = _split_name(split)
        part = "train" if split == "train" else "val"
        ann = next((root / "annotations" / f"captions_{part}{y}.json" for y in ("2017", "2014")
                    if (root / "annotations" / f"captions_{part}{y}.json").is_file()), None)
        if ann is None:
            raise DataError(f"{root / 'annotations'} has no captions_{part}2017.json; download "
                            "COCO's annotations or use the CLIP-SR layout")
        year = ann.stem[-4:]
        img_dir = next((d for d in (root / f"{part}{year}", root / "images" / f"{part}{year}")
                        if d.is_dir()), None)
        if img_dir is None:
            raise DataError(f"COCO image folder {root / f'{part}{year}'} not found; unpack "
                            f"{part}{year}.zip there")
        try:
            data = json.loads(ann.read_text(encoding="utf-8"))
            images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
            captions: dict[int, list[str]] = {i: [] for i in images}
            for a in data["annotations"]:
                captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"cannot read COCO annotations {ann} ({type(e).__name__}: {e}); "
                            "re-download them") from None
        samples, missing = [], 0
        for image_id, file_name in sorted(images.items(), key=lambda kv: kv[1]):
            p = img_dir / file_name
            if p.is_file():
                samples.append(Sample(p, tuple(c for c in captions.get(image_id, ()) if c)))
            else:
                missing += 1
        super().__init__(root, samples, missing=missing)


def _has_split_layout(root: Path) -> bool:
    return any((root / s / "filenames.pickle").is_file() for s in ("train", "test"))


def _has_coco_annotations(root: Path) -> bool:
    return (root / "annotations").is_dir() and any((root / "annotations").glob("captions_*.json"))


def _open_coco(root: Path, split: str) -> ImageSource:
    """The CLIP-SR layout when it is complete (pickle + text/), else the official annotations."""
    if (root / _split_name(split) / "filenames.pickle").is_file() and (root / "text").is_dir():
        return SplitLayoutSource(root, split=split, name="coco",
                                 image_dirs=_IMAGE_DIRS + ("train2014", "val2014", "train2017",
                                                           "val2017"))
    if _has_coco_annotations(root):
        return CocoCaptionsSource(root, split=split)
    return SplitLayoutSource(root, split=split, name="coco")  # raises, naming what is missing


def open_dataset(path: str | os.PathLike, format: str = "auto", *, split: str = "train") -> ImageSource:
    """Open a captioned image dataset (see the module docstring for the formats).

    ``format="auto"``: a ``.csv``/``.jsonl`` file is a manifest; a folder with
    ``annotations/captions_*.json`` is COCO; a folder with ``train/filenames.pickle`` (or test/)
    is the CLIP-SR layout (``celeba`` if the folder's name contains "celeba", ``coco`` if
    "coco", else ``birds``); any other folder is a folder of images.
    ``split``: "train", "test" or "val" (= "test").
    """
    root = Path(path).expanduser()
    fmt = (format or "auto").lower()
    if fmt == "cub":
        fmt = "birds"
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)}")
    _split_name(split)
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    if fmt == "auto":
        if root.is_file():
            if root.suffix.lower() in (".csv", ".jsonl"):
                fmt = "manifest"
            else:
                raise DataError(f"{root} is a file but not a .csv/.jsonl manifest; give a "
                                "folder or a manifest")
        elif _has_coco_annotations(root):
            fmt = "coco"
        elif _has_split_layout(root):
            lname = root.resolve().name.lower()
            fmt = "celeba" if "celeba" in lname else "coco" if "coco" in lname else "birds"
        else:
            fmt = "folder"
    if fmt == "manifest":
        return ManifestSource(root, split=split)
    if root.is_file():
        raise DataError(f"{root} is a file; the {fmt} format needs a folder")
    if fmt == "folder":
        return FolderSource(root, split=split)
    if fmt == "coco":
        return _open_coco(root, split)
    return SplitLayoutSource(root, split=split, name=fmt)
