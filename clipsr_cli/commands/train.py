"""`clipsr train` (not available yet)."""

from __future__ import annotations

import typer

from clipsr_cli.console import err_console


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                 help="Not available yet.")
    def _cmd() -> None:
        err_console.print("error: 'clipsr train' is not available yet in this version", highlight=False)
        raise typer.Exit(1)
