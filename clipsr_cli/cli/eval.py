"""``clipsr eval``: PSNR/SSIM of a model against bicubic on your HR images."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from clipsr_cli.cli import options as o


def fmt(x: float | None, digits: int = 2) -> str:
    """A score for the table: ``-`` where it could not be computed."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        data: Annotated[str, typer.Option("--data", "-d", help="HR images: a folder, a manifest, "
                                          "or a birds/celeba/coco root (its test split).")],
        scale: o.Scale = None,
        model: o.Model = None,
        text: o.Text = None,
        captions: Annotated[Optional[str], typer.Option(
            help="CSV/JSONL/JSON map from image path to caption.")] = None,
        format: Annotated[str, typer.Option("--format", help="Dataset layout: auto, folder, "
                                            "manifest, birds, celeba or coco.")] = "auto",
        split: Annotated[str, typer.Option(help="Split for layouts that have one.")] = "test",
        limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate at most N images.")] = None,
        resizer: Annotated[str, typer.Option(
            "--resizer", help="How the LR is made from each HR image: matlab (MATLAB bicubic, "
            "the training degradation), pil-bicubic or lanczos (Pillow), to check that the "
            "model does not depend on one resizer.")] = "matlab",
        report: Annotated[Optional[str], typer.Option(
            help="Write per-image and mean scores to FILE.json or FILE.csv.")] = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Score a model against bicubic: Y-PSNR/SSIM (border = scale) and RGB PSNR."""
        from rich.console import Console
        from rich.table import Table

        from clipsr_cli.cli.console import configure, info, tile_progress, warn
        from clipsr_cli.tasks.evaluate import evaluate, write_report
        from clipsr_cli.tasks.upscale import check_options, load_upscaler

        configure(verbose=verbose, quiet=quiet)
        check_options(scale=scale, device=device, precision=precision, tile=tile)
        up = load_upscaler(model=model, scale=scale, device=device, precision=precision,
                           tile=tile, tile_overlap=None)
        with tile_progress(f"eval ×{up.scale}") as progress:
            rep = evaluate(upscaler=up, data=data, text=text, captions=captions, format=format,
                           split=split, limit=limit, resizer=resizer, progress=progress)
        table = Table(title=f"{up.name} ×{up.scale} on {data} (Y channel, border {up.scale}, "
                            f"LR by {rep.resizer})")
        for col in ("image", "bicubic dB", "model dB", "gain dB", "bicubic SSIM", "model SSIM",
                    "RGB dB (bic → model)"):
            table.add_column(col, justify="left" if col == "image" else "right")
        if rep.images and rep.images[0].clip_score is not None:
            table.add_column("CLIP score", justify="right")
        for i in rep.images:
            row = [i.name, fmt(i.bicubic_psnr), fmt(i.model_psnr), f"{i.gain:+.2f}",
                   fmt(i.bicubic_ssim, 4), fmt(i.model_ssim, 4),
                   f"{fmt(i.bicubic_psnr_rgb)} → {fmt(i.model_psnr_rgb)}"]
            if len(table.columns) > 7:
                row.append(fmt(i.clip_score, 3))
            table.add_row(*row)
        m = rep.summary()
        row = ["mean", fmt(m["bicubic_psnr"]), fmt(m["model_psnr"]), f"{m['gain']:+.2f}",
               fmt(m["bicubic_ssim"], 4), fmt(m["model_ssim"], 4),
               f"{fmt(m['bicubic_psnr_rgb'])} → {fmt(m['model_psnr_rgb'])}"]
        if len(table.columns) > 7:
            row.append(fmt(m["clip_score"], 3))
        table.add_row(*row, style="bold")
        Console(width=max(120, Console().width)).print(table)  # the result: stdout
        info(f"improved over bicubic on {rep.improved}/{len(rep.images)} images")
        if rep.flagged:
            warn(f"invented texture (worse than bicubic on smooth regions) in "
                 f"{len(rep.flagged)}/{len(rep.images)} images: {', '.join(rep.flagged)}")
        else:
            info("smooth-region check: no invented texture")
        for note in rep.notes:
            info(note)
        if report:
            info(f"wrote {write_report(rep, report)}")
