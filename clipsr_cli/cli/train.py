"""``clipsr train``: train (or fine-tune) a CLIP-SR generator; the work is in ``clipsr_cli.train``."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from clipsr_cli.cli import options as o
from clipsr_cli.infer.values import check_device, check_precision


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        data: Annotated[Optional[str], typer.Option(
            "--data", "-d", help="Training images: a folder, a manifest, or a birds/celeba/coco "
            "dataset root.", show_default=False)] = None,
        out: Annotated[Optional[str], typer.Option(
            "--out", "-o", help="Run directory (config, metrics, checkpoint, model.safetensors).",
            show_default=False)] = None,
        scale: Annotated[Optional[int], typer.Option(
            "--scale", "-s", help="Upscaling factor: 2, 4, 8 or 16 [default: 4].", show_default=False)] = None,
        format: Annotated[Optional[str], typer.Option(
            "--format", help="Dataset layout: auto, folder, manifest, birds, celeba or coco.",
            show_default=False)] = None,
        config: Annotated[Optional[str], typer.Option(
            "--config", "-c", help="TOML file with any training settings (flags override it).",
            show_default=False)] = None,
        preset: Annotated[Optional[str], typer.Option(
            "--preset", help="psnr (reconstruction loss only; fast; default) or gan (+ perceptual, "
            "CLIP discriminator, CLIP similarity; usually with --init).", show_default=False)] = None,
        steps: Annotated[Optional[int], typer.Option("--steps", help="Optimisation steps.",
                                                     show_default=False)] = None,
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", "-b", help="Patches per step (per process).", show_default=False)] = None,
        patch_size: Annotated[Optional[int], typer.Option(
            "--patch-size", help="LR patch side (the HR crop is patch x scale).", show_default=False)] = None,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Peak generator learning rate.",
                                                    show_default=False)] = None,
        clip: Annotated[Optional[str], typer.Option(
            "--clip", help="none (image-only), ARCH or ARCH:WEIGHTS (weights: registry entry, file, "
            "open_clip tag or random) [default: ViT-B-32:openai].", show_default=False)] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its "
                                             "checkpoint.")] = False,
        init: Annotated[Optional[str], typer.Option(
            "--init", help="Start from this clipsr checkpoint (its architecture, scale and CLIP).",
            show_default=False)] = None,
        val: Annotated[Optional[str], typer.Option(
            "--val", help="Validation images (Y-PSNR/SSIM of the EMA model vs bicubic).",
            show_default=False)] = None,
        device: Annotated[Optional[str], typer.Option(
            "--device", help="auto, cpu, cuda or cuda:N.", show_default=False,
            callback=o.checked(check_device))] = None,
        precision: Annotated[Optional[str], typer.Option(
            "--precision", help="auto, fp32, bf16 or fp16 (autocast).", show_default=False,
            callback=o.checked(check_precision))] = None,
        workers: Annotated[Optional[int], typer.Option(
            "--workers", help="DataLoader workers for datasets streamed from disk.",
            show_default=False)] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.", show_default=False)] = None,
        time_limit: Annotated[Optional[float], typer.Option(
            "--time-limit", help="Stop cleanly after this many seconds of training (checkpoint + "
            "export); counts across resumes, like --steps.",
            show_default=False)] = None,
        val_every: Annotated[Optional[int], typer.Option("--val-every", help="Validate every N steps.",
                                                         show_default=False)] = None,
        checkpoint_every: Annotated[Optional[int], typer.Option(
            "--checkpoint-every", help="Checkpoint and export every N steps.", show_default=False)] = None,
        log_every: Annotated[Optional[int], typer.Option("--log-every", help="Log losses every N steps.",
                                                         show_default=False)] = None,
        degradation: Annotated[Optional[str], typer.Option(
            "--degradation", help="bicubic (antialiased MATLAB bicubic, 8-bit; default), extra "
            "(+ mild random blur, noise, JPEG) or practical (real-photo mix: blur, noise, JPEG 30-95 in "
            "random order).", show_default=False)] = None,
        sets: Annotated[Optional[List[str]], typer.Option(
            "--set", metavar="SECTION.KEY=VALUE", help="Any setting as SECTION.KEY=VALUE (TOML "
            "value), e.g. "
            "--set model.body_blocks=8 --set data.rot90=true. Repeatable.", show_default=False)] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")] = False,
    ) -> None:
        """Train a model on a dataset; exports RUN_DIR/model.safetensors (EMA weights)."""
        from clipsr_cli.cli.console import configure, state
        from clipsr_cli.train.config import config_from_cli

        configure(verbose=verbose, quiet=quiet)
        flags = {
            "data": {"path": data, "format": format, "scale": scale, "batch_size": batch_size,
                     "patch_size": patch_size, "val": val, "workers": workers,
                     "degradation": degradation},
            "optim": {"lr": lr},
            "run": {"out": out, "steps": steps, "clip": clip, "init": init, "device": device,
                    "precision": precision, "seed": seed, "time_limit": time_limit,
                    "val_every": val_every, "checkpoint_every": checkpoint_every,
                    "log_every": log_every},
        }
        cfg = config_from_cli(config=config, preset=preset, resume=resume, flags=flags, sets=sets)
        from clipsr_cli.train.trainer import train as run

        with _ProgressBar(enabled=not state.quiet) as bar:
            result = run(cfg, resume=resume, progress=bar.update)
        typer.echo(str(result.export))  # the result, on stdout


class _ProgressBar:
    """The training progress bar on stderr (Rich; rank 0 alone reports progress)."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self._p = None

    def __enter__(self) -> "_ProgressBar":
        return self

    def update(self, p) -> None:
        """``p``: a ``clipsr_cli.train.trainer.TrainProgress``."""
        if not self.enabled:
            return
        if self._p is None:
            import time

            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            from clipsr_cli.cli.console import err_console

            self._p = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("steps"), TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                               transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("train", total=p.total, completed=p.first_step,
                                          loss="", speed="")
            self._clock, self._t0 = time.monotonic, time.monotonic()
        fields = {}
        if p.loss is not None:
            dt = self._clock() - self._t0
            fields = {"loss": f"loss {p.loss:.4f}",
                      "speed": f"{(p.step - p.first_step) / max(dt, 1e-9):.2f} it/s"}
        self._p.update(self._task, completed=p.step, **fields)

    def __exit__(self, *exc) -> bool:
        if self._p is not None:
            self._p.__exit__(*exc)
        return False
