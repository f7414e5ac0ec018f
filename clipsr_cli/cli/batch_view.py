"""How ``clipsr batch`` shows a run: a live bar, failures as they happen, paths, the summary.

Written paths go to stdout, one per line, as each file is complete; progress, failures and the
summary to stderr. When both are the same terminal, a path is printed through the bar's console
(above the live bar), so a path and the bar never share a line; otherwise (stdout redirected)
the path is written to stdout as it stands.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from rich.console import Console

from clipsr_cli.cli.console import cli_words, info, state
from clipsr_cli.tasks.batch_report import BatchEvent, BatchResult, FileResult

_MAX_LISTED = 20  # failures listed in the summary; --report has them all


def reason_line(f: FileResult) -> str:
    reason = cli_words(f.reason or "failed")
    return reason if f.input in reason else f"{f.input}: {reason}"


def echo_path(line: str) -> None:
    """A written path on stdout as the bytes the file system has: a name that is not UTF-8
    (held as surrogate escapes) comes out as it is on disk, never as an encoding error."""
    sys.stdout.flush()
    sys.stdout.buffer.write(os.fsencode(line) + b"\n")
    sys.stdout.buffer.flush()


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


class BatchView:
    """Renders a run's :class:`~clipsr_cli.tasks.batch.BatchEvent` s (pass it as ``on_event``).

    The bar is drawn only when ``console`` is a terminal and not quiet. ``same_terminal``: stdout
    shows on the bar's terminal (default: stdout is a terminal); ``echo`` writes a path line
    to stdout."""

    def __init__(self, console: Console, *, quiet: bool = False, verbose: bool = False,
                 same_terminal: bool | None = None,
                 echo: Callable[[str], None] = echo_path):
        self.console, self.quiet, self.verbose, self.echo = console, quiet, verbose, echo
        self.same_terminal = _stdout_is_terminal() if same_terminal is None else same_terminal
        self.bar = None
        self.task = None

    # -- events ----------------------------------------------------------------------------------
    def __call__(self, event: BatchEvent) -> None:
        if event.kind == "start":
            self._start(event.total)
        elif event.kind == "file":
            self._current(event.name)
        elif event.kind == "tiles":
            self._current(f"{event.name} (tile {event.done}/{event.total})")
        elif event.kind == "result" and event.result is not None:
            self._result(event.result, planned=event.planned)

    def _start(self, total: int) -> None:
        if self.quiet or not self.console.is_terminal or total == 0 or self.bar is not None:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TextColumn, TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{task.speed:.2f} img/s" if task.speed else "– img/s")

        self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("images"), Rate(), TimeRemainingColumn(),
                            TextColumn("{task.fields[current]}"),
                            console=self.console, transient=True, redirect_stdout=False,
                            redirect_stderr=False)
        self.task = self.bar.add_task("batch", total=total, current="")
        self.bar.start()

    def _current(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, current=text)

    def _result(self, r: FileResult, *, planned: bool) -> None:
        if self.bar is not None and not planned:
            self.bar.advance(self.task)
        if r.status == "failed" and not r.exists:  # outputs that exist: one summary line
            self.console.print("[bold red]failed:[/] ", end="", highlight=False)
            self.console.print(reason_line(r), highlight=False, soft_wrap=True, markup=False)
        elif r.status == "done":
            self.path(str(r.output))
            if self.verbose:
                info(f"{r.input} → {r.output} ({r.seconds:.2f} s)")

    def path(self, line: str) -> None:
        """A result line: above the live bar when it shares the terminal, else on stdout."""
        if self.bar is not None and self.same_terminal:
            self.console.print(line, highlight=False, soft_wrap=True, markup=False)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_summary(result: BatchResult, console: Console) -> None:
    """The end-of-run summary on stderr (failures even with -q)."""
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
        console.print(f"batch: {' · '.join(parts)}{speed}", highlight=False, soft_wrap=True)
    failed = result.failed
    if failed:
        console.print(f"[bold red]failed ({len(failed)}):[/]", highlight=False)
        exists = [f for f in failed if f.exists]
        others = [f for f in failed if not f.exists]
        for f in others[:_MAX_LISTED]:
            console.print(f"  {reason_line(f)}", highlight=False, soft_wrap=True, markup=False)
        if len(others) > _MAX_LISTED:
            console.print(f"  … and {len(others) - _MAX_LISTED} more (--report lists them all)",
                          highlight=False)
        if exists:
            console.print(f"  {len(exists)} output(s) exist, e.g. {exists[0].output}; pass "
                          "--skip-existing to keep them or --overwrite to replace them",
                          highlight=False, soft_wrap=True, markup=False)
    if result.interrupted:
        console.print("[yellow]interrupted[/]: run again with --skip-existing to continue",
                      highlight=False)
    elif result.stopped:
        console.print("[yellow]stopped at the first failure (--fail-fast)[/]", highlight=False)
