"""``clipsr download`` (fetch, list, verify, install by hand) and ``clipsr models`` (a table).

Thin: the work is in ``clipsr_cli.hub`` (``registry``, ``store``, ``fetch``). Results (paths, the
table, the list) go to stdout; progress and messages to stderr. :func:`download_bar` is the
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


def _status_label(entry, status: str) -> str:
    if status == "installed":
        if entry.kind == "pipeline":
            from clipsr_cli.hub.store import pipeline_stages

            built_in = all(e.source == "package" for e in pipeline_stages(entry))
            return "built-in" if built_in else "yes"
        return "built-in" if entry.source == "package" else "yes"
    return {"missing": "no", "damaged": "damaged", "unverified": "unverified"}[status]


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


def _size(entry) -> int | None:
    if entry.kind == "pipeline":
        return None
    if entry.size is not None:
        return entry.size
    from clipsr_cli.hub.store import installed_path

    p = installed_path(entry)
    return p.stat().st_size if p.is_file() else None


def _files_of(entries, store) -> list:
    """Entries with files: each pipeline replaced by its stages, duplicates dropped."""
    out: list = []
    for e in entries:
        for f in (store.pipeline_stages(e) if e.kind == "pipeline" else [e]):
            if f not in out:
                out.append(f)
    return out


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
        from clipsr_cli.cli.console import cli_words, configure, err_console, info
        from clipsr_cli.errors import ClipsrError, DownloadError
        from clipsr_cli.hub import fetch, registry, store

        configure(verbose=verbose, quiet=quiet)
        names = names or []
        modes = sum([all_, list_, verify, src is not None])
        if modes > 1 and not (verify and all_):
            ctx.fail("use one of --all, --list, --verify, --from at a time")
        reg = registry.load_registry()
        entries = [reg.get(n) for n in names]  # fail fast on a misspelt name

        if list_:  # the table of 'clipsr models -v', for the NAMEs given or all
            _print_models(entries or list(reg), verbose=True, quiet=quiet)
            return

        if src is not None:
            if len(entries) != 1:
                ctx.fail("--from installs one file: name exactly one model")
            path = store.install_from_file(entries[0], src)
            info(f"installed {entries[0].name} (sha256 verified)")
            typer.echo(str(path))
            return

        if verify:
            checked = _files_of(entries, store) or [
                e for e in reg if e.kind != "pipeline" and store.install_status(e) != "missing"]
            bad = []
            for e in checked:
                r = store.verify(e)
                if r.status == "ok":
                    typer.echo(f"ok        {e.name}  {r.path}")
                elif r.status == "missing":
                    typer.echo(f"missing   {e.name}")
                    bad.append(e.name)
                else:
                    typer.echo(f"MISMATCH  {e.name}  {r.path}: expected sha256 {e.sha256}, "
                               f"got {r.actual} ({r.size} bytes)")
                    bad.append(e.name)
            if not checked:
                info("no installed models to verify")
            if bad:
                raise DownloadError(f"{len(bad)} of {len(checked)} model file(s) failed "
                                    f"verification ({', '.join(bad)}); they will not be loaded: "
                                    f"run 'clipsr download {' '.join(bad)} --force'")
            return

        if all_:
            entries = []
            for e in reg:
                if e.usable:
                    entries.append(e)
                else:
                    info(f"skipping {e.name} (not usable by CLIP-SR); name it to download it")
        if not entries:
            ctx.fail("name one or more models (see 'clipsr models'), or use --all or --list")
        entries = _files_of(entries, store)  # a pipeline is fetched as its stages
        failed: list[tuple[str, ClipsrError]] = []
        for e in entries:
            if not force and store.install_status(e) == "installed":
                info(f"{e.name} is already installed")
            try:
                with download_bar() as bar:
                    path = fetch.ensure(e, force=force, offline=offline or None, progress=bar)
            except ClipsrError as err:
                if len(entries) == 1:
                    raise
                err_console.print("[bold red]error:[/] ", end="", highlight=False)
                err_console.print(cli_words(str(err)), highlight=False, soft_wrap=True,
                                  markup=False)
                failed.append((e.name, err))
                continue
            typer.echo(str(path))
        if failed:
            raise DownloadError(f"{len(failed)} of {len(entries)} downloads failed: "
                                f"{', '.join(n for n, _ in failed)}")

    @app.command("models")
    def models(quiet: Quiet = False, verbose: Annotated[bool, typer.Option(
            "--verbose", "-v", help="Also each model's description, and the entries CLIP-SR "
            "cannot use.")] = False) -> None:
        """List registered models: scale, text-guided or not, size, license, installed
        (-q: names only)."""
        from clipsr_cli.cli.console import configure
        from clipsr_cli.hub import registry

        configure(verbose=verbose, quiet=quiet)
        _print_models(list(registry.load_registry()), verbose=verbose, quiet=quiet)


def _print_models(entries: list, *, verbose: bool, quiet: bool) -> None:
    """The models table on stdout (``quiet``: one name per line). Without ``verbose`` an entry
    CLIP-SR cannot use is left out and counted in a note on stderr."""
    from rich.console import Console
    from rich.table import Table

    from clipsr_cli.cli.console import info
    from clipsr_cli.hub import store

    hidden = [e.name for e in entries if not e.usable and not verbose]
    shown = [e for e in entries if e.usable or verbose]
    if quiet:
        for e in shown:
            typer.echo(e.name)
        return
    table = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for name, kw in (("name", {}), ("kind", {}), ("scale", {"justify": "right"}), ("text", {}),
                     ("size", {"justify": "right"}), ("license", {}), ("installed", {})):
        table.add_column(name, no_wrap=True, **kw)
    if verbose:
        table.add_column("description", overflow="fold")
    for e in shown:
        text = "-" if e.text_guided is None else ("yes" if e.text_guided else "no")
        row = [e.name, "CLIP" if e.kind == "clip" else e.kind,
               f"x{e.scale}" if e.scale else "-", text, format_size(_size(e)), e.license,
               _status_label(e, store.install_status(e))]
        table.add_row(*row, *([e.description] if verbose else []))
    Console(highlight=False, width=max(160, Console().width) if verbose else None).print(table)
    if hidden:
        info(f"not listed: {', '.join(hidden)} (registered, but not usable by CLIP-SR); -v lists "
             "every entry")
