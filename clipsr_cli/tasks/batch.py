"""``batch``: many images, one model load.

* Inputs, shards (``shard='auto'`` from the scheduler's variables) and captions:
  :mod:`clipsr_cli.tasks.sources`; destinations and what is decided before the model runs:
  :mod:`clipsr_cli.tasks.batch_plan` (both re-exported here).
* :func:`execute`: the model loads once; decoding, resizing to the asked size
  (:mod:`clipsr_cli.tasks.outsize`) and encoding run on background threads so the model never
  waits on I/O; same-size images go through the network together (``batch_size``,
  :mod:`clipsr_cli.infer.batching`); a file that fails is reported and the run goes on (unless
  ``fail_fast``).
* :func:`run_batch` ties them together; the model is not loaded at all when there is nothing to
  do. Temporary files a killed run left behind are removed (only stale ones:
  :func:`clipsr_cli.io.atomic.remove_stale_temporaries`), never those of a run still writing.

Outputs are written atomically by :func:`clipsr_cli.io.images.write_image`, so a visible output
is always complete. Nothing here prints: the run reports :class:`BatchEvent` s to ``on_event``
and notes through :data:`clipsr_cli.errors.log`; the CLI draws them.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence, TextIO

from clipsr_cli.errors import InputError, OutputExistsError, UsageError, is_out_of_memory, log
from clipsr_cli.infer.degradation import Strength
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.atomic import remove_stale_temporaries
from clipsr_cli.io.outputs import output_path_for
from clipsr_cli.tasks.batch_plan import Job, check_report, checkpoint_scale, plan, plan_jobs
from clipsr_cli.tasks.batch_report import (EXISTS, REPORT_VERSION, BatchEvent, BatchResult,
                                           EventFn, FileResult, write_report)
from clipsr_cli.tasks.checks import check_batch
from clipsr_cli.tasks.outsize import OutputSize, beyond_note
from clipsr_cli.tasks.sources import (CaptionFn, Discovery, Source, caption_source, discover,
                                      images_below, local_device, parse_shard, resolve_shard,
                                      shard_from_env, shard_of, sidecar_caption)

__all__ = ["BatchEvent", "BatchResult", "CaptionFn", "Discovery", "FileResult", "Job",
           "REPORT_VERSION", "Source", "caption_source", "discover", "execute", "parse_shard",
           "plan_jobs", "run_batch", "shard_from_env", "shard_of", "sidecar_caption",
           "write_report"]

#: Decoded inputs waiting for the model, and encoded outputs waiting for the disk, per I/O thread.
_QUEUE_PER_THREAD = 2
#: Upscaled images (quantised arrays) that may wait for the writer threads, in bytes; at least
#: one always may, whatever its size.
_MAX_PENDING_WRITE_BYTES = 1 << 30


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
    if is_out_of_memory(e):
        return "out of memory; use a smaller `tile` (e.g. `tile=128`)"
    return f"{type(e).__name__}: {e}"


def _read(job: Job, captions: CaptionFn | None):
    from clipsr_cli.io.images import read_image

    image = read_image(job.source.path)
    return image, (captions(job.source) if captions is not None else None)


def _write(job: Job, rgb, alpha, image, *, quality: int, overwrite: bool,
           size: tuple[int, int] | None = None) -> Path:
    """Resize to ``size`` (width, height) if asked, encode, write (on a writer thread)."""
    from clipsr_cli.io.images import write_image
    from clipsr_cli.tasks.outsize import resize_output

    if size is not None:
        rgb, alpha = resize_output(rgb, alpha, size)
    job.dest.parent.mkdir(parents=True, exist_ok=True)
    return write_image(job.dest, rgb, alpha, like=image, quality=quality, overwrite=overwrite)


def execute(jobs: Sequence[Job], up, *, captions: CaptionFn | None = None, quality: int = 95,
            overwrite: bool = False, skip_existing: bool = False, fail_fast: bool = False,
            io_threads: int = 2, batch_size: int = 1, size: OutputSize | None = None,
            on_event: EventFn | None = None) -> tuple[list[FileResult], bool]:
    """Upscale ``jobs`` with the loaded ``up``: returns (results in job order, interrupted).

    With ``io_threads`` > 0, reading + decoding (and the caption) of the next files and
    resizing + encoding + writing of finished ones run on two pools of that many threads, with
    bounded queues, while the model works in this thread. With 0 everything runs here, one step
    after the other. Up to ``batch_size`` consecutive images of one size that fit untiled go
    through the network together (:func:`~clipsr_cli.infer.batching.batch_limit`); a batch
    that fails is retried one image at a time. ``size``: the output size asked for. A file that
    fails is recorded and the run goes on, unless ``fail_fast``; then (and on Ctrl-C) files not
    started are ``not-run``. With ``skip_existing`` an output another process wrote meanwhile is
    ``skipped``, never replaced. Each image's degradation strength is reported."""
    from clipsr_cli.infer.batching import batch_limit, upscale_images

    emit = on_event or (lambda event: None)
    errors = _file_errors()
    depth = max(1, io_threads * _QUEUE_PER_THREAD, 2 * batch_size if batch_size > 1 else 0)
    readers = ThreadPoolExecutor(io_threads, "clipsr-read") if io_threads else _Inline()
    writers = ThreadPoolExecutor(io_threads, "clipsr-write") if io_threads else _Inline()
    results: dict[int, FileResult] = {}
    strengths: dict[int, Strength] = {}
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
                record(i, FileResult(*entry(i), "done", None, caption, round(secs, 3),
                                     strength=strengths.get(i)))

    def fill() -> None:
        while len(reads) < depth and not stop:
            nxt = next(todo, None)
            if nxt is None:
                return
            reads.append((nxt[0], readers.submit(_read, nxt[1], captions)))

    def take():
        """The next decoded job as (i, image, caption, output size), or None (recorded)."""
        i, fut = reads.popleft()
        fill()
        caption = None
        try:
            image, caption = fut.result()
            if skip_existing and jobs[i].dest.exists():
                record(i, appeared(i, caption))
                return None
            target = size.target(*image.size, name=image.source) if size is not None else None
        except errors as e:
            record(i, FileResult(*entry(i), "failed", _reason(e), caption))
            collect(block=False)
            return None
        return i, image, caption, target

    def run_one(item):
        i, image, caption, _ = item
        name = jobs[i].source.rel.as_posix()
        emit(BatchEvent("file", name=name))
        strengths[i] = s = up.strength_for(image)
        return up.upscale_image(image, caption, strength=s, progress=lambda d, t, n=name: emit(
            BatchEvent("tiles", name=n, done=d, total=t)))

    def run(group) -> list:
        """[(item, rgb, alpha, seconds) | (item, exception)] for a group of items."""
        t0 = time.perf_counter()
        if len(group) > 1:
            for item in group:
                emit(BatchEvent("file", name=jobs[item[0]].source.rel.as_posix()))
                strengths[item[0]] = up.strength_for(item[1])
            try:
                outs = upscale_images(up, *zip(*[(g[1], g[2], strengths[g[0]]) for g in group]))
                secs = (time.perf_counter() - t0) / len(group)
                return [(g, rgb, alpha, secs) for g, (rgb, alpha) in zip(group, outs)]
            except errors:  # e.g. out of memory as a batch: one at a time
                pass
        done = []
        for item in group:
            t0 = time.perf_counter()
            try:
                rgb, alpha = run_one(item)
            except errors as e:
                done.append((item, e))
            else:
                done.append((item, rgb, alpha, time.perf_counter() - t0))
        return done

    def submit(item, rgb, alpha, secs) -> None:
        nonlocal pending_bytes
        i, image, caption, target = item
        nbytes = rgb.nbytes + (alpha.numel() * 4 if alpha is not None else 0)
        while writes and (len(writes) >= depth
                          or pending_bytes + nbytes > _MAX_PENDING_WRITE_BYTES):
            collect(block=True)
        writes.append((i, writers.submit(_write, jobs[i], rgb, alpha, image, quality=quality,
                                         overwrite=overwrite, size=target),
                       nbytes, caption, secs))
        pending_bytes += nbytes

    emit(BatchEvent("start", total=len(jobs)))
    carry = None  # an image taken while gathering a batch that did not fit in it
    try:
        fill()
        while (reads or carry is not None) and not stop:
            item, carry = (carry if carry is not None else take()), None
            if item is None:
                continue
            group = [item]
            h, w = item[1].rgb.shape[-2:]
            limit = batch_limit(up, int(h), int(w), batch_size)
            while len(group) < limit and reads and not stop:
                nxt = take()
                if nxt is not None and nxt[1].rgb.shape[-2:] == (h, w):
                    group.append(nxt)
                elif nxt is not None:
                    carry = nxt
                    break
            for out in run(group):
                if len(out) == 2:
                    record(out[0][0], FileResult(*entry(out[0][0]), "failed", _reason(out[1]),
                                                 out[0][2]))
                else:
                    submit(*out)
            del group, item
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


def _process_device(device: str, env: Mapping[str, str]) -> str:
    """One GPU per process under ``torchrun`` (``LOCAL_RANK``) when ``device='auto'``."""
    if str(device).strip().lower() != "auto" or "LOCAL_RANK" not in env:
        return device
    import torch

    return local_device(device, env, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def run_batch(*, inputs: Sequence[str], output_dir: str | os.PathLike, recursive: bool = False,
              glob: str | None = None, text: str | None = None,
              captions: str | os.PathLike | None = None, caption_sidecar: bool = False,
              skip_existing: bool = False, overwrite: bool = False, fail_fast: bool = False,
              shard: str | tuple[int, int] | None = None, format: str | None = None,
              suffix: str | None = None, quality: int = 95, io_threads: int = 2,
              model: str | None = None, scale: int | None = None,
              options: EngineOptions | None = None, outscale: float | None = None,
              width: int | None = None, height: int | None = None,
              report: str | os.PathLike | None = None,
              upscaler=None, stdin: TextIO | None = None, env: Mapping[str, str] | None = None,
              on_event: EventFn | None = None) -> BatchResult:
    """Upscale every image of ``inputs`` into ``output_dir``; never raises for one bad file.

    An output that exists is skipped with ``skip_existing``, replaced with ``overwrite``, else
    reported as failed and left alone; an output is never written over its own input.
    ``upscaler``: an already loaded :class:`~clipsr_cli.infer.engine.Upscaler` (else one is
    loaded from ``model`` etc., and only if some file needs it). Raises UsageError for option
    values that can never work, InputError / DataError / ModelError for problems of the whole
    run (a missing input argument, a bad caption file, a model that cannot load).

    ``options``: how the model runs (:class:`EngineOptions`; its ``passes``: the model runs that
    many times; ``batch_size``: same-size images per forward pass). ``outscale`` / ``width`` /
    ``height``: any output size (:mod:`clipsr_cli.tasks.outsize`).
    ``shard='auto'`` (the default when ``WORLD_SIZE`` > 1) and ``device='auto'`` with
    ``LOCAL_RANK`` read ``env`` (default: the process environment), see
    :func:`~clipsr_cli.tasks.sources.shard_from_env` and
    :func:`~clipsr_cli.tasks.sources.local_device`.
    """
    from clipsr_cli.tasks.upscale import DEFAULT_SCALE, check_device_here, check_text, load_upscaler

    emit = on_event or (lambda event: None)
    size = check_batch(skip_existing=skip_existing, overwrite=overwrite, io_threads=io_threads,
                       shard=shard, text=text, captions=captions,
                       caption_sidecar=caption_sidecar, suffix=suffix, outscale=outscale,
                       width=width, height=height, scale=scale, format=format, quality=quality)
    options = options or EngineOptions()
    passes, batch_size = options.passes, options.batch_size
    check_device_here(options)
    if suffix is None and size is not None:
        suffix = size.suffix
    env = os.environ if env is None else env
    shard = resolve_shard(shard, env)
    options = options.replace(device=_process_device(options.device, env))
    if suffix is not None:
        output_path_for("x.png", 1, suffix=suffix)  # a bad suffix fails before any work
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; `output` takes a folder")
    caption_fn = caption_source(text=text, captions=captions, caption_sidecar=caption_sidecar)
    found = discover(inputs, recursive=recursive, glob=glob, exclude=out, stdin=stdin)
    result = BatchResult(ignored=[str(p) for p in found.ignored], shard=shard)
    result.files.extend(FileResult(m, None, "failed", f"{m} does not exist; check the list")
                        for m in found.missing)

    def load():
        return load_upscaler(model=model, scale=scale, options=options)

    up = upscaler
    if up is not None and passes > 1:
        from clipsr_cli.infer.pipeline import Pipeline

        up = Pipeline.repeat(up, passes)
    base = scale or (DEFAULT_SCALE if model is None else checkpoint_scale(model))
    planned_scale = up.scale if up is not None else (base ** passes if base else None)
    if planned_scale is None:
        up = load()
        planned_scale = up.scale
    result.scale = planned_scale
    result.model = getattr(up, "name", None) or model

    every = plan_jobs(found.sources, output_dir=out, scale=planned_scale, format=format,
                      suffix=suffix)
    todo = plan(found, every, result, shard=shard, skip_existing=skip_existing,
                 overwrite=overwrite)
    if report is not None:  # judged before any image is read
        check_report(report, shard=shard, inputs=inputs, captions=captions, jobs=every)
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
    if caption_fn is not None:
        check_text(up, "captions", "the captions are ignored")
    if (note := beyond_note(size, up.scale)) is not None:
        log.info(note)
    t0 = time.perf_counter()
    done, result.interrupted = execute(todo, up, captions=caption_fn, quality=quality,
                                       overwrite=overwrite, skip_existing=skip_existing,
                                       fail_fast=fail_fast, io_threads=io_threads,
                                       batch_size=batch_size, size=size, on_event=on_event)
    result.seconds = time.perf_counter() - t0
    result.files.extend(done)
    result.stopped = (fail_fast and not result.interrupted
                      and any(f.status == "failed" for f in done))
    return result
