"""The CLI's consoles and run-wide output state. Messages and progress go to stderr; results
to stdout.

Rich honours ``NO_COLOR`` and disables colour and live progress when stderr is not a terminal.
Library notes and warnings arrive through the ``clipsr`` logger (:data:`clipsr_cli.errors.log`);
:func:`configure` installs the one handler that prints them here, in command-line words.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rich.console import Console

from clipsr_cli.cli import render
from clipsr_cli.errors import log

err_console = Console(stderr=True)


@dataclass
class _State:
    verbose: bool = False
    quiet: bool = False
    root_verbose: bool = False  # ``clipsr -v COMMAND``: holds for the command too
    root_quiet: bool = False
    flags: dict[str, str] = field(default_factory=dict)  # python name → flag of the command


state = _State()


def cli_words(message: str) -> str:
    return render.to_cli(message, state.flags)


def info(message: str) -> None:
    if not state.quiet:
        err_console.print(cli_words(message), highlight=False, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err_console.print("[yellow]warning:[/] ", end="", highlight=False)
    err_console.print(cli_words(message), highlight=False, soft_wrap=True, markup=False)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            warn(msg)
        elif record.levelno >= logging.INFO or state.verbose:
            info(msg)


_handler = _Handler()


def use_command(command) -> None:
    """Learn the running command's flags, so messages name them (called by the app)."""
    state.flags = render.flag_names(command)


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    """Set -q/-v for this run (given to the command or to ``clipsr`` itself) and route the
    library's log here."""
    state.verbose = verbose or state.root_verbose
    state.quiet = quiet or state.root_quiet
    verbose = state.verbose
    if _handler not in log.handlers:
        log.addHandler(_handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def tile_progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A transient tile bar on stderr (only on a terminal and without -q); yields the
    ``progress(done, total)`` callback to give the library (None: no bar)."""
    if state.quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tiles"), TimeRemainingColumn(), console=err_console, transient=True,
                  redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
