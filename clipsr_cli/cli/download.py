"""``clipsr download`` (fetch, list, verify, install by hand) and ``clipsr models`` (a table).

Thin: the work is :mod:`clipsr_cli.tasks.download` (typed results, rendered here). Results (paths,
the table, the list) go to stdout; progress and messages to stderr. :func:`download_bar` is the
progress bar any command can hand to the hub's ``progress=`` parameter.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from clipsr_cli.cli import completion

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")]


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


class _Bar:
    """A Rich progress bar on stderr (bytes, speed, ETA), one row per file; the hub calls it
    as ``progress(file_name, done_bytes, total_bytes_or_None)``."""

    def __init__(self) -> None:
        self.progress = None
        self.tasks: dict[str, object] = {}

    def __call__(self, file: str, done: int, total: int | None) -> None:
        if self.progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            from clipsr_cli.cli.console import err_console

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     TimeRemainingColumn(), console=err_console)
            self.progress.start()
        task = self.tasks.get(file)
        if task is None:
            self.tasks[file] = self.progress.add_task(file, total=total, completed=done)
        else:
            self.progress.update(task, total=total, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.tasks = None, {}


@contextmanager
def download_bar() -> Iterator[_Bar | None]:
    """A ``progress=`` callback for the hub's downloads (None with ``--quiet``); the bar is
    drawn on the first byte and closed on exit."""
    from clipsr_cli.cli.console import state

    if state.quiet:
        yield None
        return
    bar = _Bar()
    try:
        yield bar
    finally:
        bar.close()


def register(app: typer.Typer) -> None:
    @app.command("download")
    def download(
        ctx: typer.Context,
        names: Annotated[Optional[list[str]], typer.Argument(
            help="Registered model names (see 'clipsr models').", metavar="NAME",
            show_default=False, autocompletion=completion.downloadable)] = None,
        all_: Annotated[bool, typer.Option(
            "--all", help="Every registered model clipsr can use.")] = False,
        list_: Annotated[bool, typer.Option(
            "--list", help="List registered models and whether they are installed.")] = False,
        verify: Annotated[bool, typer.Option(
            "--verify", help="Re-hash installed files (or NAMEs) and report mismatches.")] = False,
        force: Annotated[bool, typer.Option(
            "--force", help="Download again even when installed.")] = False,
        offline: Annotated[bool, typer.Option(
            "--offline", help="No network (file:// mirrors and --from still work). Also "
            "CLIPSR_OFFLINE=1 or HF_HUB_OFFLINE=1.")] = False,
        src: Annotated[Optional[Path], typer.Option(
            "--from", help="Install a file downloaded by hand as NAME, after checking its "
            "sha256.", show_default=False)] = None,
        quiet: Quiet = False,
        verbose: Verbose = False,
    ) -> None:
        """Download registered models into the cache (sha256-verified, resumable)."""
        from clipsr_cli.cli.console import configure
        from clipsr_cli.tasks import download as task

        configure(verbose=verbose, quiet=quiet)
        modes = sum([all_, list_, verify, src is not None])
        if modes > 1 and not (verify and all_):
            ctx.fail("use one of --all, --list, --verify, --from at a time")
        reg, entries = task.select(names or [])  # fail fast on a misspelt name
        if list_:  # the table of 'clipsr models -v', for the NAMEs given or all
            _print_models(task.list_models(entries or None, every=True), verbose=True,
                          quiet=quiet)
        elif src is not None:
            if len(entries) != 1:
                ctx.fail("--from installs one file: name exactly one model")
            typer.echo(str(task.install_from_file(entries[0], src)))
        elif verify:
            task.verify_models(reg, entries, each=_print_verified).check()
        else:
            files = task.to_download(reg, entries, every=all_)
            if not files:
                ctx.fail("name one or more models (see 'clipsr models'), or use --all or --list")
            for result in task.download_models(files, force=force, offline=offline,
                                               bar=download_bar):
                _print_fetched(result)

    @app.command("models")
    def models(quiet: Quiet = False, verbose: Annotated[bool, typer.Option(
            "--verbose", "-v", help="Also each model's description, and the entries CLIP-SR "
            "cannot use.")] = False) -> None:
        """List registered models: scale, text-guided or not, size, license, installed
        (-q: names only)."""
        from clipsr_cli.cli.console import configure
        from clipsr_cli.tasks.download import list_models

        configure(verbose=verbose, quiet=quiet)
        _print_models(list_models(every=verbose), verbose=verbose, quiet=quiet)


def _print_verified(r) -> None:
    """One line of ``download --verify`` on stdout."""
    if r.status == "ok":
        typer.echo(f"ok        {r.entry.name}  {r.path}")
    elif r.status == "missing":
        typer.echo(f"missing   {r.entry.name}")
    else:
        typer.echo(f"MISMATCH  {r.entry.name}  {r.path}: expected sha256 {r.entry.sha256}, "
                   f"got {r.actual} ({r.size} bytes)")


def _print_fetched(result) -> None:
    """A downloaded file's path on stdout, or (one of several) its error on stderr."""
    from clipsr_cli.cli.console import cli_words, err_console
    from clipsr_cli.tasks.download import FetchFailed

    if isinstance(result, FetchFailed):
        err_console.print("[bold red]error:[/] ", end="", highlight=False)
        err_console.print(cli_words(str(result.error)), highlight=False, soft_wrap=True,
                          markup=False)
    else:
        typer.echo(str(result.path))


def _print_models(listing, *, verbose: bool, quiet: bool) -> None:
    """The models table of a :class:`~clipsr_cli.tasks.download.ModelList` on stdout
    (``quiet``: one name per line), and a note on stderr naming the entries it leaves out."""
    from rich.console import Console
    from rich.table import Table

    from clipsr_cli.cli.console import info
    from clipsr_cli.hub.entries import ClipEntry

    if quiet:
        for e in listing.shown:
            typer.echo(e.name)
        return
    table = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for name, kw in (("name", {}), ("kind", {}), ("scale", {"justify": "right"}), ("text", {}),
                     ("size", {"justify": "right"}), ("license", {}), ("installed", {})):
        table.add_column(name, no_wrap=True, **kw)
    if verbose:
        table.add_column("description", overflow="fold")
    for r in listing.rows():
        e = r.entry
        text = "-" if e.text_guided is None else ("yes" if e.text_guided else "no")
        row = [e.name, "CLIP" if isinstance(e, ClipEntry) else e.kind,
               f"x{e.scale}" if e.scale else "-", text, format_size(r.size), e.license,
               r.installed]
        table.add_row(*row, *([e.description] if verbose else []))
    Console(highlight=False, width=max(160, Console().width) if verbose else None).print(table)
    if listing.hidden:
        info(f"not listed: {', '.join(listing.hidden)} (registered, but not usable by CLIP-SR); "
             "-v lists every entry")
