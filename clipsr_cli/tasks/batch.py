"""``batch``: many images, one model load.

* Inputs, shards and captions: :mod:`clipsr_cli.tasks.sources` (re-exported here).
* :func:`plan_jobs`: destinations (the output policy's names, :mod:`clipsr_cli.io.outputs`).
* :func:`execute`: the model loads once; decoding and encoding run on background threads so the
  model never waits on I/O; a file that fails is reported and the run goes on (unless
  ``fail_fast``).
* :func:`run_batch` ties them together; the model is not loaded at all when there is nothing to
  do. Temporary files a killed run left behind are removed (only stale ones:
  :func:`clipsr_cli.io.atomic.remove_stale_temporaries`), never those of a run still writing.

Outputs are written atomically by :func:`clipsr_cli.io.images.write_image`, so a visible output
is always complete. Nothing here prints: the run reports :class:`BatchEvent` s to ``on_event``
and notes through :data:`clipsr_cli.errors.log`; the CLI draws them.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from clipsr_cli.errors import InputError, OutputExistsError, UsageError, log
from clipsr_cli.io.atomic import remove_stale_temporaries
from clipsr_cli.io.outputs import output_path_for
from clipsr_cli.tasks.batch_report import (EXISTS, REPORT_VERSION, BatchEvent, BatchResult,
                                           EventFn, FileResult, write_report)
from clipsr_cli.tasks.sources import (CaptionFn, Discovery, Source, caption_source, discover,
                                      images_below, parse_shard, shard_of, sidecar_caption)

__all__ = ["BatchEvent", "BatchResult", "CaptionFn", "Discovery", "FileResult", "Job",
           "REPORT_VERSION", "Source", "caption_source", "discover", "execute", "parse_shard",
           "plan_jobs", "run_batch", "shard_of", "sidecar_caption", "write_report"]

#: Decoded inputs waiting for the model, and encoded outputs waiting for the disk, per I/O thread.
_QUEUE_PER_THREAD = 2
#: Upscaled images (quantised arrays) that may wait for the writer threads, in bytes; at least
#: one always may, whatever its size.
_MAX_PENDING_WRITE_BYTES = 1 << 30


@dataclass(frozen=True)
class Job:
    source: Source
    dest: Path


def plan_jobs(sources: Iterable[Source], *, output_dir: str | os.PathLike, scale: int,
              format: str | None = None, suffix: str | None = None) -> list[Job]:
    """Destination of each source: OUTPUT_DIR / rel.parent / ``<stem>_x<scale>.<ext>``."""
    out = Path(output_dir)
    return [Job(s, out / s.rel.parent / output_path_for(s.rel.name, scale, format=format,
                                                        suffix=suffix).name) for s in sources]


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


def _file_errors() -> tuple[type[BaseException], ...]:
    """Failures that belong to one file; anything else (a bug, a broken model) ends the run."""
    import torch

    return (InputError, OSError, MemoryError, torch.cuda.OutOfMemoryError)


def _reason(e: BaseException) -> str:
    if isinstance(e, InputError):
        return str(e)
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return "out of memory; use a smaller `tile` (e.g. `tile=128`)"
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
            overwrite: bool = False, skip_existing: bool = False, fail_fast: bool = False,
            io_threads: int = 2, on_event: EventFn | None = None
            ) -> tuple[list[FileResult], bool]:
    """Upscale ``jobs`` with the loaded ``up``: returns (results in job order, interrupted).

    With ``io_threads`` > 0, reading + decoding (and the caption) of the next files and encoding +
    writing of finished ones run on two pools of that many threads, with bounded queues, while
    the model works in this thread. With 0 everything runs here, one step after the other.
    A file that fails is recorded and the run goes on, unless ``fail_fast``; then (and on
    Ctrl-C) files not started are recorded as ``not-run``. With ``skip_existing`` an output
    that another process wrote meanwhile is ``skipped``, never replaced.
    """
    emit = on_event or (lambda event: None)
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

    def record(i: int, r: FileResult) -> None:
        nonlocal stop
        results[i] = r
        stop = stop or (fail_fast and r.status == "failed")
        emit(BatchEvent("result", result=r))

    def entry(i: int) -> tuple[str, str]:
        return str(jobs[i].source.path), str(jobs[i].dest)

    def appeared(i: int, caption: str | None) -> FileResult:
        if skip_existing:
            return FileResult(*entry(i), "skipped", "output exists", caption)
        return FileResult(*entry(i), "failed", EXISTS, caption, exists=True)

    def collect(block: bool) -> None:
        """Record finished writes (oldest first); when ``block``, wait for the oldest."""
        nonlocal pending_bytes
        while writes and (writes[0][1].done() or block):
            i, fut, nbytes, caption, secs = writes.popleft()
            block = False
            pending_bytes -= nbytes
            try:
                fut.result()
            except OutputExistsError:  # written meanwhile by someone else
                record(i, appeared(i, caption))
            except errors as e:
                record(i, FileResult(*entry(i), "failed", _reason(e), caption))
            else:
                record(i, FileResult(*entry(i), "done", None, caption, round(secs, 3)))

    def fill() -> None:
        while len(reads) < depth and not stop:
            nxt = next(todo, None)
            if nxt is None:
                return
            reads.append((nxt[0], readers.submit(_read, nxt[1], captions)))

    emit(BatchEvent("start", total=len(jobs)))
    try:
        fill()
        while reads and not stop:
            i, fut = reads.popleft()
            job = jobs[i]
            fill()
            caption = None
            name = job.source.rel.as_posix()
            try:
                image, caption = fut.result()
                if skip_existing and job.dest.exists():
                    record(i, appeared(i, caption))
                    continue
                emit(BatchEvent("file", name=name))
                t0 = time.perf_counter()
                rgb, alpha = up.upscale_image(image, caption, progress=lambda d, t, n=name: emit(
                    BatchEvent("tiles", name=n, done=d, total=t)))
                secs = time.perf_counter() - t0
            except errors as e:
                record(i, FileResult(*entry(i), "failed", _reason(e), caption))
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
    ordered = [results.get(i) or FileResult(*entry(i), "not-run") for i in range(len(jobs))]
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


def _plan(found: Discovery, every: list[Job], result: BatchResult, *, shard, skip_existing: bool,
          overwrite: bool) -> list[Job]:
    """Decide each job before the model runs: to do, skipped, refused or in another shard."""
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
                                           "input; pass `suffix` or another `output`"))
        elif dest in claimed:
            result.files.append(FileResult(*entry, "failed", f"same output as {claimed[dest]}; "
                                           "rename one of them or process them separately"))
        elif job.dest.exists() and not overwrite:
            if skip_existing:
                result.files.append(FileResult(*entry, "skipped", "output exists"))
            else:
                result.files.append(FileResult(*entry, "failed", EXISTS, exists=True))
        else:
            todo.append(job)
        claimed.setdefault(dest, str(job.source.path))
    return todo


def run_batch(*, inputs: Sequence[str], output_dir: str | os.PathLike, recursive: bool = False,
              glob: str | None = None, text: str | None = None,
              captions: str | os.PathLike | None = None, caption_sidecar: bool = False,
              skip_existing: bool = False, overwrite: bool = False, fail_fast: bool = False,
              shard: str | tuple[int, int] | None = None, format: str | None = None,
              suffix: str | None = None, quality: int = 95, io_threads: int = 2,
              model: str | None = None, scale: int | None = None, device: str = "auto",
              precision: str = "auto", tile: str | int = "auto", tile_overlap: int | None = None,
              upscaler=None, stdin: TextIO | None = None,
              on_event: EventFn | None = None) -> BatchResult:
    """Upscale every image of ``inputs`` into ``output_dir``; never raises for one bad file.

    An output that exists is skipped with ``skip_existing``, replaced with ``overwrite``, else
    reported as failed and left alone; an output is never written over its own input.
    ``upscaler``: an already loaded :class:`~clipsr_cli.infer.engine.Upscaler` (else one is
    loaded from ``model`` etc., and only if some file needs it). Raises UsageError for option
    values that can never work, InputError / DataError / ModelError for problems of the whole
    run (a missing input argument, a bad caption file, a model that cannot load).
    """
    from clipsr_cli.tasks.upscale import DEFAULT_SCALE, check_options, load_upscaler

    emit = on_event or (lambda event: None)
    if skip_existing and overwrite:
        raise UsageError("use either `skip_existing=True` or `overwrite=True`, not both",
                         param="skip_existing")
    if io_threads < 0:
        raise UsageError("`io_threads` must be 0 or more", param="io_threads")
    check_options(scale=scale, device=device, precision=precision, tile=tile,
                  tile_overlap=tile_overlap, format=format, quality=quality)
    shard = parse_shard(shard) if shard is not None else None
    if suffix is not None:
        output_path_for("x.png", 1, suffix=suffix)  # a bad suffix fails before any work
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; `output` takes a folder")
    caption_fn = caption_source(text=text, captions=captions, caption_sidecar=caption_sidecar)
    found = discover(inputs, recursive=recursive, glob=glob, exclude=out, stdin=stdin)
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
    todo = _plan(found, every, result, shard=shard, skip_existing=skip_existing,
                 overwrite=overwrite)
    in_shard = [Path(f.output) for f in result.files if f.output] + [j.dest for j in todo]
    result.stale_removed = len(remove_stale_temporaries(in_shard))
    for f in result.files:
        emit(BatchEvent("result", result=f, planned=True))
    if result.failed and fail_fast:
        result.stopped = True
        result.files.extend(FileResult(str(j.source.path), str(j.dest), "not-run") for j in todo)
        return result
    if not todo:
        if not result.files:
            where = f" in this shard ({shard[0]}/{shard[1]})" if shard and result.other_shards else ""
            hidden = images_below(found.unwalked) if not found.sources else 0
            hint = (f" ({hidden} image{'s' * (hidden != 1)} in sub-folders; add "
                    "`recursive=True`)" if hidden else "")
            log.warning(f"no images to process{where}{hint}")
        return result

    if up is None:
        up = load()
    result.model = getattr(up, "name", None) or model
    if up.scale != planned_scale:  # pragma: no cover - the header and the loaded model agree
        raise InputError(f"model scale ×{up.scale} differs from the planned ×{planned_scale}")
    if caption_fn is not None and not up.info.text_conditioned:
        log.warning(f"model {up.name} is not text-conditioned; the captions are ignored")
    t0 = time.perf_counter()
    done, result.interrupted = execute(todo, up, captions=caption_fn, quality=quality,
                                       overwrite=overwrite, skip_existing=skip_existing,
                                       fail_fast=fail_fast, io_threads=io_threads,
                                       on_event=on_event)
    result.seconds = time.perf_counter() - t0
    result.files.extend(done)
    result.stopped = (fail_fast and not result.interrupted
                      and any(f.status == "failed" for f in done))
    return result
