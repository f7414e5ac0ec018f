"""``upscale``: one image in, one image out; and the engine options every task shares.

Keyword-only functions behind the CLI commands (tests call them directly). Nothing here prints:
notes go to :data:`clipsr_cli.errors.log`, tile progress to a ``progress(done, total)`` callback.
Messages name parameters in backticks (see :mod:`clipsr_cli.errors`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from clipsr_cli.errors import UsageError, log
from clipsr_cli.io.formats import format_for, normalise_format
from clipsr_cli.io.outputs import output_path_for, resolve_destination, same_file
from clipsr_cli.model.config import SCALES

__all__ = ["DEFAULT_SCALE", "check_options", "check_text", "load_upscaler", "resolve_output",
           "upscale_file"]

DEFAULT_SCALE = 4
Progress = Callable[[int, int], None]


def check_options(*, scale: int | None = None, device: str = "auto", precision: str = "auto",
                  tile: str | int = "auto", tile_overlap: int | None = None,
                  format: str | None = None, quality: int = 95) -> None:
    """Refuse option values that can never work (UsageError, exit status 2 in the CLI) before
    any file is read or model loaded, so nothing else is printed first."""
    from clipsr_cli.infer.devices import resolve_device, resolve_precision
    from clipsr_cli.infer.engine import parse_tiling

    if scale is not None and scale not in SCALES:
        raise UsageError(f"`scale` must be 4, 8 or 16 (2 for custom models), not {scale}",
                         param="scale")
    parse_tiling(tile, tile_overlap)
    if format is not None:
        normalise_format(format)
    if not 1 <= int(quality) <= 100:
        raise UsageError(f"`quality` must be between 1 and 100, not {quality}", param="quality")
    resolve_precision(precision, resolve_device(device))


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
        log.warning(f"model {upscaler.name} is not text-conditioned; `text` is ignored")


def resolve_output(input: str, output: str | None, scale: int, *, format: str | None,
                   overwrite: bool, overwrite_input: bool = False,
                   suffix: str | None = None) -> Path | None:
    """Where ``upscale`` writes: None for standard output. Refuses an existing file unless
    ``overwrite``, and the input itself unless ``overwrite_input``."""
    return resolve_destination(input, output, scale, format=format, overwrite=overwrite,
                               overwrite_input=overwrite_input, suffix=suffix)


def upscale_file(*, input: str, output: str | None = None, scale: int | None = None,
                 text: str | None = None, model: str | None = None, device: str = "auto",
                 precision: str = "auto", tile: str | int = "auto",
                 tile_overlap: int | None = None, format: str | None = None, quality: int = 95,
                 overwrite: bool = False, overwrite_input: bool = False,
                 suffix: str | None = None, progress: Progress | None = None) -> Path | None:
    """Read ``input``, upscale it, write the result atomically; return the path (None: stdout).

    ``suffix`` replaces ``_x<s>`` in the default output name; ``progress(done, total)`` hears
    about tiles."""
    from clipsr_cli.io import images as imageio

    t0 = time.perf_counter()
    check_options(scale=scale, device=device, precision=precision, tile=tile,
                  tile_overlap=tile_overlap, format=format, quality=quality)
    if output == "-":
        format_for("-", format)  # stdout needs a format: say so before any work
    elif suffix is not None:
        output_path_for("x.png", 1, suffix=suffix)  # a bad suffix fails first
    image = imageio.read_image(input)  # fail on a bad input before loading any model
    up = load_upscaler(model=model, scale=scale, device=device, precision=precision, tile=tile,
                       tile_overlap=tile_overlap)
    dest = resolve_output(input, output, up.scale, format=format, overwrite=overwrite,
                          overwrite_input=overwrite_input, suffix=suffix)
    replace = overwrite or (dest is not None and input != "-" and same_file(dest, input))
    check_text(up, text)
    rgb, alpha = up.upscale_image(image, text, progress=progress)
    written = imageio.write_image(dest if dest is not None else "-", rgb, alpha, like=image,
                                  format=format, quality=quality, overwrite=replace)
    w, h = image.size
    log.info(f"{image.source} ({w}×{h}) ×{up.scale} → {written or '<stdout>'} "
             f"({w * up.scale}×{h * up.scale}) in {time.perf_counter() - t0:.1f} s")
    return written
