"""Captioned image sources for training and evaluation.

``open_dataset(path, format="auto", split="train")`` returns an ``ImageSource``: a sized,
indexable list of ``Sample(path, captions)`` whose ``load(i)`` gives an RGB ``PIL.Image`` and the
captions. Formats:

* ``folder``   a directory of images (recursive), optional sidecar captions ``x.txt`` (or
  ``x.jpg.txt``) beside ``x.jpg``, one per line. If the directory has a subfolder named after
  the split (``train``; ``test`` or ``val`` for the test split), only that subfolder is read.
* ``manifest`` a ``.csv``/``.tsv`` (columns ``image``/``path`` and ``caption``/``text``; several
  captions in one cell separated by ``|``, or repeated rows), ``.jsonl`` (``{"image": ...,
  "caption": ... | "captions": [...]}``) or ``.json`` file; relative paths are relative to the
  manifest. An optional ``split`` column/key selects rows. The keys and rules are those of
  :mod:`clipsr_cli.data.captions`, the same as ``clipsr batch --captions``.
* ``birds`` / ``celeba`` / ``coco``  the CLIP-SR authors' layout: ``<root>/{train,test}/
  filenames.pickle`` (a list of keys), ``<root>/text/<key>.txt``, images under
  ``<root>/image/`` (or ``images/``, CUB's ``CUB_200_2011/images/``). ``coco`` also reads the
  official ``annotations/captions_{train,val}2017.json`` with ``train2017/``, ``val2017/``.

``filenames.pickle`` files come from the internet: they are read by an unpickler that resolves no
class or function at all and must hold a list of strings.

Images are decoded as ``clipsr upscale`` decodes them, alpha over white (see
:mod:`clipsr_cli.data.source`). This module is the public face; the layouts live in
:mod:`clipsr_cli.data.layouts`.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsr_cli.data.captions import MANIFEST_SUFFIXES
from clipsr_cli.data.layouts import (IMAGE_DIRS, CocoCaptionsSource, FolderSource, ManifestSource,
                                     SplitLayoutSource, read_key_list)
from clipsr_cli.data.source import (IMAGE_EXTENSIONS, ImageSource, Sample, load_image, load_rgb,
                                    split_name)
from clipsr_cli.errors import DataError

__all__ = ["Sample", "ImageSource", "FolderSource", "ManifestSource", "SplitLayoutSource",
           "CocoCaptionsSource", "open_dataset", "load_image", "load_rgb", "read_key_list",
           "FORMATS", "IMAGE_EXTENSIONS"]

FORMATS = ("auto", "folder", "manifest", "birds", "celeba", "coco")


def _has_split_layout(root: Path) -> bool:
    return any((root / s / "filenames.pickle").is_file() for s in ("train", "test"))


def _has_coco_annotations(root: Path) -> bool:
    return (root / "annotations").is_dir() and any((root / "annotations").glob("captions_*.json"))


def _open_coco(root: Path, split: str) -> ImageSource:
    """The CLIP-SR layout when it is complete (pickle + text/), else the official annotations."""
    if (root / split_name(split) / "filenames.pickle").is_file() and (root / "text").is_dir():
        return SplitLayoutSource(root, split=split, name="coco",
                                 image_dirs=IMAGE_DIRS + ("train2014", "val2014", "train2017",
                                                           "val2017"))
    if _has_coco_annotations(root):
        return CocoCaptionsSource(root, split=split)
    return SplitLayoutSource(root, split=split, name="coco")  # raises, naming what is missing


def open_dataset(path: str | os.PathLike, format: str = "auto", *, split: str = "train") -> ImageSource:
    """Open a captioned image dataset (see the module docstring for the formats).

    ``format="auto"``: a ``.csv``/``.tsv``/``.jsonl``/``.json`` file is a manifest; a folder with
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
    split_name(split)
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    if fmt == "auto":
        if root.is_file():
            if root.suffix.lower() in MANIFEST_SUFFIXES:
                fmt = "manifest"
            else:
                raise DataError(f"{root} is a file but not a manifest (.csv, .tsv, .jsonl or "
                                ".json); give a folder or a manifest")
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
