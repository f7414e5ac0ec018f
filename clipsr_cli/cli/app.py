"""The ``clipsr`` command line: a Typer app whose commands are thin wrappers over the library.

The one error handler is here: every :class:`~clipsr_cli.errors.ClipsrError` becomes one line on
stderr, in command-line words, and its ``exit_code`` (:mod:`clipsr_cli.cli.exits`: 1 error,
2 usage error, 3 ``batch`` partial, 130 interrupted: :func:`main` then ends the process by the
signal itself, see :mod:`clipsr_cli.cli.signals`).
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument, TyperGroup

from clipsr_cli import __version__
from clipsr_cli.cli import options as o
from clipsr_cli.cli import signals
from clipsr_cli.cli.console import cli_words, err_console, state, use_command
from clipsr_cli.cli.exits import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401
                                  EXIT_PARTIAL, EXIT_USAGE)
from clipsr_cli.errors import ClipsrError, is_out_of_memory


class _Argument(TyperArgument):
    """An argument shown as its metavar (``INPUT``, ``[INPUT]...``), not ``{input}`` / ``input
    <str>``."""

    def _usage_display_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if not self.required:
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

    def _rich_display_name(self) -> str:  # the Arguments section: INPUT, MODEL (not input)
        name = self.metavar or (self.name or "").upper()
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

    def display_type_rich(self, ctx):
        return None


def _refuse_repeated(cmd, args: list[str]) -> None:
    """A usage error (exit 2) for an option of one value given more than once (``-t a -t b``):
    Click would silently keep the last one. Flags and options that take many values are free."""
    single = {}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option" and not (
                p.multiple or p.count or p.is_flag):
            for opt in p.opts:
                single[opt] = p
    seen: dict[str, int] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            break
        opt = tok.split("=", 1)[0] if tok.startswith("--") else tok[:2]
        p = single.get(opt) if tok.startswith("-") else None
        if p is not None:
            seen[p.name] = seen.get(p.name, 0) + 1
            if seen[p.name] > 1:
                raise typer.BadParameter(f"{p.opts[0]} was given {seen[p.name]} times, but it takes "
                                       "one value; pass it once (run the command once per value)")
            if tok == opt:  # the value is the next argument: never read as an option
                i += 1
        i += 1


class _Group(TyperGroup):
    """Turns every ``ClipsrError`` (from any command) into one line on stderr and its exit
    status (``UsageError``: 2)."""

    def list_commands(self, ctx) -> list[str]:  # keep declaration order in --help
        return list(self.commands)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            use_command(cmd)  # messages from the library name this command's flags
            for p in cmd.params:
                if type(p) is TyperArgument:
                    p.__class__ = _Argument
            _refuse_repeated(cmd, rest)
        return name, cmd, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipsrError as e:
            if state.verbose:
                err_console.print_exception()
            err_console.print("[bold red]error:[/] ", end="", highlight=False)
            err_console.print(cli_words(str(e)), highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            signals.note(getattr(e, "signum", signal.SIGINT))
            err_console.print("[yellow]interrupted[/]", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            if state.verbose:
                err_console.print_exception()
            err_console.print("[bold red]error:[/] out of memory; use a smaller --tile "
                              "(e.g. --tile 128) or a smaller image", highlight=False)
            raise typer.Exit(EXIT_ERROR) from None


app = typer.Typer(
    name="clipsr",
    cls=_Group,
    help="Text-guided image super-resolution (CLIP-SR): upscale images 4x, 8x or 16x, "
         "optionally guided by a caption.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    quiet: o.Quiet = False,
    verbose: o.Verbose = False,
) -> None:
    """Text-guided image super-resolution."""
    state.root_quiet, state.root_verbose = quiet, verbose


def _register() -> None:
    from clipsr_cli.cli import batch
    from clipsr_cli.cli import compare
    from clipsr_cli.cli import download
    from clipsr_cli.cli import edit
    from clipsr_cli.cli import eval
    from clipsr_cli.cli import inspect
    from clipsr_cli.cli import train
    from clipsr_cli.cli import upscale
    from clipsr_cli.cli import video

    upscale.register(app)
    batch.register(app)
    video.register(app)
    edit.register(app)
    train.register(app)
    download.register(app)
    eval.register(app)
    compare.register(app)
    inspect.register(app)


_register()


def main() -> None:
    """The ``clipsr`` program: the app, and on Ctrl-C / SIGTERM, after its cleanup, the end by
    that signal (:mod:`clipsr_cli.cli.signals`), so that a shell loop running clipsr stops too."""
    try:
        with signals.handling():
            app(prog_name="clipsr")
    except (SystemExit, KeyboardInterrupt):
        signals.die()
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
