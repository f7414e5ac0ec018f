"""``batch``'s plan: each input's destination, and what is done before the model runs.

* :func:`plan_jobs`: destinations (the output policy's names, :mod:`clipsr_cli.io.outputs`).
* :func:`plan`: each job decided before the model runs: to do, skipped, refused (its output
  exists, is its input, or is another input's) or left to another shard.
* :func:`checkpoint_scale`: a checkpoint's scale read from its header, so a run with nothing
  left to do never loads the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from clipsr_cli.errors import InputError, ModelError, UsageError
from clipsr_cli.hub.resolve import ClipsrFile, resolve
from clipsr_cli.io import outputs as policy
from clipsr_cli.io.outputs import output_path_for
from clipsr_cli.tasks.batch_report import EXISTS, BatchResult, FileResult, report_path
from clipsr_cli.tasks.sources import Discovery, Source, shard_of

__all__ = ["Job", "check_report", "checkpoint_scale", "plan", "plan_jobs"]


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



def check_report(report: str | os.PathLike, *, shard: tuple[int, int] | None,
                 inputs: Iterable[str], captions: str | os.PathLike | None,
                 jobs: Iterable[Job]) -> Path:
    """The report's path, judged by the output policy before any image is read: never an
    input (image, ``@LIST`` file), the captions file or a planned output; a path that can never
    work is a UsageError (:func:`clipsr_cli.io.outputs.check_report`)."""
    jobs = list(jobs)
    keep = [a[1:] if a.startswith("@") else a for a in inputs]
    keep += [captions, *(j.source.path for j in jobs), *(j.dest for j in jobs)]
    return policy.check_report(report_path(report, shard), keep=keep)


def checkpoint_scale(model: str | None) -> int | None:
    """The scale of a clipsr checkpoint file read from its header (without loading weights),
    so that a run with nothing left to do never loads the model; None for anything else, or
    when the header does not say (loading the model then reports what is wrong)."""
    try:
        ref = resolve(model) if model is not None else None
    except ModelError:
        return None
    return ref.header_scale() if isinstance(ref, ClipsrFile) else None


def plan(found: Discovery, every: list[Job], result: BatchResult, *, shard, skip_existing: bool,
          overwrite: bool) -> list[Job]:
    """Decide each job before the model runs: to do, skipped, refused or in another shard.

    UsageError when an output would be its own input (e.g. ``output`` is the input folder and
    ``suffix=''``): that can never work, so nothing runs."""
    outputs = {j.dest.resolve() for j in every}
    for job in every:
        if job.dest.resolve() == job.source.path.resolve():
            raise UsageError(f"the output of {job.source.path} would replace it (the output "
                             "folder holds the inputs and the names do not change); pass a "
                             "`suffix` or another `output`", param="suffix")
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
        try:
            policy.check_name(job.dest)
        except InputError as e:
            result.files.append(FileResult(*entry, "failed", str(e)))
            continue
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
