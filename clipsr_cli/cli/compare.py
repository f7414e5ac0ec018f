"""``clipsr compare``: one image through several models, a labelled grid and the times (and,
with ``--ref``, Y-PSNR/SSIM); the work is in ``clipsr_cli.tasks.compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from clipsr_cli.cli import completion
from clipsr_cli.cli import options as o


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_(
        input: Annotated[str, typer.Argument(help="Low-resolution image to upscale.",
                                             show_default=False)],
        models: Annotated[Optional[List[str]], typer.Option(
            "--model", "-m", metavar="MODEL", help="A model to compare (repeat: -m A -m B ...): "
            "registered name, "
            "clipsr .safetensors checkpoint or third-party SR file (.pth/.safetensors).",
            show_default=False, autocompletion=completion.models)] = None,
        text: o.Text = None,
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Grid image to write. Default: <stem>_compare.png beside "
            "the input.", show_default=False)] = None,
        crop: Annotated[Optional[str], typer.Option(
            "--crop", metavar="X,Y,W,H", help="Region to zoom, in input pixels. Default: where "
            "the models differ most.", show_default=False)] = None,
        ref: Annotated[Optional[str], typer.Option(
            "--ref", metavar="HR", help="The high-resolution original of INPUT: also print "
            "Y-PSNR/SSIM per model (border = scale).", show_default=False)] = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        tile_overlap: o.TileOverlap = None,
        degradation: o.DegradationOpt = "auto",
        denoise: o.Denoise = None,
        overwrite: o.Overwrite = False,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Compare models on one image: a grid of their outputs with a zoomed crop, labelled
        with name and time; the table of times (and scores with --ref) on stdout."""
        from clipsr_cli.cli.console import configure, info
        from clipsr_cli.tasks.checks import parse_crop_spec

        configure(verbose=verbose, quiet=quiet)
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   tile_overlap=tile_overlap, degradation=degradation,
                                   denoise=denoise)
        if crop is not None:
            parse_crop_spec(crop)  # before torch is imported
        from clipsr_cli.tasks.compare import compare

        if output is None:
            p = Path(input).expanduser()
            output = str(p.with_name(f"{p.stem}_compare.png"))

        def done(run) -> None:
            info(f"{run.name}: ×{run.scale} in {run.seconds:.2f} s (loaded in "
                 f"{run.load_seconds:.2f} s)")

        result = compare(input=input, models=models or [], text=text, ref=ref, crop=crop,
                         output=output, overwrite=overwrite, options=options, on_result=done)
        typer.echo(format_table(result))
        x, y, w, h = result.crop
        how = "chosen where the models differ most" if result.crop_auto else "as given"
        info(f"crop {x},{y},{w},{h} ({how}); grid: {result.output}")


def format_table(result) -> str:
    """The per-model lines printed on stdout (tab-separated, a header first)."""
    scored = result.reference is not None
    head = ["model", "scale", "seconds"] + (["y_psnr_db", "ssim"] if scored else [])
    rows = ["\t".join(head)]
    for r in (*result.runs, *((result.bicubic,) if scored else ())):
        row = [r.name, f"x{r.scale}", "-" if r.seconds is None else f"{r.seconds:.3f}"]
        if scored:
            row += [f"{r.psnr:.2f}", f"{r.ssim:.4f}"]
        rows.append("\t".join(row))
    return "\n".join(rows)
