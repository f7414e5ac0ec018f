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
        degrade: Annotated[Optional[list[str]], typer.Option(
            "--degrade", metavar="CONDITION", help="How the LR file is made, as a user's file would be: clean "
            "(8-bit PNG), jpeg:Q (Pillow JPEG at quality Q, 4:2:0) or noise:S (Gaussian std S "
            "in 0-255 units, 8-bit PNG). Repeat it or give a comma list to score several "
            "conditions; bicubic starts from the same degraded LR.")] = None,
        report: Annotated[Optional[str], typer.Option(
            help="Write per-image and mean scores to FILE.json or FILE.csv.")] = None,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        degradation: o.DegradationOpt = "auto",
        denoise: o.Denoise = None,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Score a model against bicubic: Y-PSNR/SSIM (border = scale) and RGB PSNR."""
        from rich.console import Console

        from clipsr_cli.cli.console import configure, info, tile_progress, warn
        from clipsr_cli.data.conditions import parse_degradations
        from clipsr_cli.tasks.checks import check_eval

        configure(verbose=verbose, quiet=quiet)
        check_eval(resizer=resizer, text=text, captions=captions)  # before torch is imported
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   degradation=degradation, denoise=denoise)
        conditions = parse_degradations(degrade)
        from clipsr_cli.tasks.evaluate import check_report, evaluate, write_report
        from clipsr_cli.tasks.upscale import check_device_here, check_values, load_upscaler

        check_values(scale=scale)
        check_device_here(options)
        if report:
            check_report(report, data=data, captions=captions)
        up = load_upscaler(model=model, scale=scale, options=options)
        reports = []
        for cond in conditions:
            with tile_progress(f"eval ×{up.scale} {cond}") as progress:
                reports.append(evaluate(upscaler=up, data=data, text=text, captions=captions,
                                        format=format, split=split, limit=limit, resizer=resizer,
                                        degrade=cond, progress=progress))
        console = Console(width=max(120, Console().width))  # the results: stdout
        for rep in reports:
            console.print(_image_table(rep, up, data))
        if len(reports) > 1:
            console.print(_condition_table(reports, up, data))
        for rep in reports:
            at = f"{rep.degrade}: " if len(reports) > 1 else ""
            info(f"{at}improved over bicubic on {rep.improved}/{len(rep.images)} images")
            if rep.flagged:
                warn(f"{at}invented texture (worse than bicubic on smooth regions) in "
                     f"{len(rep.flagged)}/{len(rep.images)} images: {', '.join(rep.flagged)}")
            else:
                info(f"{at}smooth-region check: no invented texture")
        for note in dict.fromkeys(n for rep in reports for n in rep.notes):
            info(note)
        if report:
            info(f"wrote {write_report(reports, report)}")


def _image_table(rep, up, data):
    """Per-image scores of one condition, with the mean row."""
    from rich.table import Table

    table = Table(title=f"{up.name} ×{up.scale} on {data} (Y channel, border {up.scale}, "
                        f"LR by {rep.resizer}, {rep.degrade})")
    for col in ("image", "bicubic dB", "model dB", "gain dB", "bicubic SSIM", "model SSIM",
                "RGB dB (bic → model)"):
        table.add_column(col, justify="left" if col == "image" else "right")
    clip = bool(rep.images) and rep.images[0].clip_score is not None
    if clip:
        table.add_column("CLIP score", justify="right")
    if up.blendable:
        table.add_column("denoise", justify="right")
    for i in rep.images:
        row = [i.name, fmt(i.bicubic_psnr), fmt(i.model_psnr), f"{i.gain:+.2f}",
               fmt(i.bicubic_ssim, 4), fmt(i.model_ssim, 4),
               f"{fmt(i.bicubic_psnr_rgb)} → {fmt(i.model_psnr_rgb)}"]
        if clip:
            row.append(fmt(i.clip_score, 3))
        if up.blendable:
            row.append(f"{i.denoise:.2f}")
        table.add_row(*row)
    m = rep.summary()
    row = ["mean", fmt(m["bicubic_psnr"]), fmt(m["model_psnr"]), f"{m['gain']:+.2f}",
           fmt(m["bicubic_ssim"], 4), fmt(m["model_ssim"], 4),
           f"{fmt(m['bicubic_psnr_rgb'])} → {fmt(m['model_psnr_rgb'])}"]
    if clip:
        row.append(fmt(m["clip_score"], 3))
    if up.blendable:
        row.append("")
    table.add_row(*row, style="bold")
    return table


def _condition_table(reports, up, data):
    """One row per LR condition: mean scores, images improved, the smooth-region check."""
    from rich.table import Table

    table = Table(title=f"{up.name} ×{up.scale} on {data}: per LR condition (means)")
    for col in ("LR", "bicubic dB", "model dB", "gain dB", "min gain dB", "improved",
                "invented texture"):
        table.add_column(col, justify="left" if col == "LR" else "right")
    for rep in reports:
        m = rep.summary()
        low = min((i.gain for i in rep.images), default=float("nan"))
        table.add_row(rep.degrade, fmt(m["bicubic_psnr"]), fmt(m["model_psnr"]),
                      f"{m['gain']:+.2f}", f"{low:+.2f}", m["improved"], m["invented_texture"])
    return table
