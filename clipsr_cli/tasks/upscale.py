"""Keyword-only service functions behind the CLI commands (tests call these directly)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from clipsr_cli.cli.console import err_console, info, state, warn
from clipsr_cli.errors import InputError

DEFAULT_SCALE = 4


@contextlib.contextmanager
def tile_progress(description: str) -> Iterator:
    """A Rich progress bar for tiles on stderr (only when stderr is a terminal and not quiet);
    yields a ``progress(done, total)`` callback."""
    if state.quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def load_upscaler(*, model: str | None, scale: int | None, device: str, precision: str,
                  tile: str | int, tile_overlap: int | None):
    """Resolve model/scale defaults and load the engine once."""
    from clipsr_cli.infer.engine import Upscaler

    if model is None and scale is None:
        scale = DEFAULT_SCALE
    return Upscaler.load(model, scale=scale, device=device, precision=precision, tile=tile,
                         tile_overlap=tile_overlap)


def check_text(upscaler, text: str | None) -> None:
    if text and not upscaler.info.text_conditioned:
        warn(f"model {upscaler.name} is not text-conditioned; --text is ignored")


def resolve_output(input: str, output: str | None, scale: int, *, format: str | None,
                   overwrite: bool) -> Path | None:
    """Where ``upscale`` writes: None for stdout. Refuses existing files (and the input itself)
    unless ``overwrite``."""
    from clipsr_cli.io import images as imageio

    if output == "-":
        return None
    if output is None:
        if input == "-":
            raise InputError("reading from stdin needs -o OUTPUT (or -o - for stdout)")
        dest = imageio.output_path_for(input, scale, format=format)
    else:
        dest = Path(output).expanduser()
        if dest.is_dir():
            name = imageio.output_path_for(input if input != "-" else "stdin.png", scale,
                                           format=format).name
            dest = dest / name
    if not dest.parent.is_dir():
        raise InputError(f"output folder {dest.parent} does not exist; create it first")
    if input != "-" and dest.resolve() == Path(input).expanduser().resolve():
        if not overwrite:
            raise InputError(f"refusing to overwrite the input {input}; choose another -o "
                             "(or pass --overwrite)")
    elif dest.exists() and not overwrite:
        raise InputError(f"{dest} exists; pass --overwrite to replace it or choose another -o")
    return dest


def upscale_file(*, input: str, output: str | None = None, scale: int | None = None,
                 text: str | None = None, model: str | None = None, device: str = "auto",
                 precision: str = "auto", tile: str | int = "auto",
                 tile_overlap: int | None = None, format: str | None = None, quality: int = 95,
                 overwrite: bool = False) -> Path | None:
    """Read ``input``, upscale it, write the result atomically; return the path (None: stdout)."""
    from clipsr_cli.io import images as imageio

    t0 = time.perf_counter()
    if output == "-" and format is None:
        raise InputError("writing to stdout needs --format (png, jpeg, webp, tiff or bmp)")
    image = imageio.read_image(input)  # fail on a bad input before loading any model
    up = load_upscaler(model=model, scale=scale, device=device, precision=precision, tile=tile,
                       tile_overlap=tile_overlap)
    dest = resolve_output(input, output, up.scale, format=format, overwrite=overwrite)
    check_text(up, text)
    rgb, alpha = upscale_loaded(up, image, text)
    written = imageio.write_image(dest if dest is not None else "-", rgb, alpha, like=image,
                                  format=format, quality=quality, overwrite=overwrite)
    w, h = image.size
    info(f"{image.source} ({w}×{h}) ×{up.scale} → {written or '<stdout>'} "
         f"({w * up.scale}×{h * up.scale}) in {time.perf_counter() - t0:.1f} s")
    return written


def upscale_loaded(up, image, text: str | None = None, *, text_embedding=None):
    """Upscale a ``LoadedImage``: quantised colour array (+ alpha tensor, upscaled separately)."""
    from clipsr_cli.infer.engine import upscale_alpha

    with tile_progress(f"×{up.scale} {Path(str(image.source)).name}") as progress:
        rgb = up.upscale_array(image.rgb, text, bit_depth=image.bit_depth,
                               text_embedding=text_embedding, progress=progress)
    alpha = upscale_alpha(image.alpha, up.scale) if image.alpha is not None else None
    return rgb, alpha
