"""``batch``'s work once the model is loaded: :class:`BatchRun` (and :func:`execute`, its one call).

Each job goes through four steps, and each state it can be in is a named value:

* **read** (reader threads): the file decoded, its caption, the output size asked for →
  :class:`Decoded` (or a ``failed`` / ``skipped`` result at once);
* **run** (this thread): up to ``batch_size`` consecutive decoded images of one size that fit
  untiled go through the network together (:meth:`~clipsr_cli.infer.base.Engine.batch_limit`,
  :meth:`~clipsr_cli.infer.base.Engine.upscale_images`; a batch that fails is retried one image
  at a time) → :class:`Upscaled` or :class:`Failed`;
* **write** (writer threads): resized to the asked size, encoded, written atomically; bounded
  by ``_QUEUE_PER_THREAD`` per thread and ``_MAX_PENDING_WRITE_BYTES``;
* **collect** (this thread): finished writes become results, oldest first.

A file that fails is recorded and the run goes on, unless ``fail_fast``; then (and on Ctrl-C)
files not started are ``not-run``; writes in flight finish (or fail) atomically, so no partial
output is left. Nothing here prints: results and progress go to ``on_event``.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clipsr_cli.errors import InputError, OutputExistsError, is_out_of_memory
from clipsr_cli.infer.degradation import Strength
from clipsr_cli.tasks.batch_plan import Job
from clipsr_cli.tasks.batch_report import EXISTS, BatchEvent, EventFn, FileResult, Status
from clipsr_cli.tasks.outsize import OutputSize
from clipsr_cli.tasks.sources import CaptionFn

if TYPE_CHECKING:  # torch is imported where it is used: usage errors are answered before it loads
    import numpy as np
    import torch

    from clipsr_cli.infer.base import Engine
    from clipsr_cli.io.images import LoadedImage

__all__ = ["BatchRun", "Decoded", "Failed", "Upscaled", "execute"]

#: Decoded inputs waiting for the model, and encoded outputs waiting for the disk, per I/O thread.
_QUEUE_PER_THREAD = 2
#: Upscaled images (quantised arrays) that may wait for the writer threads, in bytes; at least
#: one always may, whatever its size.
_MAX_PENDING_WRITE_BYTES = 1 << 30


@dataclass(frozen=True)
class Decoded:
    """Job ``index`` read: its decoded image, caption and asked output size (width, height)."""

    index: int
    job: Job
    image: LoadedImage
    caption: str | None
    target: tuple[int, int] | None

    @property
    def name(self) -> str:
        return self.job.source.rel.as_posix()


@dataclass(frozen=True)
class Upscaled:
    """A decoded image through the model: colour (quantised) and alpha, the seconds it took
    (its share of a batch) and the degradation strength used."""

    item: Decoded
    rgb: np.ndarray
    alpha: torch.Tensor | None
    seconds: float
    strength: Strength

    @property
    def nbytes(self) -> int:
        return self.rgb.nbytes + (self.alpha.numel() * 4 if self.alpha is not None else 0)


@dataclass(frozen=True)
class Failed:
    """A decoded image the model could not upscale (a file's own failure: see ``_file_errors``)."""

    item: Decoded
    error: BaseException


@dataclass(frozen=True)
class _Writing:
    """An upscaled image handed to a writer thread (the pixels are the writer's now)."""

    index: int
    future: Future
    nbytes: int
    caption: str | None
    seconds: float
    strength: Strength


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


class BatchRun:
    """One run over ``jobs`` with the loaded engine ``up`` (the arguments: see :func:`execute`).

    :meth:`execute` loops: :meth:`gather` (reads decoded jobs: :meth:`read`), :meth:`run`,
    :meth:`write`, :meth:`collect`; :meth:`record` keeps each job's :class:`FileResult`."""

    def __init__(self, jobs: Sequence[Job], up: Engine, *, captions: CaptionFn | None = None,
                 quality: int = 95, overwrite: bool = False, skip_existing: bool = False,
                 fail_fast: bool = False, io_threads: int = 2, batch_size: int = 1,
                 size: OutputSize | None = None, on_event: EventFn | None = None):
        self.jobs, self.up, self.captions, self.size = jobs, up, captions, size
        self.quality, self.overwrite, self.skip_existing = quality, overwrite, skip_existing
        self.fail_fast, self.batch_size = fail_fast, batch_size
        self.emit = on_event or (lambda event: None)
        self.errors = _file_errors()
        self.readers = ThreadPoolExecutor(io_threads, "clipsr-read") if io_threads else _Inline()
        self.writers = ThreadPoolExecutor(io_threads, "clipsr-write") if io_threads else _Inline()
        self.depth = max(1, io_threads * _QUEUE_PER_THREAD,
                         2 * batch_size if batch_size > 1 else 0)
        self.results: dict[int, FileResult] = {}
        self.reads: deque[tuple[int, Future]] = deque()
        self.writes: deque[_Writing] = deque()
        self.pending_bytes = 0
        self.todo = iter(enumerate(jobs))
        self.stop = False  # fail_fast after a failure
        self.carry: Decoded | None = None  # read while gathering a batch it did not fit in

    # -- results ---------------------------------------------------------------------------------
    def result(self, i: int, status: Status, reason: str | None = None,
               caption: str | None = None, **more) -> FileResult:
        job = self.jobs[i]
        return FileResult(str(job.source.path), str(job.dest), status, reason, caption, **more)

    def record(self, i: int, r: FileResult) -> None:
        self.results[i] = r
        self.stop = self.stop or (self.fail_fast and r.status == "failed")
        self.emit(BatchEvent("result", result=r))

    def appeared(self, i: int, caption: str | None) -> FileResult:
        """Job ``i``'s output exists (found before the model ran, or written meanwhile)."""
        if self.skip_existing:
            return self.result(i, "skipped", "output exists", caption)
        return self.result(i, "failed", EXISTS, caption, exists=True)

    # -- read ------------------------------------------------------------------------------------
    def fill(self) -> None:
        """Hand the readers more jobs, up to ``depth`` waiting."""
        while len(self.reads) < self.depth and not self.stop:
            nxt = next(self.todo, None)
            if nxt is None:
                return
            self.reads.append((nxt[0], self.readers.submit(_read, nxt[1], self.captions)))

    def read(self) -> Decoded | None:
        """The next job, decoded; None when it was recorded instead (failed, skipped)."""
        i, fut = self.reads.popleft()
        self.fill()
        caption = None
        try:
            image, caption = fut.result()
            if self.skip_existing and self.jobs[i].dest.exists():
                self.record(i, self.appeared(i, caption))
                return None
            target = (self.size.target(*image.size, name=image.source) if self.size is not None
                      else None)
        except self.errors as e:
            self.record(i, self.result(i, "failed", _reason(e), caption))
            self.collect(block=False)
            return None
        return Decoded(i, self.jobs[i], image, caption, target)

    def gather(self) -> list[Decoded]:
        """The next decoded image and as many following ones of its size as may run with it."""
        item, self.carry = (self.carry if self.carry is not None else self.read()), None
        if item is None:
            return []
        group = [item]
        h, w = item.image.rgb.shape[-2:]
        limit = self.up.batch_limit(int(h), int(w), self.batch_size)
        while len(group) < limit and self.reads and not self.stop:
            nxt = self.read()
            if nxt is not None and nxt.image.rgb.shape[-2:] == (h, w):
                group.append(nxt)
            elif nxt is not None:
                self.carry = nxt
                break
        return group

    # -- run -------------------------------------------------------------------------------------
    def run(self, group: list[Decoded]) -> list[Upscaled | Failed]:
        """``group`` through the model: together, else (one image, or the batch failed) one
        image at a time."""
        if len(group) > 1:
            done = self._run_together(group)
            if done is not None:
                return done
        return [self._run_one(item) for item in group]

    def _run_together(self, group: list[Decoded]) -> list[Upscaled | Failed] | None:
        t0 = time.perf_counter()
        strengths = []
        for item in group:
            self.emit(BatchEvent("file", name=item.name))
            strengths.append(self.up.strength_for(item.image))
        try:
            outs = self.up.upscale_images([g.image for g in group], [g.caption for g in group],
                                          strengths)
        except self.errors:  # e.g. out of memory as a batch: one at a time
            return None
        secs = (time.perf_counter() - t0) / len(group)
        return [Upscaled(g, rgb, alpha, secs, s)
                for g, s, (rgb, alpha) in zip(group, strengths, outs)]

    def _run_one(self, item: Decoded) -> Upscaled | Failed:
        t0 = time.perf_counter()
        name = item.name

        def tiles(done: int, total: int) -> None:
            self.emit(BatchEvent("tiles", name=name, done=done, total=total))

        try:
            self.emit(BatchEvent("file", name=name))
            strength = self.up.strength_for(item.image)
            rgb, alpha = self.up.upscale_image(item.image, item.caption, strength=strength,
                                               progress=tiles)
        except self.errors as e:
            return Failed(item, e)
        return Upscaled(item, rgb, alpha, time.perf_counter() - t0, strength)

    # -- write and collect -----------------------------------------------------------------------
    def write(self, done: Upscaled) -> None:
        """Hand ``done`` to a writer, first waiting for older writes while too many wait."""
        nbytes, item = done.nbytes, done.item
        while self.writes and (len(self.writes) >= self.depth
                               or self.pending_bytes + nbytes > _MAX_PENDING_WRITE_BYTES):
            self.collect(block=True)
        fut = self.writers.submit(_write, item.job, done.rgb, done.alpha, item.image,
                                  quality=self.quality, overwrite=self.overwrite,
                                  size=item.target)
        self.writes.append(_Writing(item.index, fut, nbytes, item.caption, done.seconds,
                                    done.strength))
        self.pending_bytes += nbytes

    def collect(self, block: bool) -> None:
        """Record finished writes (oldest first); when ``block``, wait for the oldest."""
        while self.writes and (self.writes[0].future.done() or block):
            w = self.writes.popleft()
            block = False
            self.pending_bytes -= w.nbytes
            try:
                w.future.result()
            except OutputExistsError:  # written meanwhile by someone else
                self.record(w.index, self.appeared(w.index, w.caption))
            except self.errors as e:
                self.record(w.index, self.result(w.index, "failed", _reason(e), w.caption))
            else:
                self.record(w.index, self.result(w.index, "done", None, w.caption,
                                                 seconds=round(w.seconds, 3),
                                                 strength=w.strength))

    # -- the loop --------------------------------------------------------------------------------
    def step(self) -> bool:
        """Gather, run and hand to the writers one group; False when nothing was left to run."""
        group = self.gather()
        if not group:
            return False
        for out in self.run(group):
            if isinstance(out, Failed):
                self.record(out.item.index, self.result(out.item.index, "failed",
                                                        _reason(out.error), out.item.caption))
            else:
                self.write(out)
        return True

    def execute(self) -> tuple[list[FileResult], bool]:
        """Run every job: (results in job order, interrupted)."""
        self.emit(BatchEvent("start", total=len(self.jobs)))
        interrupted = False
        try:
            self.fill()
            while (self.reads or self.carry is not None) and not self.stop:
                if self.step():  # the group's images are let go before collecting
                    self.collect(block=False)
            while self.writes:
                self.collect(block=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for _, fut in self.reads:
                fut.cancel()
            self.readers.shutdown(wait=True, cancel_futures=True)
            self.writers.shutdown(wait=True)  # writes in flight finish (or fail) atomically
        if interrupted:
            while self.writes:
                try:
                    self.collect(block=True)
                except KeyboardInterrupt:
                    break
        return [self.results.get(i) or self.result(i, "not-run")
                for i in range(len(self.jobs))], interrupted


def execute(jobs: Sequence[Job], up: Engine, *, captions: CaptionFn | None = None,
            quality: int = 95, overwrite: bool = False, skip_existing: bool = False,
            fail_fast: bool = False, io_threads: int = 2, batch_size: int = 1,
            size: OutputSize | None = None,
            on_event: EventFn | None = None) -> tuple[list[FileResult], bool]:
    """Upscale ``jobs`` with the loaded ``up``: returns (results in job order, interrupted).

    With ``io_threads`` > 0, reading + decoding (and the caption) of the next files and
    resizing + encoding + writing of finished ones run on two pools of that many threads, with
    bounded queues, while the model works in this thread. With 0 everything runs here, one step
    after the other. Up to ``batch_size`` consecutive images of one size that fit untiled go
    through the network together; a batch that fails is retried one image at a time. ``size``:
    the output size asked for. A file that fails is recorded and the run goes on, unless
    ``fail_fast``; then (and on Ctrl-C) files not started are ``not-run``. With
    ``skip_existing`` an output another process wrote meanwhile is ``skipped``, never replaced.
    Each image's degradation strength is reported."""
    return BatchRun(jobs, up, captions=captions, quality=quality, overwrite=overwrite,
                    skip_existing=skip_existing, fail_fast=fail_fast, io_threads=io_threads,
                    batch_size=batch_size, size=size, on_event=on_event).execute()
