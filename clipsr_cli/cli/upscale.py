"""``clipsr upscale``: one image in, one image out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clipsr_cli.cli import options as o


def register(app: typer.Typer) -> None:
    @app.command("upscale")
    def upscale(
        input: o.Input,
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Output file or directory, or - for stdout. Default: "
            "<stem>_x<s>.<ext> beside the input (see --outscale, --width).")] = None,
        scale: o.Scale = None,
        outscale: o.Outscale = None,
        width: o.Width = None,
        height: o.Height = None,
        passes: o.Passes = 1,
        degradation: o.DegradationOpt = "auto",
        denoise: o.Denoise = None,
        text: o.Text = None,
        model: o.Model = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        tile_overlap: o.TileOverlap = None,
        format: o.Format = None,
        quality: o.Quality = 95,
        suffix: o.Suffix = None,
        overwrite: o.Overwrite = False,
        overwrite_input: o.OverwriteInput = False,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Upscale one image 4x, 8x or 16x, optionally guided by a caption."""
        from clipsr_cli.cli.console import configure, tile_progress
        configure(verbose=verbose, quiet=quiet)
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   tile_overlap=tile_overlap, passes=passes,
                                   degradation=degradation,
                                   denoise=denoise)  # a bad value: exit 2 before torch
        from clipsr_cli.tasks.upscale import upscale_file

        name = "<stdin>" if input == "-" else Path(input).name
        with tile_progress(f"upscale {name}") as progress:
            dest = upscale_file(input=input, output=output, scale=scale, text=text, model=model,
                                options=options, format=format, quality=quality,
                                overwrite=overwrite, overwrite_input=overwrite_input,
                                suffix=suffix, outscale=outscale, width=width, height=height,
                                progress=progress)
        if dest is not None:
            typer.echo(str(dest))  # the result, on stdout
