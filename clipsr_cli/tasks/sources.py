"""Where ``batch``'s images come from: INPUT arguments, shards and captions (torch-free).

* :func:`discover` turns the INPUT arguments (folders, files, globs, ``@list.txt``, ``-``) into
  :class:`Source` s, each with the relative path its output gets under the output folder. Files
  that are not images (by extension: :data:`~clipsr_cli.io.formats.READ_EXTENSIONS`, the same set
  ``upscale`` reads), hidden files and files not matching ``glob`` are counted, never processed.
* :func:`parse_shard` / :func:`shard_of`: a file belongs to shard K of N by a hash of its
  relative path, so the split does not depend on the order the OS lists files, on the machine,
  or on files added between two array jobs starting.
* :func:`shard_from_env` / :func:`local_device`: ``shard='auto'`` and one GPU per process, from
  the variables that SLURM job arrays, Kubernetes indexed Jobs and ``torchrun`` set (pure
  functions of a mapping).
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
from typing import Callable, Mapping, Sequence, TextIO

from clipsr_cli.data.captions import CaptionTable, sidecar_captions
from clipsr_cli.errors import InputError, UsageError, log
from clipsr_cli.io.files import read_text_regular
from clipsr_cli.io.formats import READ_EXTENSIONS

__all__ = ["CaptionFn", "Discovery", "SHARD_COUNT_VAR", "Source", "caption_source", "discover",
           "images_below", "is_input_image", "local_device", "parse_shard", "resolve_shard",
           "shard_from_env", "shard_of", "sidecar_caption", "world_size"]

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
        return _list_entries(read_text_regular(listing, what="list file", encoding="utf-8-sig"))
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
        raise UsageError(f"`shard` must be K/N with 1 <= K <= N (e.g. 1/4) or auto, not "
                         f"{spec!r}", param="shard")
    return int(m.group(1)), int(m.group(2))


def shard_of(rel: PurePosixPath | str, n: int) -> int:
    """The shard (1..n) of a file: a hash of its relative path, independent of listing order
    and of which other files exist (files added between array jobs do not move any file)."""
    digest = hashlib.sha256(PurePosixPath(rel).as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


# -- schedulers -----------------------------------------------------------------------------------
#: Kubernetes sets only the index (``JOB_COMPLETION_INDEX``) of an indexed Job; the shard count
#: is this variable, which the Job sets from ``.spec.completions``.
SHARD_COUNT_VAR = "CLIPSR_SHARD_COUNT"
_AUTO = "`shard=auto`"


def _int(env: Mapping[str, str], name: str, *, low: int = 0) -> int:
    raw = env[name]
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = low - 1
    if value < low:
        raise UsageError(f"{_AUTO}: {name}={raw!r} is not a whole number >= {low}", param="shard")
    return value


def _slurm(env: Mapping[str, str]) -> tuple[int, int]:
    """(K, N) of a SLURM job array task: tasks MIN, MIN+STEP, ... are shards 1..COUNT."""
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    low = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    step = _int(env, "SLURM_ARRAY_TASK_STEP", low=1) if "SLURM_ARRAY_TASK_STEP" in env else 1
    if "SLURM_ARRAY_TASK_COUNT" in env:
        count = _int(env, "SLURM_ARRAY_TASK_COUNT", low=1)
    elif "SLURM_ARRAY_TASK_MAX" in env:
        count = (_int(env, "SLURM_ARRAY_TASK_MAX") - low) // step + 1
    else:
        raise UsageError(f"{_AUTO}: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT; "
                         "pass `shard=K/N`", param="shard")
    k, off = divmod(task - low, step)
    if off or not 0 <= k < count:
        raise UsageError(f"{_AUTO}: array task {task} is not one of {count} evenly spaced tasks "
                         f"from {low} (use --array=0-{count - 1}, or pass `shard=K/N`)",
                         param="shard")
    return k + 1, count


def _kubernetes(env: Mapping[str, str]) -> tuple[int, int]:
    index = _int(env, "JOB_COMPLETION_INDEX")
    if SHARD_COUNT_VAR not in env:
        raise UsageError(f"{_AUTO}: JOB_COMPLETION_INDEX is set but not {SHARD_COUNT_VAR} (set it "
                         "to the Job's .spec.completions), or pass `shard=K/N`", param="shard")
    count = _int(env, SHARD_COUNT_VAR, low=1)
    if index >= count:
        raise UsageError(f"{_AUTO}: JOB_COMPLETION_INDEX={index} is not below "
                         f"{SHARD_COUNT_VAR}={count}", param="shard")
    return index + 1, count


def world_size(env: Mapping[str, str]) -> int:
    """``WORLD_SIZE`` (torchrun's process count), 1 when unset or not a number."""
    try:
        return max(1, int(str(env.get("WORLD_SIZE", "1")).strip()))
    except ValueError:
        return 1


def shard_from_env(env: Mapping[str, str]) -> tuple[tuple[int, int], str] | None:
    """(K, N) for ``shard='auto'`` and the variables it came from; None when none is set.

    * SLURM job arrays: ``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` (divided by
      ``SLURM_ARRAY_TASK_STEP``) + 1 of ``SLURM_ARRAY_TASK_COUNT``;
    * Kubernetes indexed Jobs: ``JOB_COMPLETION_INDEX`` + 1 of :data:`SHARD_COUNT_VAR`;
    * ``torchrun`` (or any launcher of the ``torch.distributed`` kind): ``RANK`` + 1 of
      ``WORLD_SIZE``.

    A ``torchrun`` inside an array task / indexed Job splits that task's shard further (N =
    tasks × processes). UsageError for values that are not usable.
    """
    outer: list[tuple[tuple[int, int], str]] = []
    if "SLURM_ARRAY_TASK_ID" in env:
        outer.append((_slurm(env), "SLURM_ARRAY_TASK_ID"))
    if "JOB_COMPLETION_INDEX" in env:
        outer.append((_kubernetes(env), "JOB_COMPLETION_INDEX"))
    if len(outer) > 1:
        raise UsageError(f"{_AUTO}: both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set; "
                         "pass `shard=K/N`", param="shard")
    inner = None
    if "WORLD_SIZE" in env or "RANK" in env:
        if "WORLD_SIZE" not in env or "RANK" not in env:
            raise UsageError(f"{_AUTO}: RANK and WORLD_SIZE must be set together", param="shard")
        rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE", low=1)
        if rank >= size:
            raise UsageError(f"{_AUTO}: RANK={rank} is not below WORLD_SIZE={size}",
                             param="shard")
        inner = ((rank + 1, size), "RANK/WORLD_SIZE")
    if not outer and inner is None:
        return None
    if not outer:
        return inner
    (k, n), origin = outer[0]
    if inner is None:
        return (k, n), origin
    (r, size), _ = inner
    return ((k - 1) * size + r, n * size), f"{origin} × RANK/WORLD_SIZE"


def resolve_shard(shard, env: Mapping[str, str]) -> tuple[int, int] | None:
    """``shard``: K/N, ``'auto'`` (from the scheduler's variables), or None: ``'auto'`` when
    ``WORLD_SIZE`` > 1 (``torchrun``: each process its share), else every file."""
    if shard is None and world_size(env) > 1:
        shard = "auto"
    if not (isinstance(shard, str) and shard.strip().lower() == "auto"):
        return parse_shard(shard) if shard is not None else None
    found = shard_from_env(env)
    if found is None:
        raise UsageError("`shard=auto` needs SLURM_ARRAY_TASK_ID (a SLURM job array), "
                         "JOB_COMPLETION_INDEX with CLIPSR_SHARD_COUNT (a Kubernetes indexed Job) "
                         "or RANK and WORLD_SIZE (torchrun); none is set: pass `shard=K/N`",
                         param="shard")
    (k, n), origin = found
    log.info(f"shard {k}/{n} (from {origin})")
    return k, n


def local_device(device: str, env: Mapping[str, str], cuda_devices: int) -> str:
    """``device='auto'`` in one of several processes on a machine (``LOCAL_RANK`` set, as
    ``torchrun`` does): ``cuda:LOCAL_RANK`` (modulo the GPUs there are) when CUDA has any;
    anything else is returned as given."""
    if str(device).strip().lower() != "auto" or cuda_devices < 1 or "LOCAL_RANK" not in env:
        return device
    try:
        rank = int(str(env["LOCAL_RANK"]).strip())
    except ValueError:
        return device
    return f"cuda:{rank % cuda_devices}" if rank >= 0 else device


# -- captions -------------------------------------------------------------------------------------
def sidecar_caption(image: str | os.PathLike) -> str | None:
    """The first caption in ``NAME.txt`` (or ``NAME.EXT.txt``) beside ``image``; None if none."""
    return (sidecar_captions(image) or (None,))[0]


def check_caption_options(*, text: str | None = None, captions=None,
                          caption_sidecar: bool = False) -> None:
    if sum((bool(text), captions is not None, caption_sidecar)) > 1:
        raise UsageError("use only one of `text`, `captions` and `caption_sidecar`",
                         param="captions")


def caption_source(*, text: str | None = None, captions: str | os.PathLike | None = None,
                   caption_sidecar: bool = False) -> CaptionFn | None:
    """One of: the same ``text`` for all, a caption manifest, or sidecar files (or None)."""
    check_caption_options(text=text, captions=captions, caption_sidecar=caption_sidecar)
    if text:
        return lambda _source: text
    if captions is not None:
        table = CaptionTable.load(captions)
        return lambda source: table.first(source.path, source.rel)
    if caption_sidecar:
        return lambda source: sidecar_caption(source.path)
    return None
