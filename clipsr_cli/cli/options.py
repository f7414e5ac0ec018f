"""Option declarations shared by the commands (one declaration each; every command uses them).

Each value is checked as it is parsed, by the torch-free rules of
:mod:`clipsr_cli.tasks.checks` (a ``UsageError``: exit status 2), so a wrong flag is answered
before any command imports torch, in every command that declares the option.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import typer

from clipsr_cli.cli import completion as c
from clipsr_cli.infer.values import check_device, check_precision, parse_tiling
from clipsr_cli.io.formats import normalise_format
from clipsr_cli.tasks import checks
from clipsr_cli.tasks.outsize import OutputSize


def checked(check: Callable[[Any], object]) -> Callable[[Any], Any]:
    """A click callback: ``check(value)`` (raises UsageError) unless the value is None."""

    def callback(value):
        if value is not None:
            check(value)
        return value

    return callback

Input = Annotated[str, typer.Argument(
    metavar="INPUT", help="Image to upscale, or - for stdin.", show_default=False)]
Scale = Annotated[Optional[int], typer.Option(
    "--scale", "-s", help="Upscaling factor: 4, 8 or 16 (2 for custom models). Default: the "
    "model's scale, or 4.", show_default=False, callback=checked(checks.check_scale),
    autocompletion=c.scales)]
Text = Annotated[Optional[str], typer.Option(
    "--text", "-t", help="Caption describing the image (text-guided models).")]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Registered model name, path to a clipsr .safetensors checkpoint, or "
    "a third-party SR file (.pth/.safetensors: Real-ESRGAN, SwinIR, HAT, SPAN, ...; see "
    "'clipsr inspect'). Default: the built-in clipsr-lite model for the scale.",
    autocompletion=c.models)]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.",
                                     callback=checked(check_device), autocompletion=c.devices)]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto, fp32, bf16 or fp16 (auto: bf16/fp16 on GPUs, bf16 on CPUs with "
    "native bf16, else fp32).", callback=checked(check_precision), autocompletion=c.precisions)]
Tile = Annotated[str, typer.Option(
    help="Tile size in LR pixels: auto (from free memory), a number, or 0 for no tiling.",
    callback=checked(lambda v: parse_tiling(v, None)), autocompletion=c.tiles)]
TileOverlap = Annotated[Optional[int], typer.Option(
    "--tile-overlap", help="Overlap between tiles in LR pixels (default: the model's hint).",
    callback=checked(lambda v: parse_tiling("auto", v)))]
Format = Annotated[Optional[str], typer.Option(
    "--format", "-f", help="Output format: png, jpeg, webp, tiff or bmp (default: from the "
    "output name, else the input's).", callback=checked(normalise_format),
    autocompletion=c.formats)]
Quality = Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality.")]
Suffix = Annotated[Optional[str], typer.Option(
    "--suffix", help="Replaces _x<s> in output names (may be empty).",
    callback=checked(checks.check_suffix))]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
OverwriteInput = Annotated[bool, typer.Option(
    "--overwrite-input", help="Allow the output to be the input file itself (replaced).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")]
Outscale = Annotated[Optional[float], typer.Option(
    "--outscale", metavar="F", help="Output F× the input size (any number >= 1, e.g. 2.5): the "
    "model's result resized (Lanczos). Above the model's scale it is resized up unless --passes "
    "runs the model again. Names: <stem>_x<F>.", show_default=False,
    callback=checked(lambda v: OutputSize.parse(outscale=v)))]
Width = Annotated[Optional[int], typer.Option(
    "--width", metavar="W", help="Output W pixels wide; the height keeps the aspect ratio. With "
    "--height: exactly W×H, refused if that would stretch the image by more than 1 px. Names: "
    "<stem>_w<W> (<stem>_<W>x<H> with both).", show_default=False,
    callback=checked(lambda v: OutputSize.parse(width=v)))]
Height = Annotated[Optional[int], typer.Option(
    "--height", metavar="H", help="Output H pixels high; the width keeps the aspect ratio. "
    "Names: <stem>_h<H>.", show_default=False,
    callback=checked(lambda v: OutputSize.parse(height=v)))]
DegradationOpt = Annotated[str, typer.Option(
    "--degradation", metavar="auto|clean|jpeg|noise", help="How degraded the input is: auto "
    "(default) decides per image from the file itself (a JPEG's quantisation tables, noise "
    "measured on flat areas); clean, jpeg or noise say it. Used by models with "
    "degradation-aware weights (the built-ins); -v shows the choice.",
    autocompletion=c.degradations)]
Denoise = Annotated[Optional[float], typer.Option(
    "--denoise", metavar="0..1", help="Fixed strength between the clean (0) and the "
    "degradation-aware (1) weights, like Real-ESRGAN's -dn; overrides --degradation.",
    show_default=False)]
Passes = Annotated[int, typer.Option(
    "--passes", metavar="N", help="Run the model N times (×s^N), e.g. --outscale 10 --passes 2 "
    "with a ×4 model: ×16, then resized down to ×10.", callback=checked(checks.check_passes))]


def engine_options(*, device: str = "auto", precision: str = "auto", tile: str = "auto",
                   tile_overlap: int | None = None, passes: int = 1, batch_size: int = 1,
                   degradation: str = "auto", denoise: float | None = None):
    """The command's one :class:`~clipsr_cli.infer.options.EngineOptions`, built from the shared
    engine flags above and passed whole to the task (values checked here, without torch)."""
    from clipsr_cli.infer.degradation import Degradation
    from clipsr_cli.infer.options import EngineOptions

    return EngineOptions(device=device, precision=precision, tile=tile, tile_overlap=tile_overlap,
                         passes=passes, batch_size=batch_size,
                         degradation=Degradation(degradation, denoise))
