"""Where ``batch``'s images come from: INPUT arguments, shards and captions (torch-free).

* :func:`discover` turns the INPUT arguments (folders, files, globs, ``@list.txt``, ``-``) into
  :class:`Source` s, each with the relative path its output gets under the output folder. Files
  that are not images (by extension: :data:`~clipsr_cli.io.formats.READ_EXTENSIONS`, the same set
  ``upscale`` reads), hidden files and files not matching ``glob`` are counted, never processed.
* :func:`parse_shard` / :func:`shard_of`: a file belongs to shard K of N by a hash of its
  relative path, so the split does not depend on the order the OS lists files, on the machine,
  or on files added between two array jobs starting.
* :func:`caption_source`: each file's caption, from one ``text``, a caption manifest
  (:class:`~clipsr_cli.data.captions.CaptionTable`) or sidecar files
  (:func:`~clipsr_cli.data.captions.sidecar_captions`); a caption text with several lines gives
  its first caption.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence, TextIO

from clipsr_cli.data.captions import CaptionTable, sidecar_captions
from clipsr_cli.errors import InputError, UsageError
from clipsr_cli.io.formats import READ_EXTENSIONS

__all__ = ["CaptionFn", "Discovery", "Source", "caption_source", "discover", "images_below",
           "is_input_image", "parse_shard", "shard_of", "sidecar_caption"]

CaptionFn = Callable[["Source"], "str | None"]


@dataclass(frozen=True)
class Source:
    """One input image."""

    path: Path  # the file, as found (for reading and messages)
    rel: PurePosixPath  # its place under the output folder: the folder-relative path of a file
    #                     found by walking a folder, else just its name; also the shard key


@dataclass(frozen=True)
class Discovery:
    sources: tuple[Source, ...]  # image files, deduplicated, in the order found
    ignored: tuple[Path, ...]  # not images, hidden, or not matching `glob`: skipped quietly
    missing: tuple[str, ...]  # entries of a list file / stdin that do not exist (they fail)
    unwalked: tuple[Path, ...] = ()  # sub-folders left out because `recursive` was not asked


def is_input_image(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has the extension of an image clipsr reads (GIF included)."""
    return Path(path).suffix.lower() in READ_EXTENSIONS


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[") and not Path(arg).expanduser().exists()


def _glob_selects(rel: PurePosixPath, pattern: str) -> bool:
    """``glob``: matched (case-insensitively) against the file name, or against the path
    relative to the walked folder when the pattern contains a ``/``."""
    target = rel.as_posix() if "/" in pattern else rel.name
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


def _list_entries(text: str) -> list[str]:
    """Paths of a list file / stdin: one per line (or NUL-separated, as ``find -print0``
    writes); blank lines and lines starting with ``#`` are skipped."""
    parts = text.split("\0") if "\0" in text else text.splitlines()
    return [p.strip() for p in parts if p.strip() and not p.strip().startswith("#")]


def _read_list(arg: str, stdin: TextIO | None) -> list[str]:
    if arg == "-":
        return _list_entries((stdin or sys.stdin).read())
    listing = Path(arg[1:]).expanduser()
    try:
        return _list_entries(listing.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"list file {listing} does not exist; check the path after @") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read list file {listing} ({e}); it must be UTF-8 text with one "
                         "path per line") from None


def discover(inputs: Sequence[str], *, recursive: bool = False, glob: str | None = None,
             exclude: str | os.PathLike | None = None, stdin: TextIO | None = None) -> Discovery:
    """Expand INPUT arguments into image files.

    Each argument is a folder (its images; with ``recursive`` its subfolders too, relative
    paths kept so the tree can be mirrored), an image file, a glob (expanded here when the shell
    did not; each match is treated like an argument), ``@FILE`` (a text file listing paths), or
    ``-`` (paths on ``stdin``). Hidden files and folders (``.name``) are skipped when walking,
    and so is ``exclude`` (the output folder, when it lies inside an input folder).
    ``glob`` filters the files found by walking folders.

    Raises InputError for an argument that does not exist or a glob that matches nothing, so a
    typo fails before any work; a missing entry of a list only fails that entry.
    """
    found: dict[Path, Source] = {}
    ignored: list[Path] = []
    missing: list[str] = []
    unwalked: list[Path] = []
    skip_dir = Path(exclude).expanduser().resolve() if exclude is not None else None
    used_stdin = False

    def add_file(path: Path, rel: PurePosixPath) -> None:
        if not is_input_image(path):
            ignored.append(path)
            return
        found.setdefault(path.resolve(), Source(path, rel))

    def add_dir(top: Path) -> None:
        for root, dirs, files in os.walk(top):
            here = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and (skip_dir is None or (here / d).resolve() != skip_dir))
            if not recursive:
                unwalked.extend(here / d for d in dirs)
                dirs[:] = []
            for name in sorted(files):
                path = here / name
                rel = PurePosixPath(path.relative_to(top).as_posix())
                if name.startswith(".") or (glob is not None and not _glob_selects(rel, glob)):
                    ignored.append(path)
                else:
                    add_file(path, rel)

    def add_path(path: Path) -> None:
        if path.is_dir():
            add_dir(path)
        else:
            add_file(path, PurePosixPath(path.name))

    for arg in inputs:
        if arg == "-" or (arg.startswith("@") and len(arg) > 1):
            if arg == "-":
                if used_stdin:
                    raise UsageError("'-' (paths on standard input) can be given only once",
                                     param="inputs")
                used_stdin = True
            for entry in _read_list(arg, stdin):
                path = Path(entry).expanduser()
                if path.exists():
                    add_path(path)
                else:
                    missing.append(entry)
            continue
        if _is_glob(arg):
            matches = sorted(globlib.glob(os.path.expanduser(arg), recursive=True))
            if not matches:
                raise InputError(f"no file matches {arg}; check the pattern (quote it to let "
                                 "clipsr expand it)")
            for m in matches:
                add_path(Path(m))
            continue
        path = Path(arg).expanduser()
        if not path.exists():
            raise InputError(f"{arg} does not exist; check the path")
        add_path(path)
    return Discovery(tuple(found.values()), tuple(ignored), tuple(missing), tuple(unwalked))


def images_below(folders: Sequence[Path]) -> int:
    """How many images lie in ``folders`` and their sub-folders (hidden ones left out): what a
    run without ``recursive`` did not see."""
    n = 0
    for top in folders:
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            n += sum(1 for f in files if not f.startswith(".") and is_input_image(f))
    return n


# -- sharding -------------------------------------------------------------------------------------
def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) → (K, N); UsageError otherwise."""
    if isinstance(spec, tuple):
        k, n = spec
        if 1 <= k <= n:
            return int(k), int(n)
        spec = f"{k}/{n}"
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"`shard` must be K/N with 1 <= K <= N (e.g. 1/4), not {spec!r}",
                         param="shard")
    return int(m.group(1)), int(m.group(2))


def shard_of(rel: PurePosixPath | str, n: int) -> int:
    """The shard (1..n) of a file: a hash of its relative path, independent of listing order
    and of which other files exist (files added between array jobs do not move any file)."""
    digest = hashlib.sha256(PurePosixPath(rel).as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


# -- captions -------------------------------------------------------------------------------------
def sidecar_caption(image: str | os.PathLike) -> str | None:
    """The first caption in ``NAME.txt`` (or ``NAME.EXT.txt``) beside ``image``; None if none."""
    return (sidecar_captions(image) or (None,))[0]


def caption_source(*, text: str | None = None, captions: str | os.PathLike | None = None,
                   caption_sidecar: bool = False) -> CaptionFn | None:
    """One of: the same ``text`` for all, a caption manifest, or sidecar files (or None)."""
    if sum((bool(text), captions is not None, caption_sidecar)) > 1:
        raise UsageError("use only one of `text`, `captions` and `caption_sidecar`",
                         param="captions")
    if text:
        return lambda _source: text
    if captions is not None:
        table = CaptionTable.load(captions)
        return lambda source: table.first(source.path, source.rel)
    if caption_sidecar:
        return lambda source: sidecar_caption(source.path)
    return None
