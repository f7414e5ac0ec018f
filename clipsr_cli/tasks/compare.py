"""``compare``: one input through several models (built-in, text-guided, third-party), side by side.

:func:`compare` runs each model in turn on the same LR image (loading one at a time, so only one
is in memory), times it, scores it against an optional HR reference (Y-PSNR / SSIM of
:mod:`clipsr_cli.data.metrics`, border = scale, as ``clipsr eval``) and composes a labelled grid:
a row of the full outputs (bicubic first, the reference last) with the crop outlined, and below it
the crop zoomed with nearest-neighbour pixels, each column labelled with the model's name, its
time and its scores. The crop is given (``crop=(x, y, w, h)`` in *input* pixels) or chosen where
the models' outputs differ most. Nothing is printed: the result is returned (and the grid
written when ``output`` is given).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.data.degrade import imresize
from clipsr_cli.data.metrics import psnr, rgb_to_y, ssim
from clipsr_cli.errors import InputError, UsageError, log
from clipsr_cli.hub.resolve import ModelRef, known_scale, resolve
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.images import read_image, write_image
from clipsr_cli.io.memory import check_output
from clipsr_cli.io.outputs import check_destination
from clipsr_cli.io.quantise import quantise
from clipsr_cli.tasks.checks import parse_crop_spec
from clipsr_cli.tasks.upscale import check_text

__all__ = ["ModelRun", "Comparison", "compare", "parse_crop", "auto_crop", "compose", "layout",
           "planned_scale", "short_names"]

#: Widest panel of the grid, in pixels (larger outputs are shown downscaled; the crop is not).
PANEL = 512
_BG, _INK, _BOX = (255, 255, 255), (0, 0, 0), (230, 30, 30)


@dataclass(frozen=True, eq=False)
class ModelRun:
    """One column of the comparison."""

    name: str
    """The model as given (registered name or path), or ``bicubic`` / ``reference``."""
    scale: int
    seconds: float | None
    """Wall time of the upscale (model loading excluded); None for bicubic and the reference."""
    load_seconds: float | None
    text_used: bool
    psnr: float | None
    """Y-PSNR in dB against the reference (border = scale); None without ``ref``."""
    ssim: float | None
    image: np.ndarray
    """(s·H, s·W, 3) uint8."""
    title: str = ""
    """The grid's name for it (:func:`short_names`); default: the file name of ``name``."""

    @property
    def label(self) -> str:
        name = self.title or short_names([self.name])[0]
        parts = [name + (" +text" if self.text_used else "")]
        if self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        if self.psnr is not None:
            parts.append(f"{self.psnr:.2f} dB / {self.ssim:.4f}")
        return "\n".join(parts)


@dataclass(frozen=True, eq=False)
class Comparison:
    input: str
    size: tuple[int, int]
    """(W, H) of the input."""
    scale: int
    runs: tuple[ModelRun, ...]
    """The models, in the order given (bicubic and the reference not included)."""
    bicubic: ModelRun
    reference: ModelRun | None
    crop: tuple[int, int, int, int]
    """(x, y, w, h) in input pixels."""
    crop_auto: bool
    grid: np.ndarray
    """(H', W', 3) uint8."""
    output: Path | None


def short_names(models: Sequence[str]) -> list[str]:
    """Grid labels: a registered name as it is; a path by its shortest tail of path components
    that no other label shares (``a/model.safetensors`` and ``b/model.safetensors``, not
    ``model.safetensors`` twice)."""
    parts = [Path(m).parts if ("/" in m or os.sep in m) else (m,) for m in models]
    keep = [1] * len(models)

    def tail(i: int) -> str:
        return "/".join(parts[i][-keep[i]:])

    while True:
        seen: dict[str, list[int]] = {}
        for i in range(len(models)):
            seen.setdefault(tail(i), []).append(i)
        grow = [i for group in seen.values() if len({models[j] for j in group}) > 1
                for i in group if keep[i] < len(parts[i])]
        if not grow:
            return [tail(i) for i in range(len(models))]
        for i in grow:
            keep[i] += 1


def planned_scale(model: str | ModelRef) -> int | None:
    """A model's scale known without loading it (:meth:`ModelRef`'s ``known_scale``): the
    registry's, or a clipsr checkpoint's header; None when only loading tells."""
    return known_scale(resolve(model))


def _check_scales(models: Sequence[str], refs: Sequence[ModelRef]) -> None:
    """Two models whose scales differ are refused before any runs (UsageError)."""
    known = [(m, s) for m, r in zip(models, refs) if (s := known_scale(r)) is not None]
    if len({s for _, s in known}) > 1:
        listed = ", ".join(f"{m} is ×{s}" for m, s in known)
        raise UsageError(f"`models` must all upscale by one factor: {listed}", param="models")


def parse_crop(crop: str | Sequence[int] | None, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` (or a 4-sequence) in input pixels, checked against the input ``size``."""
    if crop is None:
        return None
    x, y, w, h = parse_crop_spec(crop)
    iw, ih = size
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > iw or y + h > ih:
        raise UsageError(f"`crop` {x},{y},{w},{h} is not inside the {iw}×{ih} input", param="crop")
    return x, y, w, h


def auto_crop(images: Sequence[np.ndarray], scale: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square of about a quarter of the input's shorter side where ``images`` (≥ 2 outputs)
    disagree most: the largest mean per-pixel standard deviation of their luma."""
    iw, ih = size
    side = max(1, min(iw, ih, max(16, min(iw, ih) // 4)))
    y = torch.stack([rgb_to_y(torch.from_numpy(a).permute(2, 0, 1).float() / 255.0)
                     for a in images])  # (n, 1, sH, sW)
    spread = y.std(dim=0, keepdim=True)  # (1, 1, sH, sW)
    lr = F.avg_pool2d(spread, scale)  # per input pixel
    score = F.avg_pool2d(lr, side, stride=1)
    idx = int(torch.argmax(score.flatten()))
    cols = score.shape[-1]
    return idx % cols, idx // cols, side, side


def _run(name: str, ref: ModelRef, image, text: str | None, *, options: EngineOptions,
         title: str = "") -> tuple[ModelRun, torch.Tensor]:
    t0 = time.perf_counter()
    up = Upscaler.load(ref, options)
    loaded = time.perf_counter() - t0
    use_text = bool(text) and up.info.text_conditioned
    if text and not use_text:
        check_text(up, text, "`text` is ignored for it")
    strength = up.strength_for(image)  # from the file (a JPEG's tables), once per model
    if up.blendable:
        log.debug(f"{name}: {strength.describe()}")
    t1 = time.perf_counter()
    sr = up.upscale_tensor(image.rgb, text if use_text else None, strength=strength)
    if up.device.type == "cuda":
        torch.cuda.synchronize(up.device)
    seconds = time.perf_counter() - t1
    run = ModelRun(name=name, scale=up.scale, seconds=seconds, load_seconds=loaded,
                   text_used=use_text, psnr=None, ssim=None, image=_to_uint8(sr), title=title)
    del up
    return run, sr


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(quantise(x[0].permute(1, 2, 0), 8))


def _scored(run: ModelRun, sr: torch.Tensor, hr: torch.Tensor | None) -> ModelRun:
    if hr is None:
        return run
    s = run.scale
    return dataclasses.replace(run, psnr=float(psnr(sr, hr, border=s)),
                               ssim=float(ssim(sr, hr, border=s)))


def compare(*, input: str | os.PathLike, models: Sequence[str], text: str | None = None,
            ref: str | os.PathLike | None = None, crop: str | Sequence[int] | None = None,
            output: str | os.PathLike | None = None, overwrite: bool = False,
            options: EngineOptions | None = None,
            on_result: Callable[[ModelRun], None] | None = None) -> Comparison:
    """Upscale ``input`` with each of ``models`` (all of one scale) and compose the grid.

    ``text`` goes to the text-guided models (image-only ones ignore it, with a warning). ``ref``:
    the HR image ``input`` was made from (exactly scale × its size), for Y-PSNR/SSIM. ``crop``:
    ``x,y,w,h`` in input pixels (default: where the models differ most). ``output``: where the
    grid is written (refused if it exists, unless ``overwrite``; never the input or ``ref``). ``on_result`` is called with
    each model's run as it finishes.
    """
    models = [str(m) for m in models]
    if not models:
        raise UsageError("`models` needs at least one model to compare", param="models")
    refs = [resolve(m) for m in models]  # every name checked before any model runs
    _check_scales(models, refs)
    titles = short_names(models)
    dest = None
    if output is not None:
        # `overwrite` replaces an old grid, never the input or the reference
        dest = check_destination(output, overwrite=overwrite, keep=(input, ref))
    image = read_image(input)
    lr = image.rgb
    size = image.size
    box = parse_crop(crop, size)
    hr = None
    if ref is not None:
        hr = read_image(ref).rgb
    options = options or EngineOptions()
    runs: list[ModelRun] = []
    for name, model_ref, title in zip(models, refs, titles):
        run, sr = _run(name, model_ref, image, text, options=options, title=title)
        if runs and run.scale != runs[0].scale:
            raise UsageError(f"`models` must all upscale by one factor: {runs[0].name} is "
                             f"×{runs[0].scale}, {name} is ×{run.scale}", param="models")
        if hr is not None and tuple(hr.shape[-2:]) != tuple(sr.shape[-2:]):
            raise InputError(f"the reference {ref} is {hr.shape[-1]}×{hr.shape[-2]} but the ×"
                             f"{run.scale} output is {sr.shape[-1]}×{sr.shape[-2]}; pass the HR "
                             f"image the input was made from (`ref`)")
        run = _scored(run, sr, hr)
        runs.append(run)
        del sr
        if on_result is not None:
            on_result(run)
    s = runs[0].scale
    bic = imresize(lr, s).clamp(0, 1)
    bicubic = _scored(ModelRun(name="bicubic", scale=s, seconds=None, load_seconds=None,
                               text_used=False, psnr=None, ssim=None, image=_to_uint8(bic)),
                      bic, hr)
    reference = None
    if hr is not None:
        reference = ModelRun(name="reference", scale=s, seconds=None, load_seconds=None,
                             text_used=False, psnr=None, ssim=None, image=_to_uint8(hr))
    auto = box is None
    if auto:
        pool = [r.image for r in runs] if len(runs) > 1 else [bicubic.image, runs[0].image]
        box = auto_crop(pool, s, size)
    columns = [bicubic, *runs] + ([reference] if reference is not None else [])
    grid = compose(columns, box, s)
    written = None
    if dest is not None:
        written = write_image(dest, grid, overwrite=overwrite, bit_depth=8)
    return Comparison(input=str(input), size=size, scale=s, runs=tuple(runs), bicubic=bicubic,
                      reference=reference, crop=box, crop_auto=auto, grid=grid, output=written)


# -- the grid ------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # bundled: no font files needed


def layout(n: int, out: tuple[int, int], crop: tuple[int, int], lines: int, *, gap: int = 6):
    """The grid's geometry for ``n`` columns of ``out`` = (W, H) outputs and a ``crop`` of
    (w, h) output pixels: ((grid W, H), (panel w, h), (zoomed crop w, h), panel fit, font size).
    The crop is zoomed by a whole factor (nearest neighbour) to fill a box as wide as the panel
    and at most as tall as ``max(panel height, PANEL)``, or shrunk into it when it is larger:
    a thin crop never makes a giant grid."""
    out_w, out_h = out
    w, h = crop
    fit = min(1.0, PANEL / out_w)
    pw, ph = max(1, round(out_w * fit)), max(1, round(out_h * fit))
    box_h = max(ph, PANEL)
    f = min(pw / w, box_h / h)
    if f >= 1:
        zw, zh = w * int(f), h * int(f)
    else:
        zw, zh = max(1, round(w * f)), max(1, round(h * f))
    font_size = int(min(28, max(11, round(pw / 24))))
    band = 2 * gap + lines * (font_size + max(2, font_size // 4))
    cw = max(pw, zw)
    return (n * cw + (n - 1) * gap, ph + gap + zh + band), (pw, ph), (zw, zh), fit, font_size


def compose(columns: Sequence[ModelRun], crop: tuple[int, int, int, int], scale: int, *,
            gap: int = 6) -> np.ndarray:
    """The grid: per column the full output (crop outlined), the zoomed crop and the label."""
    from PIL import Image, ImageDraw

    x, y, w, h = (v * scale for v in crop)
    out_h, out_w = columns[0].image.shape[:2]
    lines = max(len(c.label.split("\n")) for c in columns)
    (gw, gh), (pw, ph), (zw, zh), fit, font_size = layout(len(columns), (out_w, out_h), (w, h),
                                                          lines, gap=gap)
    nearest = zw >= w  # zoomed by a whole factor (else shrunk into the box)
    font = _font(font_size)
    line_h = font_size + max(2, font_size // 4)
    cw = max(pw, zw)
    check_output(gw, gh, bytes_per_pixel=3 * 3, what="the comparison grid",
                 hint="choose a smaller `crop` or fewer `models`")
    grid = Image.new("RGB", (gw, gh), _BG)
    draw = ImageDraw.Draw(grid)
    for i, col in enumerate(columns):
        left = i * (cw + gap)
        full = Image.fromarray(col.image, "RGB")
        if fit < 1:
            full = full.resize((pw, ph), Image.Resampling.LANCZOS)
        grid.paste(full, (left, 0))
        draw.rectangle([left + x * fit, y * fit, left + (x + w) * fit - 1, (y + h) * fit - 1],
                       outline=_BOX, width=max(1, pw // 256))
        part = Image.fromarray(np.ascontiguousarray(col.image[y:y + h, x:x + w]), "RGB")
        part = part.resize((zw, zh), Image.Resampling.NEAREST if nearest
                           else Image.Resampling.LANCZOS)
        grid.paste(part, (left, ph + gap))
        for j, line in enumerate(col.label.split("\n")):
            draw.text((left + gap, ph + gap + zh + gap + j * line_h), line, fill=_INK, font=font)
    return np.asarray(grid)
