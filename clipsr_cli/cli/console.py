"""Consoles and run-wide output state. Messages and progress go to stderr; results to stdout.

Rich honours ``NO_COLOR`` and disables colour and live progress when stderr is not a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

err_console = Console(stderr=True)


@dataclass
class _State:
    verbose: bool = False
    quiet: bool = False


state = _State()


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    state.verbose = verbose
    state.quiet = quiet


def info(message: str) -> None:
    if not state.quiet:
        err_console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
