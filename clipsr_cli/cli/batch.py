"""``clipsr batch``: folders, globs and lists of images, one model load.

Thin: parses options, calls ``clipsr_cli.tasks.batch.run_batch``, prints, picks the exit status.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from clipsr_cli.cli import options as o


def _shard(value: Optional[str]) -> Optional[str]:
    if value is not None:
        from clipsr_cli.tasks.batch import parse_shard
        from clipsr_cli.errors import InputError

        try:
            parse_shard(value)
        except InputError as e:
            raise typer.BadParameter(str(e)) from None
    return value


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        inputs: Annotated[list[str], typer.Argument(
            metavar="INPUT", show_default=False,
            help="Folders, image files, globs, @LIST (a text file with one path per line) or "
                 "- (paths on stdin).")],
        output: Annotated[str, typer.Option(
            "--output", "-o", show_default=False,
            help="Output folder (created if missing). Outputs are named <stem>_x<s>.<ext>.")],
        recursive: Annotated[bool, typer.Option(
            "--recursive", "-r", help="Walk subfolders and mirror the tree under -o.")] = False,
        glob: Annotated[Optional[str], typer.Option(
            "--glob", metavar="PATTERN", help="Only files found in folders whose name matches "
            "PATTERN (e.g. '*.png'; case-insensitive; with a / it matches the relative path).")
        ] = None,
        text: o.Text = None,
        captions: Annotated[Optional[str], typer.Option(
            "--captions", metavar="FILE", help="Caption per image from a CSV/TSV (path,caption), "
            "JSON Lines (path or file_name, caption or text) or JSON {path: caption} file.")
        ] = None,
        caption_sidecar: Annotated[bool, typer.Option(
            "--caption-sidecar", help="Caption per image from NAME.txt beside NAME.jpg.")
        ] = False,
        skip_existing: Annotated[bool, typer.Option(
            "--skip-existing", help="Skip images whose output exists (resume an interrupted "
            "run).")] = False,
        overwrite: o.Overwrite = False,
        keep_going: Annotated[bool, typer.Option(
            "--keep-going/--fail-fast", help="On a file that cannot be processed: report it and "
            "go on (default), or stop the run.")] = True,
        shard: Annotated[Optional[str], typer.Option(
            "--shard", metavar="K/N", callback=_shard, help="Process only shard K of N "
            "(1-based; by a hash of each file's relative path), e.g. for job arrays.")] = None,
        format: o.Format = None,
        suffix: Annotated[Optional[str], typer.Option(
            "--suffix", help="Replaces _x<s> in output names (may be empty).")] = None,
        quality: o.Quality = 95,
        report: Annotated[Optional[str], typer.Option(
            "--report", metavar="FILE.json", help="Write the summary and every file's outcome "
            "as JSON.")] = None,
        io_threads: Annotated[int, typer.Option(
            "--io-threads", min=0, max=64, help="Background threads for decoding and for "
            "encoding (0: everything in one thread).")] = 2,
        scale: o.Scale = None,
        model: o.Model = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        tile_overlap: o.TileOverlap = None,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Upscale many images with one model load; resumable, one bad file never stops the run.

        Non-image and hidden files are skipped quietly (and counted). An output that already
        exists is never replaced without --overwrite: without --skip-existing or --overwrite
        that image is reported as failed (exit status 3) and its output left alone. Outputs are
        written to a hidden temporary file (.NAME.XXXX.part) and renamed, so a partial output
        never exists; a re-run removes the temporary files a killed run left behind.

        Written outputs are printed on stdout, one per line; progress and the summary go to
        stderr. Exit status: 0 every image succeeded (or was skipped), 1 error before the run
        (bad input, model), 2 usage error, 3 some images failed, 130 interrupted.
        """
        from clipsr_cli.tasks.batch import parse_shard, print_summary, run_batch, write_report
        from clipsr_cli.cli.app import EXIT_INTERRUPTED, EXIT_PARTIAL
        from clipsr_cli.cli.console import configure

        configure(verbose=verbose, quiet=quiet)
        if skip_existing and overwrite:
            raise typer.BadParameter("use either --skip-existing or --overwrite, not both",
                                     param_hint="'--skip-existing' / '--overwrite'")
        if sum((bool(text), captions is not None, caption_sidecar)) > 1:
            raise typer.BadParameter("use only one of them",
                                     param_hint="'--text' / '--captions' / '--caption-sidecar'")

        def emit(r) -> None:
            if r.status == "done":
                typer.echo(r.output)  # the result, on stdout

        result = run_batch(
            inputs=inputs, output_dir=output, recursive=recursive, glob=glob, text=text,
            captions=captions, caption_sidecar=caption_sidecar,
            existing="skip" if skip_existing else "overwrite" if overwrite else "fail",
            fail_fast=not keep_going, shard=parse_shard(shard) if shard else None,
            format=format, suffix=suffix, quality=quality, io_threads=io_threads, model=model,
            scale=scale, device=device, precision=precision, tile=tile,
            tile_overlap=tile_overlap, on_result=emit)
        print_summary(result)
        if report is not None:
            write_report(report, result)
        if result.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        if result.failed:
            raise typer.Exit(EXIT_PARTIAL)
