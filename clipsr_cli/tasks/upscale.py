"""``upscale``: one image in, one image out; and the engine options every task shares.

Keyword-only functions behind the CLI commands (tests call them directly). Nothing here prints:
notes go to :data:`clipsr_cli.errors.log`, tile progress to a ``progress(done, total)`` callback.
Messages name parameters in backticks (see :mod:`clipsr_cli.errors`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from clipsr_cli.errors import InputError, UsageError, log
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.outputs import resolve_destination, same_file
from clipsr_cli.tasks.checks import check_passes, check_upscale, check_values

__all__ = ["DEFAULT_SCALE", "check_options", "check_passes", "check_values", "check_text",
           "check_device_here", "load_upscaler", "resolve_output", "text_guided_models", "text_model_hint",
           "upscale_file"]

DEFAULT_SCALE = 4
Progress = Callable[[int, int], None]


def check_options(*, scale: int | None = None, device: str = "auto", precision: str = "auto",
                  tile: str | int = "auto", tile_overlap: int | None = None,
                  format: str | None = None, quality: int = 95) -> None:
    """:func:`check_values`, then whether the device and precision exist here (DeviceError),
    before any file is read or model loaded, so nothing else is printed first."""
    check_values(scale=scale, device=device, precision=precision, tile=tile,
                 tile_overlap=tile_overlap, format=format, quality=quality)
    check_device_here(EngineOptions(device=device, precision=precision))


def check_device_here(options: EngineOptions) -> None:
    """Whether ``options``' device and precision exist on this machine (DeviceError, or
    UsageError for a precision the device cannot run), before any file is read."""
    from clipsr_cli.infer.devices import resolve_device, resolve_precision

    resolve_precision(options.precision, resolve_device(options.device))


def load_upscaler(*, model: str | None, scale: int | None, options: EngineOptions | None = None):
    """Resolve model/scale defaults and load the engine once, as ``options`` say (``passes``:
    ×s^passes; ``degradation``: how degraded inputs are treated)."""
    from clipsr_cli.infer.engine import Upscaler

    if model is None and scale is None:
        scale = DEFAULT_SCALE
    up = Upscaler.load(model, options or EngineOptions(), scale=scale)
    log.debug(describe_engine(up))
    return up


def describe_engine(up) -> str:
    """What ``-v`` shows once a model is loaded: model, scale, device, precision, tiling and
    whether the degradation choice applies (the choice per image follows as it is made)."""
    st = up.settings
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(st.dtype).removeprefix("torch."), str(st.dtype))
    tile = "auto (sized per image)" if st.tile == "auto" else (
        "off" if st.tile == 0 else f"{st.tile} LR px")
    blend = ("per image (see below)" if up.blendable else
             "not used (the model has no degradation-aware weights)")
    return (f"model {up.name}: ×{up.scale} on {st.device}, {precision}; tiles: {tile}, overlap "
            f"{st.tile_overlap} LR px; degradation: {blend}")


def text_guided_models(scale: int | None) -> list:
    """The registered text-guided generators (for ``scale``; None: any scale)."""
    from clipsr_cli.hub.entries import GeneratorEntry
    from clipsr_cli.hub.registry import load_registry

    return [e for e in load_registry() if isinstance(e, GeneratorEntry) and e.text_guided
            and (scale is None or e.scale == scale)]


def text_model_hint(scale: int | None) -> str:
    """How to get a text-guided model: the registered ones (for ``scale`` first), else how to
    train one on captioned images."""
    entries = text_guided_models(scale) or text_guided_models(None)
    if entries:
        return "use a text-guided model: " + ", ".join(f"`model={e.name}` (×{e.scale})"
                                                       for e in entries)
    return ("no text-guided model ships with clipsr; train one on captioned images with "
            "'clipsr train --data DIR --out RUN' (CLIP ViT-B-32 by default; see docs/training.md) "
            "and pass `model=RUN/model.safetensors`")


def check_text(upscaler, text: str | None, what: str = "`text` is ignored") -> None:
    """Warn (once) when a text is given to an image-only model, saying how to get one that
    reads it."""
    if text and not upscaler.info.text_conditioned:
        log.warning(f"model {upscaler.name} is not text-conditioned; {what}; "
                    f"{text_model_hint(upscaler.scale)}")


def resolve_output(input: str, output: str | None, scale: int, *, format: str | None,
                   overwrite: bool, overwrite_input: bool = False,
                   suffix: str | None = None) -> Path | None:
    """Where ``upscale`` writes: None for standard output. Refuses an existing file unless
    ``overwrite``, and the input itself unless ``overwrite_input``."""
    return resolve_destination(input, output, scale, format=format, overwrite=overwrite,
                               overwrite_input=overwrite_input, suffix=suffix)


def upscale_file(*, input: str, output: str | None = None, scale: int | None = None,
                 text: str | None = None, model: str | None = None,
                 options: EngineOptions | None = None, format: str | None = None,
                 quality: int = 95, overwrite: bool = False, overwrite_input: bool = False,
                 suffix: str | None = None, outscale: float | None = None,
                 width: int | None = None, height: int | None = None,
                 progress: Progress | None = None) -> Path | None:
    """Read ``input``, upscale it, write the result atomically; return the path (None: stdout).

    ``options``: how the model runs (:class:`EngineOptions`: device, precision, tiling,
    ``passes``, degradation). ``suffix`` replaces ``_x<s>`` in the default output name;
    ``progress(done, total)`` hears about tiles. ``outscale`` / ``width`` / ``height``: any
    output size (the model's result resized, see :mod:`clipsr_cli.tasks.outsize`)."""
    t0 = time.perf_counter()
    options = options or EngineOptions()
    size = check_upscale(scale=scale, format=format, quality=quality, suffix=suffix,
                         outscale=outscale, width=width, height=height)  # before torch
    from clipsr_cli.io import images as imageio
    from clipsr_cli.tasks.outsize import beyond_note, resize_output

    check_device_here(options)
    if suffix is None and size is not None:
        suffix = size.suffix
    image = imageio.read_image(input)  # fail on a bad input before loading any model
    w, h = image.size
    try:
        target = size.target(w, h, name=image.source) if size is not None else None
    except InputError as e:  # both `width` and `height`, another shape: the options conflict
        raise UsageError(str(e), param="height") from None
    up = load_upscaler(model=model, scale=scale, options=options)
    dest = resolve_output(input, output, up.scale, format=format, overwrite=overwrite,
                          overwrite_input=overwrite_input, suffix=suffix)
    replace = overwrite or (dest is not None and input != "-" and same_file(dest, input))
    check_text(up, text)
    if (note := beyond_note(size, up.scale)) is not None:
        log.info(note)
    strength = up.strength_for(image)
    if up.blendable:
        log.debug(f"{image.source}: {strength.describe()}")
    rgb, alpha = up.upscale_image(image, text, progress=progress, strength=strength)
    if target is not None:
        rgb, alpha = resize_output(rgb, alpha, target)
    written = imageio.write_image(dest if dest is not None else "-", rgb, alpha, like=image,
                                  format=format, quality=quality, overwrite=replace)
    how = f"×{up.scale}" + (" + resize" if target is not None and target != (
        w * up.scale, h * up.scale) else "")
    log.info(f"{image.source} ({w}×{h}) {how} → {written or '<stdout>'} "
             f"({rgb.shape[1]}×{rgb.shape[0]}) in {time.perf_counter() - t0:.1f} s")
    return written
