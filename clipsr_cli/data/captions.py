"""Captions: the one reader of caption manifests and sidecar files (batch, eval and training).

The same rules everywhere:

* **A caption text holds one caption per non-empty line**; whitespace inside a caption is
  collapsed to single spaces, a UTF-8 BOM is dropped. In a CSV/TSV cell ``|`` also separates
  captions. So every entry gives a *tuple* of captions: ``batch`` and ``eval`` use the first,
  training draws one at random.
* **Sidecar** (:func:`sidecar_captions`): ``NAME.txt`` beside ``NAME.EXT``, else ``NAME.EXT.txt``.
* **Manifest** (:func:`read_manifest`), by extension:

  - ``.csv`` / ``.tsv``: an optional header row naming the columns (a path column named one of
    :data:`PATH_KEYS`, a caption column named one of :data:`CAPTION_KEYS`, an optional
    ``split`` column; case-insensitive); without a header, column 1 is the path and column 2
    the caption. Rows without a path (without a header: without a caption column) are dropped,
    counted in ``Manifest.dropped`` and reported with ``log.warning``.
  - ``.jsonl`` / ``.ndjson``: one object per line with a path key, caption keys (a string or a
    list of strings; all present keys are read) and an optional ``split``. A Hugging Face
    ``metadata.jsonl`` (``file_name``, ``text``) works.
  - ``.json``: an object ``{path: caption or [captions]}``, or a list of objects as in JSONL.

  An image listed several times gets the captions of all its entries, in file order.
* :class:`CaptionTable` looks captions up by image path (absolute, relative, or file name).

A malformed file raises :class:`~clipsr_cli.errors.DataError` naming the file (and line).
Undecodable bytes in a caption text become U+FFFD rather than failing a whole dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from clipsr_cli.errors import DataError, log
from clipsr_cli.io.files import MAX_TEXT_BYTES, read_regular, read_text_regular

__all__ = ["CAPTION_KEYS", "MANIFEST_SUFFIXES", "PATH_KEYS", "CaptionEntry", "CaptionTable",
           "Manifest", "parse_captions", "read_caption_file", "read_manifest", "sidecar_captions"]

#: Names of a manifest's image-path column / key, in order of preference.
PATH_KEYS = ("image", "path", "file", "filename", "file_name", "image_path")
#: Names of a manifest's caption column / keys.
CAPTION_KEYS = ("caption", "captions", "text", "prompt")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


def parse_captions(text: str, *, bar: bool = False) -> tuple[str, ...]:
    """One caption per non-empty line (and per ``|``-separated part with ``bar``)."""
    parts = text.lstrip("\ufeff").splitlines()
    if bar:
        parts = [p for line in parts for p in line.split("|")]
    return tuple(c for c in (" ".join(p.split()) for p in parts) if c)


def read_caption_file(path: str | os.PathLike) -> tuple[str, ...]:
    """The captions of a text file (:func:`parse_captions`); DataError if it cannot be read."""
    path = Path(path)
    try:
        data = read_regular(path, max_bytes=MAX_TEXT_BYTES, what="caption file", error=DataError)
    except OSError as e:
        raise DataError(f"cannot read captions {path} ({e.strerror or e}); fix its "
                        "permissions") from None
    return parse_captions(data.decode("utf-8", errors="replace"))


def sidecar_captions(image: str | os.PathLike) -> tuple[str, ...]:
    """The captions in ``NAME.txt`` (else ``NAME.EXT.txt``) beside ``image``; () if none."""
    image = Path(image)
    for cand in (image.with_suffix(".txt"), image.with_name(image.name + ".txt")):
        if cand.is_file():
            return read_caption_file(cand)
    return ()


@dataclass(frozen=True)
class CaptionEntry:
    """One manifest entry: the image path as written, its captions and its split (or None)."""

    key: str
    captions: tuple[str, ...]
    split: str | None
    where: str  # "FILE:LINE" (or "FILE (KEY)"), for messages


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[CaptionEntry, ...]
    dropped: int = 0  # broken CSV/TSV rows left out

    def resolve(self, key: str) -> Path:
        """The image an entry names: ``~`` expanded, relative to the manifest's folder."""
        p = Path(key).expanduser()
        return p if p.is_absolute() else self.path.parent / p


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a caption manifest (see the module docstring); DataError if it is malformed."""
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in MANIFEST_SUFFIXES:
        raise DataError(f"{path}: unknown manifest type {ext or '(none)'}; use .csv, .tsv, "
                        ".jsonl or .json")
    try:
        text = read_text_regular(path, what="manifest", error=DataError, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path} ({e}); save it as UTF-8 text") from None
    dropped = 0
    if ext in (".csv", ".tsv"):
        entries, dropped = _csv_entries(text, path, "\t" if ext == ".tsv" else ",")
    elif ext == ".json":
        entries = _json_entries(text, path)
    else:
        entries = _jsonl_entries(text, path)
    if dropped:
        log.warning(f"{path}: {dropped} broken row{'s' * (dropped != 1)} dropped (no image path, "
                    "or no caption column); fix or remove them")
    return Manifest(path, tuple(entries), dropped)


def _column(names: list[str], wanted: tuple[str, ...]) -> int | None:
    return next((names.index(k) for k in wanted if k in names), None)


def _csv_entries(text: str, path: Path, delimiter: str) -> tuple[list[CaptionEntry], int]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    cols: tuple[int, int | None, int | None] | None = None
    need = 1  # cells a row needs: through the path column (headerless: path and caption)
    entries, dropped = [], 0
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if cols is None:
                names = [c.strip().lower() for c in row]
                pk, ck = _column(names, PATH_KEYS), _column(names, CAPTION_KEYS)
                if pk is not None or ck is not None:  # a header row
                    if pk is None:
                        raise DataError(f"{path}: no image column (found {', '.join(row)}); the "
                                        "header needs an 'image' or 'path' column")
                    cols, need = (pk, ck, _column(names, ("split",))), pk + 1
                    continue
                cols, need = (0, 1, None), 2
            pcol, ccol, scol = cols
            if len(row) < need or not row[pcol].strip():
                dropped += 1
                continue
            cell = row[ccol] if ccol is not None and ccol < len(row) else ""
            split = row[scol].strip() if scol is not None and scol < len(row) else ""
            entries.append(CaptionEntry(row[pcol].strip(), parse_captions(cell, bar=True),
                                        split or None, f"{path}:{reader.line_num}"))
    except csv.Error as e:
        raise DataError(f"cannot read manifest {path} ({e}); save it as UTF-8 CSV") from None
    return entries, dropped


def _object_entry(obj, where: str) -> CaptionEntry:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with an 'image' key")
    lower = {k.strip().lower(): k for k in obj if isinstance(k, str)}
    pk = next((lower[k] for k in PATH_KEYS if k in lower), None)
    image = obj.get(pk) if pk is not None else None
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: missing 'image' (a path string)")
    caps: list[str] = []
    for key in CAPTION_KEYS:
        value = obj.get(lower.get(key, key))
        if isinstance(value, str):
            caps.extend(parse_captions(value))
        elif isinstance(value, list) and all(isinstance(c, str) for c in value):
            caps.extend(c for v in value for c in parse_captions(v))
        elif value is not None:
            raise DataError(f"{where}: '{key}' must be a string or a list of strings")
    split = obj.get(lower.get("split", "split"))
    split = split.strip() if isinstance(split, str) else ""
    return CaptionEntry(image.strip(), tuple(caps), split or None, where)


def _jsonl_entries(text: str, path: Path) -> list[CaptionEntry]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); one object per line") from None
        entries.append(_object_entry(obj, f"{path}:{n}"))
    return entries


def _json_entries(text: str, path: Path) -> list[CaptionEntry]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(obj, list):
        return [_object_entry(o, f"{path} (item {i})") for i, o in enumerate(obj)]
    bad = (f"{path}: expected a JSON object {{\"path\": \"caption\", ...}} or a list of "
           "objects; use .jsonl for one object per line")
    if not isinstance(obj, dict):
        raise DataError(bad)
    entries = []
    for key, value in obj.items():
        if isinstance(value, str):
            caps = parse_captions(value)
        elif isinstance(value, list) and all(isinstance(c, str) for c in value):
            caps = tuple(c for v in value for c in parse_captions(v))
        else:
            raise DataError(bad)
        entries.append(CaptionEntry(key.strip(), caps, None, f"{path} ({key})"))
    return entries


@dataclass(frozen=True)
class CaptionTable:
    """Captions by image path, from a manifest.

    An image matches an entry by absolute path (a relative entry is taken relative to the
    manifest's folder, then to the working directory), else by its path relative to the folder
    it was found in (``rel``), else by its file name.
    """

    by_abs: dict[str, tuple[str, ...]]
    by_rel: dict[str, tuple[str, ...]]
    source: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTable":
        """Read a manifest; DataError if it is malformed or holds no caption at all."""
        return cls.from_manifest(read_manifest(path))

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "CaptionTable":
        merged: dict[str, list[str]] = {}
        for e in manifest.entries:
            merged.setdefault(os.path.normpath(e.key.replace("\\", "/")), []).extend(e.captions)
        if not any(merged.values()):
            raise DataError(f"{manifest.path} holds no captions; give each image a caption "
                            "(see the accepted columns and keys in the docs)")
        by_abs: dict[str, tuple[str, ...]] = {}
        by_rel: dict[str, tuple[str, ...]] = {}
        relative = []
        for key, caps in merged.items():  # absolute entries first: they name their file exactly
            p = Path(key).expanduser()
            if p.is_absolute():
                a = str(p.resolve())
                by_abs[a] = by_abs.get(a, ()) + tuple(caps)
            else:
                relative.append((p, tuple(caps)))
        for p, caps in relative:
            by_rel[PurePosixPath(p.as_posix()).as_posix()] = caps
            by_abs.setdefault(str((manifest.path.parent / p).resolve()), caps)
            by_abs.setdefault(str(p.resolve()), caps)
        return cls(by_abs, by_rel, str(manifest.path))

    def lookup(self, path: str | os.PathLike, rel: str | PurePosixPath | None = None
               ) -> tuple[str, ...]:
        """The captions of the image at ``path`` (found as ``rel`` in its folder); () if none."""
        path = Path(path)
        hit = self.by_abs.get(str(path.resolve()))
        if not hit and rel is not None:
            hit = self.by_rel.get(PurePosixPath(rel).as_posix())
        if not hit:
            hit = self.by_rel.get(path.name)
        return hit or ()

    def first(self, path: str | os.PathLike, rel: str | PurePosixPath | None = None
              ) -> str | None:
        """The caption ``batch`` and ``eval`` use: the first one, or None."""
        caps = self.lookup(path, rel)
        return caps[0] if caps else None
