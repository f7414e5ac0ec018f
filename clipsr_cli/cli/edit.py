"""``clipsr edit``: super-resolution editing by text; the work is in ``clipsr_cli.tasks.edit``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from clipsr_cli.cli import completion
from clipsr_cli.cli import options as o


def register(app: typer.Typer) -> None:
    @app.command("edit")
    def edit(
        input: Annotated[str, typer.Argument(
            metavar="INPUT", help="Photo to edit (or, with --as-lr, the low-resolution image), "
            "or - for stdin.", show_default=False)],
        target_text: Annotated[str, typer.Option(
            "--text", "-t", help="Target text: what the result should show.",
            show_default=False)],
        source_text: Annotated[Optional[str], typer.Option(
            "--source-text", help="Text describing the input; --strength/--sweep move from it to "
            "the target. Default: no text (the model's null embedding).",
            show_default=False)] = None,
        strength: Annotated[Optional[float], typer.Option(
            "--strength", "-a", help="A in source + A·(target − source), in CLIP space: 1 = the "
            "target, 0 = the source, > 1 extrapolates. [default: 1]", show_default=False)] = None,
        sweep: Annotated[Optional[int], typer.Option(
            "--sweep", min=2, help="Write N results with A evenly spaced from 0 to 1.",
            show_default=False)] = None,
        grid: Annotated[bool, typer.Option(
            "--grid", help="Also write <base>_grid.png: the input and the results side by side, "
            "labelled with prompt and A; outputs under 256 px are enlarged (nearest).")] = False,
        gif: Annotated[bool, typer.Option(
            "--gif", help="Also write <base>.gif, an animation of the sweep.")] = False,
        as_lr: Annotated[bool, typer.Option(
            "--as-lr", help="INPUT is the low-resolution image (output S times larger); by "
            "default INPUT is a photo, downscaled ×S first, and the edit has its size.")] = False,
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Output file, folder (an existing one, or a name ending in "
            "/, created with its parents if missing) or - for stdout. Default: <stem>_edit.<ext> "
            "(sweep: <stem>_edit_<i>.<ext>) beside the input.",
            show_default=False)] = None,
        report: Annotated[Optional[str], typer.Option(
            "--report", metavar="FILE.json", help="Write the outputs, strengths and LR consistency "
            "as JSON.", show_default=False)] = None,
        scale: o.Scale = None,
        model: Annotated[Optional[str], typer.Option(
            "--model", "-m", help="Text-guided model: registered name or .safetensors path. "
            "Default: the first registered text-guided model for the scale.",
            show_default=False, autocompletion=completion.models)] = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        tile_overlap: o.TileOverlap = None,
        format: o.Format = None,
        quality: o.Quality = 95,
        overwrite: o.Overwrite = False,
        overwrite_input: o.OverwriteInput = False,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Edit an image by text: super-resolve it guided by a new caption, keeping it consistent
        with the low-resolution content (reports that consistency in dB on stderr)."""
        from pathlib import Path

        from clipsr_cli.cli.console import configure, tile_progress
        from clipsr_cli.tasks.checks import check_edit

        configure(verbose=verbose, quiet=quiet)
        check_edit(target_text=target_text, strength=strength, sweep=sweep, gif=gif)  # no torch
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   tile_overlap=tile_overlap)
        from clipsr_cli.tasks.edit import edit_file

        name = "<stdin>" if input == "-" else Path(input).name
        with tile_progress(f"edit {name}") as progress:
            result = edit_file(input=input, target_text=target_text, source_text=source_text,
                               strength=strength, sweep=sweep, grid=grid, gif=gif, scale=scale,
                               as_lr=as_lr, model=model, options=options, output=output,
                               format=format, quality=quality, overwrite=overwrite,
                               overwrite_input=overwrite_input, report=report,
                               progress=progress)
        for path in (*(out.path for out in result.outputs), result.plan.grid, result.plan.gif):
            if path is not None:
                typer.echo(str(path))  # the results, on stdout
