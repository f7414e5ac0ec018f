"""The dataset layouts: a folder, a manifest, and the CLIP-SR authors' layout (+ COCO's own).

``filenames.pickle`` files come from the internet: they are read by an unpickler that resolves no
class or function at all and must hold a list of strings.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Sequence

from clipsr_cli.data.captions import (parse_captions, read_caption_file, read_manifest,
                                      sidecar_captions)
from clipsr_cli.data.source import ImageSource, Sample, split_name, walk_images
from clipsr_cli.errors import DataError

__all__ = ["CocoCaptionsSource", "FolderSource", "ManifestSource", "SplitLayoutSource",
           "read_key_list"]

_ROW_SPLITS = {"train": "train", "test": "test", "val": "test", "valid": "test",
               "validation": "test"}  # a manifest's split column
IMAGE_DIRS = ("image", "images", "CUB_200_2011/images")


# -- folder ------------------------------------------------------------------------------------------
class FolderSource(ImageSource):
    """A folder of images (recursive) with optional sidecar captions ``x.txt`` beside ``x.jpg``
    (one per line; ``x.jpg.txt`` works too)."""

    name = "folder"

    def __init__(self, root: str | os.PathLike, *, split: str = "train"):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        split = split_name(split)
        candidates = ("train",) if split == "train" else ("test", "val", "valid", "validation")
        for name in candidates:
            if (root / name).is_dir():
                root = root / name
                break
        super().__init__(root, [Sample(p, sidecar_captions(p)) for p in walk_images(root)])


# -- manifest ----------------------------------------------------------------------------------------
class ManifestSource(ImageSource):
    """A CSV/TSV, JSONL or JSON list of images and captions (:mod:`clipsr_cli.data.captions`);
    relative paths are relative to the manifest, an optional ``split`` selects entries."""

    name = "manifest"

    def __init__(self, path: str | os.PathLike, *, split: str = "train"):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"manifest not found: {path}")
        split = split_name(split)
        manifest = read_manifest(path)
        captions: dict[Path, list[str]] = {}
        for e in manifest.entries:
            if e.split and _ROW_SPLITS.get(e.split.lower()) != split:
                continue
            captions.setdefault(manifest.resolve(e.key), []).extend(e.captions)
        samples, missing = [], 0
        for p, caps in captions.items():
            if p.is_file():
                samples.append(Sample(p, tuple(caps)))
            else:
                missing += 1
        super().__init__(path, samples, missing=missing)


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
                 image_dirs: Sequence[str] = IMAGE_DIRS):
        root = Path(root)
        self.name = name
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        split = split_name(split)
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
            for p in walk_images(d):
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
            caps = read_caption_file(txt) if txt.is_file() else ()
            no_caption += not caps
            samples.append(Sample(p, caps))
        self.missing_captions = no_caption
        super().__init__(root, samples, missing=missing)



class CocoCaptionsSource(ImageSource):
    """COCO's official ``annotations/captions_{train,val}{2017,2014}.json`` + image folders."""

    name = "coco"

    def __init__(self, root: str | os.PathLike, *, split: str = "train"):
        root = Path(root)
        split = split_name(split)
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
                captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"cannot read COCO annotations {ann} ({type(e).__name__}: {e}); "
                            "re-download them") from None
        samples, missing = [], 0
        for image_id, file_name in sorted(images.items(), key=lambda kv: kv[1]):
            p = img_dir / file_name
            if p.is_file():
                samples.append(Sample(p, tuple(c for cap in captions.get(image_id, ())
                                                for c in parse_captions(cap))))
            else:
                missing += 1
        super().__init__(root, samples, missing=missing)
