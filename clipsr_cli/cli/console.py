"""The CLI's consoles and run-wide output state. Messages and progress go to stderr; results
to stdout.

Rich honours ``NO_COLOR`` and disables colour and live progress when stderr is not a terminal.
Library notes and warnings arrive through the ``clipsr`` logger (:data:`clipsr_cli.errors.log`);
:func:`configure` installs the one handler that prints them here, in command-line words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rich.console import Console

from clipsr_cli.cli import render
from clipsr_cli.errors import log

err_console = Console(stderr=True)


@dataclass
class _State:
    verbose: bool = False
    quiet: bool = False
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
    """Set -q/-v for this run and route the library's log here."""
    state.verbose = verbose
    state.quiet = quiet
    if _handler not in log.handlers:
        log.addHandler(_handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
