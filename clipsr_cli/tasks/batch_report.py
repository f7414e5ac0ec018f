"""What a ``batch`` run reports: each file's outcome, the events while it runs, the report.

:class:`FileResult` (one input), :class:`BatchEvent` (given to ``on_event`` while the run goes),
:class:`BatchResult` (the whole run) and :func:`write_report` (strict JSON, atomic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from clipsr_cli.infer.degradation import Strength

__all__ = ["EXISTS", "REPORT_VERSION", "BatchEvent", "BatchResult", "EventFn", "FileResult",
           "Status", "write_report"]

Status = Literal["done", "skipped", "failed", "not-run"]
REPORT_VERSION = 1
EXISTS = ("output exists; pass `skip_existing=True` to keep it or `overwrite=True` to replace "
          "it")


@dataclass(frozen=True)
class FileResult:
    """What happened to one input (one entry of the report)."""

    input: str
    output: str | None
    status: Status
    reason: str | None = None  # why it failed / was skipped
    caption: str | None = None
    seconds: float | None = None  # in the model
    exists: bool = False  # failed only because its output exists (the summary groups these)
    strength: Strength | None = None  # the degradation strength used (models that blend)

    def to_json(self, words: Callable[[str], str] = lambda s: s) -> dict:
        s = self.strength if self.strength is not None and self.strength.reason else None
        d = {"input": self.input, "output": self.output, "status": self.status,
             "reason": words(self.reason) if self.reason else None, "caption": self.caption,
             "seconds": self.seconds, "denoise": s.value if s else None,
             "denoise_reason": s.reason if s else None}
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class BatchEvent:
    """What a run reports while it goes (``on_event``).

    ``start``: ``total`` images are about to be upscaled; ``file``: image ``name`` enters the
    model; ``tiles``: ``done`` of ``total`` tiles of ``name``; ``result``: one input's outcome
    (``planned`` for those decided before the model ran: skipped, refused, missing)."""

    kind: Literal["start", "file", "tiles", "result"]
    name: str = ""
    done: int = 0
    total: int = 0
    result: FileResult | None = None
    planned: bool = False


EventFn = Callable[[BatchEvent], None]


@dataclass
class BatchResult:
    files: list[FileResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # not images / hidden / not `glob`
    other_shards: int = 0  # images left to the other shard runs
    stale_removed: int = 0  # temporary files of a killed run, deleted
    model: str | None = None
    scale: int | None = None
    shard: tuple[int, int] | None = None  # (K, N): this run's share of the files
    seconds: float = 0.0  # wall time of the processing (after the model loaded)
    interrupted: bool = False  # Ctrl-C
    stopped: bool = False  # `fail_fast` stopped at the first failure

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

    def to_json(self, words: Callable[[str], str] = lambda s: s) -> dict:
        """The report; ``words`` rewrites the reasons (the CLI: to its flags)."""
        ips = self.images_per_second
        return {"version": REPORT_VERSION, "model": self.model, "scale": self.scale,
                "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
                "counts": self.counts(), "seconds": round(self.seconds, 3),
                "images_per_second": round(ips, 3) if ips else None,
                "interrupted": self.interrupted, "stopped_by_fail_fast": self.stopped,
                "files": [f.to_json(words) for f in self.files], "ignored": self.ignored}


def report_path(path: str | os.PathLike, shard: tuple[int, int] | None) -> Path:
    """``path`` with ``{shard}`` replaced by ``KofN`` (one report per process of a sharded run)."""
    if "{shard}" in os.fspath(path):
        k, n = shard or (1, 1)
        path = os.fspath(path).replace("{shard}", f"{k}of{n}")
    return Path(path).expanduser()


def write_report(path: str | os.PathLike, result: BatchResult, *,
                 words: Callable[[str], str] = lambda s: s) -> Path:
    """The summary and every file's outcome as strict JSON (atomic; replaces an old report).
    ``{shard}`` in ``path`` becomes ``KofN``. The path was judged before the run
    (``run_batch(report=...)``): it never replaces an input or an output of the run."""
    from clipsr_cli.io.reports import write_json

    return write_json(report_path(path, result.shard), result.to_json(words),
                      version=REPORT_VERSION, overwrite=True)
