"""``clipsr batch``: folders, globs and lists of images, one model load.

Thin: parses options, calls ``clipsr_cli.tasks.batch.run_batch`` with a
:class:`~clipsr_cli.cli.batch_view.BatchView`, prints the summary, picks the exit status.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from clipsr_cli.cli import options as o


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        inputs: Annotated[list[str], typer.Argument(
            metavar="INPUT", show_default=False,
            help="Folders, image files, globs, @LIST (a text file with one path per line) or "
                 "- (paths on stdin).")],
        output: Annotated[str, typer.Option(
            "--output", "-o", show_default=False,
            help="Output folder (created if missing). Outputs are named <stem>_x<s>.<ext> "
                 "(see --outscale, --width).")],
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
            "--shard", metavar="K/N|auto", help="Process only shard K of N (1-based; by a hash "
            "of each file's relative path), e.g. for job arrays. auto: K/N from SLURM_ARRAY_TASK_ID"
            " (job arrays), JOB_COMPLETION_INDEX + CLIPSR_SHARD_COUNT (Kubernetes indexed Jobs) or "
            "RANK/WORLD_SIZE (torchrun; the default when WORLD_SIZE > 1).")] = None,
        format: o.Format = None,
        suffix: o.Suffix = None,
        quality: o.Quality = 95,
        report: Annotated[Optional[str], typer.Option(
            "--report", metavar="FILE.json", help="Write the summary and every file's outcome "
            "as JSON. {shard} in the name becomes KofN (one report per shard, e.g. under "
            "torchrun).")] = None,
        io_threads: Annotated[int, typer.Option(
            "--io-threads", min=0, max=64, help="Background threads for decoding and for "
            "encoding (0: everything in one thread).")] = 2,
        batch_size: Annotated[int, typer.Option(
            "--batch-size", metavar="B", help="Images of the same size that go through the "
            "network together, when they fit untiled (worth it on a GPU; on a CPU one at a time "
            "is as fast).")] = 1,
        scale: o.Scale = None,
        outscale: o.Outscale = None,
        width: o.Width = None,
        height: o.Height = None,
        passes: o.Passes = 1,
        degradation: o.DegradationOpt = "auto",
        denoise: o.Denoise = None,
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
        written to a hidden temporary file (.NAME.HOST~PID~XXXX.part) and renamed, so a partial
        output never exists; a re-run removes the temporary files a killed run left behind, never
        those of a run still writing (with --skip-existing, two runs can share one -o).

        Written outputs are printed on stdout, one per line; progress and the summary go to
        stderr. Under torchrun each process takes its share of the files (RANK/WORLD_SIZE) and,
        with --device auto, its own GPU (cuda:LOCAL_RANK). Exit status: 0 every image succeeded (or was skipped), 1 error before the run
        (bad input, model), 2 usage error, 3 some images failed, 130 interrupted.
        """
        from clipsr_cli.cli.batch_view import BatchView, print_summary
        from clipsr_cli.cli.console import cli_words, configure, err_console, state
        from clipsr_cli.cli.exits import EXIT_INTERRUPTED, EXIT_PARTIAL
        from clipsr_cli.tasks.checks import check_batch

        configure(verbose=verbose, quiet=quiet)
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   tile_overlap=tile_overlap, passes=passes,
                                   batch_size=batch_size, degradation=degradation,
                                   denoise=denoise)  # before torch is imported
        check_batch(skip_existing=skip_existing, overwrite=overwrite, io_threads=io_threads,
                    shard=shard, text=text, captions=captions,
                    caption_sidecar=caption_sidecar, suffix=suffix, outscale=outscale,
                    width=width, height=height, scale=scale, format=format, quality=quality)
        from clipsr_cli.tasks.batch import run_batch, write_report

        view = BatchView(err_console, quiet=state.quiet, verbose=state.verbose)
        try:
            result = run_batch(
                inputs=inputs, output_dir=output, recursive=recursive, glob=glob, text=text,
                captions=captions, caption_sidecar=caption_sidecar, skip_existing=skip_existing,
                overwrite=overwrite, fail_fast=not keep_going, shard=shard, format=format,
                suffix=suffix, quality=quality, io_threads=io_threads, model=model, scale=scale,
                options=options, outscale=outscale, width=width, height=height,
                report=report, on_event=view)
        finally:
            view.close()
        print_summary(result, err_console)
        if report is not None:
            write_report(report, result, words=cli_words)
        if result.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        if result.failed:
            raise typer.Exit(EXIT_PARTIAL)
