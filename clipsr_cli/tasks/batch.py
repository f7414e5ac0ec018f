"""``clipsr batch``: many images, one model load.

The steps are plain functions that tests call directly:

* :func:`discover` turns the INPUT arguments (folders, files, globs, ``@list.txt``, ``-``) into
  :class:`Source` s, each with the relative path its output gets under OUTPUT_DIR. Files that are
  not images (by extension), hidden files and files not matching ``--glob`` are counted, never
  processed.
* :func:`parse_shard` / :func:`shard_of`: a file belongs to shard K of N by a hash of its
  relative path, so the split does not depend on the order the OS lists files, on the machine,
  or on files added between two array jobs starting.
* :class:`CaptionMap` (CSV / TSV / JSON Lines / JSON) and :func:`sidecar_caption`: where each
  file's caption comes from.
* :func:`plan_jobs` / :func:`remove_stale_parts`: destinations, and the temporary files a
  killed run left behind (``.NAME.XXXX.part``, written by ``imageio.write_image``).
* :func:`run_batch` ties them together: the model loads once (and not at all when there is
  nothing to do); decoding and encoding run on background threads so the model never waits on
  I/O; a file that fails is reported and the run goes on (unless ``fail_fast``).

Outputs are written atomically by :func:`clipsr_cli.io.images.write_image` (temporary file in the
destination folder, then rename), so a visible output is always complete.
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Literal, Sequence, TextIO

from clipsr_cli.cli.console import err_console, info, state, warn
from clipsr_cli.errors import InputError

ExistingPolicy = Literal["fail", "skip", "overwrite"]
"""What happens to a file whose output exists: ``fail`` (default: reported as failed, the file
is left alone), ``skip`` (``--skip-existing``) or ``overwrite`` (``--overwrite``)."""
Status = Literal["done", "skipped", "failed", "not-run"]
CaptionFn = Callable[["Source"], "str | None"]

REPORT_VERSION = 1
#: Decoded inputs waiting for the model, and encoded outputs waiting for the disk, per I/O thread.
_QUEUE_PER_THREAD = 2
#: Upscaled images (quantised arrays) that may wait for the writer threads, in bytes; at least
#: one always may, whatever its size.
_MAX_PENDING_WRITE_BYTES = 1 << 30


# -- discovery ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input image."""

    path: Path  # the file, as found (for reading and messages)
    rel: PurePosixPath  # its place under OUTPUT_DIR: the folder-relative path of a file found
    #                     by walking a folder, else just its name; also the shard key


@dataclass(frozen=True)
class Discovery:
    sources: tuple[Source, ...]  # image files, deduplicated, in the order found
    ignored: tuple[Path, ...]  # not images, hidden, or not matching --glob: skipped quietly
    missing: tuple[str, ...]  # entries of a list file / stdin that do not exist (they fail)


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[") and not Path(arg).expanduser().exists()


def _glob_selects(rel: PurePosixPath, pattern: str) -> bool:
    """``--glob``: matched (case-insensitively) against the file name, or against the path
    relative to the walked folder when the pattern contains a ``/``."""
    target = rel.as_posix() if "/" in pattern else rel.name
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


def _list_entries(text: str) -> list[str]:
    """Paths of a list file / stdin: one per line (or NUL-separated, as ``find -print0``
    writes); blank lines and lines starting with ``#`` are skipped."""
    parts = text.split("\0") if "\0" in text else text.splitlines()
    return [p.strip() for p in parts if p.strip() and not p.strip().startswith("#")]


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
    skip_dir = Path(exclude).expanduser().resolve() if exclude is not None else None
    used_stdin = False

    def add_file(path: Path, rel: PurePosixPath) -> None:
        from clipsr_cli.io.images import is_image_path

        if not is_image_path(path):
            ignored.append(path)
            return
        found.setdefault(path.resolve(), Source(path, rel))

    def add_dir(top: Path) -> None:
        for root, dirs, files in os.walk(top):
            here = Path(root)
            if recursive:
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and (skip_dir is None or (here / d).resolve() != skip_dir))
            else:
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
        if arg == "-":
            if used_stdin:
                raise InputError("'-' (paths on stdin) can be given only once")
            used_stdin = True
            entries = _list_entries((stdin or sys.stdin).read())
        elif arg.startswith("@") and len(arg) > 1:
            listing = Path(arg[1:]).expanduser()
            try:
                entries = _list_entries(listing.read_text(encoding="utf-8-sig"))
            except FileNotFoundError:
                raise InputError(f"list file {listing} does not exist; check the path "
                                 "after @") from None
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"cannot read list file {listing} ({e}); it must be UTF-8 "
                                 "text with one path per line") from None
        else:
            entries = None
        if entries is not None:
            for entry in entries:
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
    return Discovery(tuple(found.values()), tuple(ignored), tuple(missing))


# -- sharding -------------------------------------------------------------------------------------
def parse_shard(spec: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) → (K, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), not {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_of(rel: PurePosixPath | str, n: int) -> int:
    """The shard (1..n) of a file: a hash of its relative path, independent of listing order
    and of which other files exist (files added between array jobs do not move any file)."""
    digest = hashlib.sha256(PurePosixPath(rel).as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


# -- captions -------------------------------------------------------------------------------------
_PATH_KEYS = ("path", "file", "file_name", "filename", "image", "image_path")
_CAPTION_KEYS = ("caption", "text", "prompt")


@dataclass(frozen=True)
class CaptionMap:
    """Captions by image path, read from a CSV/TSV (``path,caption``; a header row naming the
    columns is optional), JSON Lines (objects with ``path``/``file_name`` and ``caption``/
    ``text``; a Hugging Face ``metadata.jsonl`` works) or JSON file (``{path: caption}``).

    A file matches an entry by absolute path (relative entries are taken relative to the map's
    folder, then to the working directory), else by its path relative to the walked input
    folder, else by its file name.
    """

    by_abs: dict[str, str]
    by_rel: dict[str, str]
    source: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionMap":
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise InputError(f"caption file {path} does not exist; check --captions") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read caption file {path} ({e}); it must be UTF-8 "
                             "text") from None
        ext = path.suffix.lower()
        if ext in (".csv", ".tsv"):
            rows = _csv_rows(text, path, "\t" if ext == ".tsv" else ",")
        elif ext in (".jsonl", ".ndjson"):
            rows = _jsonl_rows(text, path)
        elif ext == ".json":
            rows = _json_rows(text, path)
        else:
            raise InputError(f"caption file {path}: unknown type {ext or '(none)'}; use .csv, "
                             ".tsv, .jsonl or .json")
        by_abs: dict[str, str] = {}
        by_rel: dict[str, str] = {}
        seen: dict[str, tuple[str, str]] = {}
        for where, key, caption in rows:
            norm = os.path.normpath(key.replace("\\", "/"))
            if norm in seen and seen[norm][1] != caption:
                raise InputError(f"{where}: {key} already has another caption "
                                 f"({seen[norm][0]}); keep one")
            seen[norm] = (where, caption)
            p = Path(norm).expanduser()
            if p.is_absolute():
                by_abs[str(p.resolve())] = caption
            else:
                by_rel[PurePosixPath(Path(norm).as_posix()).as_posix()] = caption
                by_abs.setdefault(str((path.parent / p).resolve()), caption)
                by_abs.setdefault(str(p.resolve()), caption)
        return cls(by_abs, by_rel, str(path))

    def caption_for(self, source: Source) -> str | None:
        hit = self.by_abs.get(str(source.path.resolve()))
        if hit is None:
            hit = self.by_rel.get(source.rel.as_posix())
        if hit is None:
            hit = self.by_rel.get(source.path.name)
        return hit or None

    def __call__(self, source: Source) -> str | None:
        return self.caption_for(source)


def _csv_rows(text: str, path: Path, delimiter: str) -> Iterable[tuple[str, str, str]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    pcol, ccol = 0, 1
    first = True
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if first:  # an optional header row naming the columns
            first = False
            names = [c.strip().lower() for c in row]
            pk = next((names.index(k) for k in _PATH_KEYS if k in names), None)
            ck = next((names.index(k) for k in _CAPTION_KEYS if k in names), None)
            if pk is not None and ck is not None:
                pcol, ccol = pk, ck
                continue
        if len(row) <= max(pcol, ccol) or not row[pcol].strip():
            raise InputError(f"{path}:{line}: expected a path and a caption, got {row!r}")
        yield f"{path}:{line}", row[pcol].strip(), " ".join(row[ccol].split())


def _pick(obj: dict, keys: tuple[str, ...]) -> object:
    return next((obj[k] for k in keys if k in obj), None)


def _jsonl_rows(text: str, path: Path) -> Iterable[tuple[str, str, str]]:
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{line}: not valid JSON ({e.msg})") from None
        key = _pick(obj, _PATH_KEYS) if isinstance(obj, dict) else None
        caption = _pick(obj, _CAPTION_KEYS) if isinstance(obj, dict) else None
        if not isinstance(key, str) or not key or not isinstance(caption, str):
            raise InputError(f"{path}:{line}: expected an object with \"path\" (or "
                             "\"file_name\") and \"caption\" (or \"text\") strings")
        yield f"{path}:{line}", key, " ".join(caption.split())


def _json_rows(text: str, path: Path) -> Iterable[tuple[str, str, str]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise InputError(f"{path}: expected a JSON object {{\"path\": \"caption\", ...}}; use "
                         ".jsonl for one object per line")
    for key, caption in obj.items():
        yield f"{path} ({key})", key, " ".join(caption.split())


def sidecar_caption(image: str | os.PathLike) -> str | None:
    """The caption in ``NAME.txt`` (or ``NAME.EXT.txt``) beside ``image``; None if there is none
    or it is empty. Whitespace (newlines included) is collapsed to single spaces."""
    image = Path(image)
    for cand in (image.with_suffix(".txt"), image.with_name(image.name + ".txt")):
        try:
            text = cand.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            continue
        except UnicodeDecodeError:
            raise InputError(f"caption file {cand} is not UTF-8 text; re-save it as "
                             "UTF-8") from None
        except OSError as e:
            raise InputError(f"cannot read caption file {cand}: {e.strerror or e}") from None
        return " ".join(text.split()) or None
    return None


def caption_source(*, text: str | None = None, captions: str | os.PathLike | None = None,
                   sidecar: bool = False) -> CaptionFn | None:
    """One of: the same ``text`` for all, a :class:`CaptionMap`, or sidecar files."""
    if sum(x for x in (bool(text), captions is not None, sidecar)) > 1:
        raise InputError("use only one of --text, --captions and --caption-sidecar")
    if text:
        return lambda _source: text
    if captions is not None:
        return CaptionMap.load(captions)
    if sidecar:
        return lambda source: sidecar_caption(source.path)
    return None


# -- planning -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    source: Source
    dest: Path


@dataclass(frozen=True)
class FileResult:
    """What happened to one input (one entry of ``--report``)."""

    input: str
    output: str | None
    status: Status
    reason: str | None = None  # why it failed / was skipped
    caption: str | None = None
    seconds: float | None = None  # in the model

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def plan_jobs(sources: Iterable[Source], *, output_dir: str | os.PathLike, scale: int,
              format: str | None = None, suffix: str | None = None) -> list[Job]:
    """Destination of each source: OUTPUT_DIR / rel.parent / ``<stem>_x<scale>.<ext>``."""
    from clipsr_cli.io.images import output_path_for

    out = Path(output_dir)
    return [Job(s, out / s.rel.parent / output_path_for(s.rel.name, scale, format=format,
                                                        suffix=suffix).name) for s in sources]


def is_part_of(name: str, dest_name: str) -> bool:
    """True if ``name`` is a temporary file of an atomic write of ``dest_name``
    (``.DEST.XXXX.part``)."""
    return (name.startswith(f".{dest_name}.") and name.endswith(".part")
            and len(name) > len(dest_name) + 7)


def remove_stale_parts(dests: Iterable[Path]) -> list[Path]:
    """Delete temporary files that a killed run left for these outputs; return them.

    Only the temporaries of ``dests`` are touched: another shard writing into the same folder at
    the same moment owns different outputs, so its temporaries are never removed.
    """
    by_dir: dict[Path, set[str]] = {}
    for d in dests:
        by_dir.setdefault(d.parent, set()).add(d.name)
    removed = []
    for folder, names in by_dir.items():
        try:
            entries = [e for e in os.scandir(folder) if e.name.startswith(".")
                       and e.name.endswith(".part") and e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        for e in entries:
            # the name is ".<dest>.<random>.part"; <random> has no dot
            dest_name = e.name[1:-len(".part")].rpartition(".")[0]
            if dest_name in names and is_part_of(e.name, dest_name):
                try:
                    os.unlink(e.path)
                except FileNotFoundError:
                    continue
                removed.append(Path(e.path))
    return removed


# -- results --------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    files: list[FileResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # not images / hidden / not --glob
    other_shards: int = 0  # images left to the other --shard runs
    stale_removed: int = 0  # temporary files of a killed run, deleted
    model: str | None = None
    scale: int | None = None
    seconds: float = 0.0  # wall time of the processing (after the model loaded)
    interrupted: bool = False  # Ctrl-C
    stopped: bool = False  # --fail-fast stopped at the first failure

    def count(self, status: Status) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    @property
    def images_per_second(self) -> float | None:
        done = self.count("done")
        return done / self.seconds if done and self.seconds > 0 else None

    def counts(self) -> dict[str, int]:
        return {"images": len(self.files), "done": self.count("done"),
                "skipped": self.count("skipped"), "failed": self.count("failed"),
                "not_run": self.count("not-run"), "ignored": len(self.ignored),
                "other_shards": self.other_shards, "stale_removed": self.stale_removed}

    def to_json(self) -> dict:
        ips = self.images_per_second
        return {"version": REPORT_VERSION, "model": self.model, "scale": self.scale,
                "counts": self.counts(), "seconds": round(self.seconds, 3),
                "images_per_second": round(ips, 3) if ips else None,
                "interrupted": self.interrupted, "stopped_by_fail_fast": self.stopped,
                "files": [f.to_json() for f in self.files], "ignored": self.ignored}


def write_report(path: str | os.PathLike, result: BatchResult) -> Path:
    """``--report``: the summary and every file's outcome as JSON (written atomically)."""
    from clipsr_cli.model.checkpoint import atomic_write_bytes

    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"folder of the report {path} does not exist; create it first")
    data = json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, data.encode("utf-8"))
    return path


def _reason_line(f: FileResult) -> str:
    reason = f.reason or "failed"
    return reason if f.input in reason else f"{f.input}: {reason}"


EXISTS = "output exists; pass --skip-existing to keep it or --overwrite to replace it"
_MAX_LISTED = 20  # failures listed in the summary; --report has them all


def print_summary(result: BatchResult) -> None:
    """The end-of-run summary on stderr (failures even with --quiet)."""
    c = result.counts()
    if not state.quiet:
        parts = [f"{c['done']} done", f"{c['skipped']} skipped (output exists)",
                 f"{c['failed']} failed"]
        if c["not_run"]:
            parts.append(f"{c['not_run']} not run")
        if c["ignored"]:
            parts.append(f"{c['ignored']} not images (ignored)")
        if c["other_shards"]:
            parts.append(f"{c['other_shards']} in other shards")
        if c["stale_removed"]:
            parts.append(f"{c['stale_removed']} stale partial files removed")
        ips = result.images_per_second
        speed = f" · {result.seconds:.1f} s, {ips:.2f} images/s" if ips else ""
        err_console.print(f"batch: {' · '.join(parts)}{speed}", highlight=False, soft_wrap=True)
    failed = result.failed
    if failed:
        err_console.print(f"[bold red]failed ({len(failed)}):[/]", highlight=False)
        exists = [f for f in failed if f.reason == EXISTS]
        others = [f for f in failed if f.reason != EXISTS]
        for f in others[:_MAX_LISTED]:
            err_console.print(f"  {_reason_line(f)}", highlight=False, soft_wrap=True,
                              markup=False)
        if len(others) > _MAX_LISTED:
            err_console.print(f"  … and {len(others) - _MAX_LISTED} more (--report lists them "
                              "all)", highlight=False)
        if exists:
            err_console.print(f"  {len(exists)} output(s) exist, e.g. {exists[0].output}; pass "
                              "--skip-existing to keep them or --overwrite to replace them",
                              highlight=False, soft_wrap=True, markup=False)
    if result.interrupted:
        err_console.print("[yellow]interrupted[/]: run again with --skip-existing to continue",
                          highlight=False)
    elif result.stopped:
        err_console.print("[yellow]stopped at the first failure (--fail-fast)[/]",
                          highlight=False)


# -- running --------------------------------------------------------------------------------------
class _Inline:
    """An executor that runs each task at once in the calling thread (``io_threads=0``)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as e:  # delivered through the future, like a thread pool does
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _Display:
    """Rich progress on stderr: files done / total, current file (+ tile), images/s, ETA.
    Only on a terminal and without --quiet."""

    def __init__(self, total: int):
        self.bar = None
        if state.quiet or not err_console.is_terminal or total == 0:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TextColumn, TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s")

        self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), Rate(),
                            TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                            console=err_console, transient=True)
        self.task = self.bar.add_task("batch", total=total, current="")

    def __enter__(self) -> "_Display":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def current(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, current=name)

    def tiles(self, name: str) -> Callable[[int, int], None] | None:
        if self.bar is None:
            return None
        return lambda done, total: self.bar.update(self.task,
                                                   current=f"{name} (tile {done}/{total})")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)


def _file_errors() -> tuple[type[BaseException], ...]:
    """Failures that belong to one file; anything else (a bug, a broken model) ends the run."""
    import torch

    return (InputError, OSError, MemoryError, torch.cuda.OutOfMemoryError)


def _reason(e: BaseException) -> str:
    if isinstance(e, InputError):
        return str(e)
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return "out of memory; use a smaller --tile (e.g. --tile 128)"
    return f"{type(e).__name__}: {e}"


def _read(job: Job, captions: CaptionFn | None):
    from clipsr_cli.io.images import read_image

    image = read_image(job.source.path)
    return image, (captions(job.source) if captions is not None else None)


def _write(job: Job, rgb, alpha, image, *, quality: int, overwrite: bool) -> Path:
    from clipsr_cli.io.images import write_image

    job.dest.parent.mkdir(parents=True, exist_ok=True)
    return write_image(job.dest, rgb, alpha, like=image, quality=quality, overwrite=overwrite)


def execute(jobs: Sequence[Job], up, *, captions: CaptionFn | None = None, quality: int = 95,
            overwrite: bool = False, fail_fast: bool = False, io_threads: int = 2,
            on_result: Callable[[FileResult], None] | None = None) -> tuple[list[FileResult], bool]:
    """Upscale ``jobs`` with the loaded ``up``: returns (results in job order, interrupted).

    With ``io_threads`` > 0, reading + decoding (and the caption) of the next files and encoding +
    writing of finished ones run on two pools of that many threads, with bounded queues, while
    the model works in this thread. With 0 everything runs here, one step after the other.
    A file that fails is recorded and the run goes on, unless ``fail_fast``; then (and on
    Ctrl-C) files not started are recorded as ``not-run``.
    """
    from clipsr_cli.infer.engine import upscale_alpha

    errors = _file_errors()
    depth = max(1, io_threads * _QUEUE_PER_THREAD)
    readers = ThreadPoolExecutor(io_threads, "clipsr-read") if io_threads else _Inline()
    writers = ThreadPoolExecutor(io_threads, "clipsr-write") if io_threads else _Inline()
    results: dict[int, FileResult] = {}
    reads: deque[tuple[int, Future]] = deque()
    writes: deque[tuple[int, Future, int, str | None, float]] = deque()
    pending_bytes = 0
    todo = iter(enumerate(jobs))
    stop = interrupted = False
    display = _Display(len(jobs))

    def record(i: int, r: FileResult) -> None:
        nonlocal stop
        results[i] = r
        display.advance()
        if r.status == "failed":
            err_console.print(f"[bold red]failed:[/] {_reason_line(r)}", highlight=False,
                              soft_wrap=True)
            stop = stop or fail_fast
        elif state.verbose:
            info(f"{r.input} → {r.output} ({r.seconds:.2f} s)")
        if on_result is not None:
            on_result(r)

    def collect(block: bool) -> None:
        """Record finished writes (oldest first); when ``block``, wait for the oldest."""
        nonlocal pending_bytes
        while writes and (writes[0][1].done() or block):
            i, fut, nbytes, caption, secs = writes.popleft()
            block = False
            pending_bytes -= nbytes
            job = jobs[i]
            try:
                fut.result()
            except errors as e:
                record(i, FileResult(str(job.source.path), str(job.dest), "failed", _reason(e),
                                     caption))
            else:
                record(i, FileResult(str(job.source.path), str(job.dest), "done", None, caption,
                                     round(secs, 3)))

    def fill() -> None:
        while len(reads) < depth and not stop:
            nxt = next(todo, None)
            if nxt is None:
                return
            reads.append((nxt[0], readers.submit(_read, nxt[1], captions)))

    try:
        with display:
            fill()
            while reads and not stop:
                i, fut = reads.popleft()
                job = jobs[i]
                fill()
                caption = None
                try:
                    image, caption = fut.result()
                    display.current(job.source.rel.as_posix())
                    t0 = time.perf_counter()
                    rgb = up.upscale_array(image.rgb, caption, bit_depth=image.bit_depth,
                                           progress=display.tiles(job.source.rel.as_posix()))
                    alpha = (upscale_alpha(image.alpha, up.scale) if image.alpha is not None
                             else None)
                    secs = time.perf_counter() - t0
                except errors as e:
                    record(i, FileResult(str(job.source.path), str(job.dest), "failed",
                                         _reason(e), caption))
                    collect(block=False)
                    continue
                nbytes = rgb.nbytes + (alpha.numel() * 4 if alpha is not None else 0)
                while writes and (len(writes) >= depth
                                  or pending_bytes + nbytes > _MAX_PENDING_WRITE_BYTES):
                    collect(block=True)
                writes.append((i, writers.submit(_write, job, rgb, alpha, image, quality=quality,
                                                 overwrite=overwrite), nbytes, caption, secs))
                pending_bytes += nbytes
                del rgb, alpha, image
                collect(block=False)
            while writes:
                collect(block=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for _, fut in reads:
            fut.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)  # writes in flight finish (or fail) atomically
    if interrupted:
        while writes:
            try:
                collect(block=True)
            except KeyboardInterrupt:
                break
    ordered = []
    for i, job in enumerate(jobs):
        ordered.append(results.get(i) or FileResult(str(job.source.path), str(job.dest),
                                                    "not-run"))
    return ordered, interrupted


def _checkpoint_scale(model: str) -> int | None:
    """The scale stored in a ``.safetensors`` checkpoint's header (without loading weights),
    so that a run with nothing left to do never loads the model; None if not readable here
    (loading the model then reports what is wrong)."""
    p = Path(model).expanduser()
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < (64 << 20):
                return None
            header = json.loads(f.read(n))
        scale = json.loads(header["__metadata__"]["config"])["scale"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return scale if isinstance(scale, int) else None


def run_batch(*, inputs: Sequence[str], output_dir: str | os.PathLike, recursive: bool = False,
              glob: str | None = None, text: str | None = None,
              captions: str | os.PathLike | None = None, caption_sidecar: bool = False,
              existing: ExistingPolicy = "fail", fail_fast: bool = False,
              shard: tuple[int, int] | None = None, format: str | None = None,
              suffix: str | None = None, quality: int = 95, io_threads: int = 2,
              model: str | None = None, scale: int | None = None, device: str = "auto",
              precision: str = "auto", tile: str | int = "auto", tile_overlap: int | None = None,
              upscaler=None, stdin: TextIO | None = None,
              on_result: Callable[[FileResult], None] | None = None) -> BatchResult:
    """Upscale every image of ``inputs`` into ``output_dir``; never raises for one bad file.

    ``existing`` decides about outputs that exist: ``fail`` (reported as failed, left alone),
    ``skip`` or ``overwrite``. An output is never written over its own input. ``upscaler``: an
    already loaded :class:`~clipsr_cli.infer.engine.Upscaler` (else one is loaded from ``model`` etc.,
    and only if some file needs it). Raises InputError / ModelError for problems of the whole run
    (a missing input argument, a bad caption file, a model that cannot load).
    """
    from clipsr_cli.tasks.upscale import DEFAULT_SCALE, load_upscaler

    if existing not in ("fail", "skip", "overwrite"):
        raise ValueError(f"existing must be fail, skip or overwrite, not {existing!r}")
    if io_threads < 0:
        raise InputError("--io-threads must be 0 or more")
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; -o takes a folder")
    found = discover(inputs, recursive=recursive, glob=glob, exclude=out, stdin=stdin)
    caption_fn = caption_source(text=text, captions=captions, sidecar=caption_sidecar)
    result = BatchResult(ignored=[str(p) for p in found.ignored])
    result.files.extend(FileResult(m, None, "failed", f"{m} does not exist; check the list")
                        for m in found.missing)

    def load():
        return load_upscaler(model=model, scale=scale, device=device, precision=precision,
                             tile=tile, tile_overlap=tile_overlap)

    up = upscaler
    planned_scale = up.scale if up is not None else (
        scale or (DEFAULT_SCALE if model is None else _checkpoint_scale(model)))
    if planned_scale is None:
        up = load()
        planned_scale = up.scale
    result.scale = planned_scale
    result.model = getattr(up, "name", None) or model

    every = plan_jobs(found.sources, output_dir=out, scale=planned_scale, format=format,
                      suffix=suffix)
    outputs = {j.dest.resolve() for j in every}
    todo: list[Job] = []
    claimed: dict[Path, str] = {}
    for job in every:
        src = job.source.path.resolve()
        if src in outputs:  # an output of this batch (from an earlier run into the same folder)
            result.ignored.append(str(job.source.path))
            continue
        if shard is not None and shard_of(job.source.rel, shard[1]) != shard[0]:
            result.other_shards += 1
            continue
        dest = job.dest.resolve()
        entry = (str(job.source.path), str(job.dest))
        if dest == src:
            result.files.append(FileResult(*entry, "failed", "the output would replace the "
                                           "input; pass --suffix or another -o"))
        elif dest in claimed:
            result.files.append(FileResult(*entry, "failed", f"same output as {claimed[dest]}; "
                                           "rename one of them or process them separately"))
        elif job.dest.exists() and existing != "overwrite":
            if existing == "skip":
                result.files.append(FileResult(*entry, "skipped", "output exists"))
            else:
                result.files.append(FileResult(*entry, "failed", EXISTS))
        else:
            todo.append(job)
        claimed.setdefault(dest, str(job.source.path))
    in_shard = [Path(f.output) for f in result.files if f.output] + [j.dest for j in todo]
    result.stale_removed = len(remove_stale_parts(in_shard))
    for f in result.failed:
        if f.reason == EXISTS:
            continue  # one line for all of them in the summary
        err_console.print(f"[bold red]failed:[/] {_reason_line(f)}", highlight=False,
                          soft_wrap=True)
    if result.failed and fail_fast:
        result.stopped = True
        result.files.extend(FileResult(str(j.source.path), str(j.dest), "not-run") for j in todo)
        return result
    if not todo:
        if not result.files and not state.quiet:
            warn("no images to process" + (f" in this shard ({shard[0]}/{shard[1]})"
                                            if shard and result.other_shards else ""))
        return result

    if up is None:
        up = load()
    result.model = getattr(up, "name", None) or model
    if up.scale != planned_scale:  # pragma: no cover - the header and the loaded model agree
        raise InputError(f"model scale ×{up.scale} differs from the planned ×{planned_scale}")
    if caption_fn is not None and not up.info.text_conditioned:
        warn(f"model {up.name} is not text-conditioned; the captions are ignored")
    t0 = time.perf_counter()
    done, result.interrupted = execute(todo, up, captions=caption_fn, quality=quality,
                                       overwrite=existing == "overwrite", fail_fast=fail_fast,
                                       io_threads=io_threads, on_result=on_result)
    result.seconds = time.perf_counter() - t0
    result.files.extend(done)
    result.stopped = (fail_fast and not result.interrupted
                      and any(f.status == "failed" for f in done))
    return result
