"""``batch``: many images, one model load.

* Inputs, shards (``shard='auto'`` from the scheduler's variables) and captions:
  :mod:`clipsr_cli.tasks.sources`; destinations and what is decided before the model runs:
  :mod:`clipsr_cli.tasks.batch_plan` (both re-exported here).
* :func:`~clipsr_cli.tasks.batch_run.execute` (:class:`~clipsr_cli.tasks.batch_run.BatchRun`):
  the model loads once; decoding, resizing to the asked size (:mod:`clipsr_cli.tasks.outsize`)
  and encoding run on background threads so the model never waits on I/O; same-size images go
  through the network together (``batch_size``: the engine's ``upscale_images``); a file that
  fails is reported and the run goes on (unless ``fail_fast``).
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
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, TextIO

from clipsr_cli.errors import InputError, log
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.atomic import remove_stale_temporaries
from clipsr_cli.io.outputs import output_path_for
from clipsr_cli.tasks.batch_plan import Job, check_report, checkpoint_scale, plan, plan_jobs
from clipsr_cli.tasks.batch_report import (REPORT_VERSION, BatchEvent, BatchResult, EventFn,
                                           FileResult, write_report)
from clipsr_cli.tasks.batch_run import execute
from clipsr_cli.tasks.checks import check_batch
from clipsr_cli.tasks.outsize import OutputSize, beyond_note
from clipsr_cli.tasks.sources import (CaptionFn, Discovery, Source, caption_source, discover,
                                      images_below, local_device, parse_shard, resolve_shard,
                                      shard_from_env, shard_of, sidecar_caption)

if TYPE_CHECKING:
    from clipsr_cli.infer.base import Engine

__all__ = ["BatchEvent", "BatchResult", "CaptionFn", "Discovery", "FileResult", "Job",
           "REPORT_VERSION", "Source", "caption_source", "discover", "execute", "parse_shard",
           "plan_jobs", "run_batch", "shard_from_env", "shard_of", "sidecar_caption",
           "write_report"]


def _process_device(device: str, env: Mapping[str, str]) -> str:
    """One GPU per process under ``torchrun`` (``LOCAL_RANK``) when ``device='auto'``."""
    if str(device).strip().lower() != "auto" or "LOCAL_RANK" not in env:
        return device
    import torch

    return local_device(device, env, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _output_folder(output_dir: str | os.PathLike, suffix: str | None) -> Path:
    if suffix is not None:
        output_path_for("x.png", 1, suffix=suffix)  # a bad suffix fails before any work
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; `output` takes a folder")
    return out


def _load(model: str | None, scale: int | None, options: EngineOptions) -> Engine:
    from clipsr_cli.tasks.upscale import load_upscaler

    return load_upscaler(model=model, scale=scale, options=options)


def _planned_scale(upscaler: Engine | None, model: str | None, scale: int | None,
                   options: EngineOptions) -> tuple[Engine | None, int]:
    """(the engine, if loaded, run ``passes`` times; the outputs' scale): the model is loaded
    here only when its scale cannot be known without it (read from a checkpoint's header)."""
    from clipsr_cli.tasks.upscale import DEFAULT_SCALE

    up, passes = upscaler, options.passes
    if up is not None and passes > 1:
        from clipsr_cli.infer.pipeline import Pipeline

        up = Pipeline.repeat(up, passes)
    base = scale or (DEFAULT_SCALE if model is None else checkpoint_scale(model))
    planned = up.scale if up is not None else (base ** passes if base else None)
    if planned is None:
        up = _load(model, scale, options)
        planned = up.scale
    return up, planned


def _plan_run(found: Discovery, result: BatchResult, *, out: Path, shard: tuple[int, int] | None,
              format: str | None, suffix: str | None, skip_existing: bool, overwrite: bool,
              report: str | os.PathLike | None, inputs: Sequence[str],
              captions: str | os.PathLike | None) -> list[Job]:
    """The jobs to run (the others recorded in ``result``); the report path judged and stale
    temporary files removed, all before any image is read."""
    every = plan_jobs(found.sources, output_dir=out, scale=result.scale, format=format,
                      suffix=suffix)
    todo = plan(found, every, result, shard=shard, skip_existing=skip_existing,
                overwrite=overwrite)
    if report is not None:
        check_report(report, shard=shard, inputs=inputs, captions=captions, jobs=every)
    in_shard = [Path(f.output) for f in result.files if f.output] + [j.dest for j in todo]
    result.stale_removed = len(remove_stale_temporaries(in_shard))
    return todo


def _ends_before_the_model(result: BatchResult, todo: Sequence[Job], found: Discovery,
                           fail_fast: bool) -> bool:
    """True when the model need not run: ``fail_fast`` after a planned failure, or nothing to
    do (then a warning says why, if nothing was found at all)."""
    if result.failed and fail_fast:
        result.stopped = True
        result.files.extend(FileResult(str(j.source.path), str(j.dest), "not-run") for j in todo)
        return True
    if todo:
        return False
    if not result.files:
        shard = result.shard
        where = f" in this shard ({shard[0]}/{shard[1]})" if shard and result.other_shards else ""
        hidden = images_below(found.unwalked) if not found.sources else 0
        hint = (f" ({hidden} image{'s' * (hidden != 1)} in sub-folders; add "
                "`recursive=True`)" if hidden else "")
        log.warning(f"no images to process{where}{hint}")
    return True


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
    from clipsr_cli.tasks.upscale import check_device_here

    emit = on_event or (lambda event: None)
    size = check_batch(skip_existing=skip_existing, overwrite=overwrite, io_threads=io_threads,
                       shard=shard, text=text, captions=captions,
                       caption_sidecar=caption_sidecar, suffix=suffix, outscale=outscale,
                       width=width, height=height, scale=scale, format=format, quality=quality)
    options = options or EngineOptions()
    check_device_here(options)
    if suffix is None and size is not None:
        suffix = size.suffix
    env = os.environ if env is None else env
    shard = resolve_shard(shard, env)
    options = options.replace(device=_process_device(options.device, env))
    out = _output_folder(output_dir, suffix)
    caption_fn = caption_source(text=text, captions=captions, caption_sidecar=caption_sidecar)
    found = discover(inputs, recursive=recursive, glob=glob, exclude=out, stdin=stdin)
    result = BatchResult(ignored=[str(p) for p in found.ignored], shard=shard)
    result.files.extend(FileResult(m, None, "failed", f"{m} does not exist; check the list")
                        for m in found.missing)
    up, result.scale = _planned_scale(upscaler, model, scale, options)
    result.model = getattr(up, "name", None) or model
    todo = _plan_run(found, result, out=out, shard=shard, format=format, suffix=suffix,
                     skip_existing=skip_existing, overwrite=overwrite, report=report,
                     inputs=inputs, captions=captions)
    for f in result.files:
        emit(BatchEvent("result", result=f, planned=True))
    if _ends_before_the_model(result, todo, found, fail_fast):
        return result
    up = up if up is not None else _load(model, scale, options)
    _upscale(up, todo, result, model=model, size=size, captions=caption_fn, quality=quality,
             overwrite=overwrite, skip_existing=skip_existing, fail_fast=fail_fast,
             io_threads=io_threads, batch_size=options.batch_size, on_event=on_event)
    return result


def _upscale(up: Engine, todo: Sequence[Job], result: BatchResult, *, model: str | None,
             size: OutputSize | None, captions: CaptionFn | None, fail_fast: bool,
             **run) -> None:
    """Run ``todo`` with the loaded ``up`` (``run``: :func:`execute`'s settings) into
    ``result``."""
    from clipsr_cli.tasks.upscale import check_text

    result.model = getattr(up, "name", None) or model
    if up.scale != result.scale:  # pragma: no cover - the header and the loaded model agree
        raise InputError(f"model scale ×{up.scale} differs from the planned ×{result.scale}")
    if captions is not None:
        check_text(up, "captions", "the captions are ignored")
    if (note := beyond_note(size, up.scale)) is not None:
        log.info(note)
    t0 = time.perf_counter()
    done, result.interrupted = execute(todo, up, captions=captions, size=size,
                                       fail_fast=fail_fast, **run)
    result.seconds = time.perf_counter() - t0
    result.files.extend(done)
    result.stopped = (fail_fast and not result.interrupted
                      and any(f.status == "failed" for f in done))
