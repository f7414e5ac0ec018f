"""Super-resolution editing (``clipsr edit``): change what a text-guided model draws by changing
the caption, while the result stays consistent with the low-resolution input.

The pieces, each a plain function that tests call directly:

* :func:`prepare_lr` — the LR image to super-resolve: a photo degraded ×S with the training
  degradation (``degrade``: MATLAB bicubic + 8-bit), or the input itself with ``as_lr``.
* :func:`interpolate_embedding` — ``source + A·(target − source)`` between the two
  **L2-normalised** CLIP sentence embeddings (the generator normalises whatever it gets, so this
  is the space it sees; raw CLIP norms differ per text and from the learned null embedding's,
  which would bend the path). A = 0 and A = 1 return the raw source / target unchanged, so an
  edit at A = 1 is bit-identical to ``clipsr upscale -t TARGET``.
* :func:`iter_edits` / :func:`edit_lr` — one super-resolved image per strength.
* :func:`lr_consistency` — Y-PSNR between the edit, degraded again ×S, and the LR it came from.
* :func:`compose_grid`, :func:`compose_gif` — the side-by-side and animated views
  (:mod:`clipsr_cli.tasks.edit_render`).
* :func:`plan_outputs`, :func:`edit_file` — file names (never clobbering) and the whole command.

Size contract of the default (photo) mode: the photo is padded at its bottom/right edge by
mirroring to a multiple of S, degraded, super-resolved, and the result cropped back, so the edit
has exactly the input's size (no pixel of the photo is dropped). The LR-consistency metric is
measured on the uncropped result against the LR actually used.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.errors import InputError, ModelError, UsageError, log
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.outputs import write_bytes_atomic
from clipsr_cli.tasks.checks import check_edit, sweep_strengths
from clipsr_cli.tasks.edit_plan import EditPlan, plan_outputs
from clipsr_cli.tasks.edit_render import GIF_FRAME_MS, compose_gif, compose_grid, to_uint8

__all__ = [
    "EditFrame",
    "EditOutput",
    "EditPlan",
    "EditResult",
    "compose_gif",
    "compose_grid",
    "edit_file",
    "edit_lr",
    "interpolate_embedding",
    "iter_edits",
    "lr_consistency",
    "plan_outputs",
    "prepare_lr",
    "require_text_model",
    "sweep_strengths",
]

#: Below this LR consistency (dB) ``edit`` warns that the result no longer matches the input.
LOW_CONSISTENCY_DB = 30.0
REPORT_VERSION = 1
__all__ += ["GIF_FRAME_MS", "LOW_CONSISTENCY_DB", "REPORT_VERSION"]


# -- strengths and embeddings ---------------------------------------------------------------------
def interpolate_embedding(source: torch.Tensor, target: torch.Tensor,
                          strength: float) -> torch.Tensor:
    """``normalise(source) + A·(normalise(target) − normalise(source))`` for (1, D) embeddings.

    ``strength`` A = 1 returns ``target`` and A = 0 ``source`` unchanged (the generator
    normalises them itself); A outside [0, 1] extrapolates. The result is not normalised.
    """
    if not math.isfinite(strength):
        raise UsageError(f"`strength` must be a finite number, got {strength}", param="strength")
    if strength == 1.0:
        return target
    if strength == 0.0:
        return source
    s = F.normalize(source.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    e = s + strength * (t - s)
    if float(e.norm()) < 1e-6:
        raise InputError(f"at `strength={strength:g}` the source and target embeddings cancel "
                         "out; choose another strength")
    return e


# -- the LR image ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedLR:
    lr: torch.Tensor  # (1, 3, h, w) float in [0, 1]: what the model super-resolves
    out_size: tuple[int, int]  # (H, W) of the written result: the photo's size, or S·h × S·w
    padded: bool  # the photo was padded to a multiple of S (photo mode only)


def prepare_lr(rgb: torch.Tensor, scale: int, *, as_lr: bool) -> PreparedLR:
    """The LR image for an input (1, 3, H, W) in [0, 1].

    ``as_lr``: the input is the LR (output S·H × S·W). Otherwise the input is a photo: it is
    mirror-padded at the bottom/right to a multiple of ``scale`` and degraded ×``scale``
    (``degrade``), and the output is cropped back to H × W.
    """
    from clipsr_cli.data.degrade import degrade

    h, w = int(rgb.shape[-2]), int(rgb.shape[-1])
    if as_lr:
        return PreparedLR(rgb, (h * scale, w * scale), False)
    if h < scale or w < scale:
        raise InputError(f"a {w}×{h} photo is smaller than the ×{scale} scale; pass `as_lr=True` "
                         "to treat it as the low-resolution image")
    ph, pw = -h % scale, -w % scale
    x = rgb.float()
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return PreparedLR(degrade(x, scale), (h, w), bool(ph or pw))


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor, scale: int) -> float:
    """Y-PSNR (dB, 8-bit, whole image) between ``sr`` degraded ×``scale`` and ``lr``: how well the
    edit still explains the input. ``sr``: (1, 3, S·h, S·w); ``lr``: (1, 3, h, w)."""
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr

    return float(psnr(degrade(sr.float(), scale), lr.float(), border=0, y_channel=True)[0])


# -- the model ------------------------------------------------------------------------------------
def _refusal(name: str, scale: int | None) -> ModelError:
    from clipsr_cli.tasks.upscale import text_model_hint

    return ModelError(f"model {name} is not text-conditioned, so it cannot edit by text; "
                      f"{text_model_hint(scale)}")


def require_text_model(model: str | None, scale: int | None) -> str:
    """The model to edit with: ``model``, or the first registered text-guided generator for
    ``scale``. Raises ModelError (naming text-guided models, or how to train one) when the
    choice is known not to be text-conditioned."""
    from clipsr_cli.hub.entries import UPSCALERS, PipelineEntry
    from clipsr_cli.hub.registry import load_registry

    if model is None:
        from clipsr_cli.tasks.upscale import text_guided_models

        entries = text_guided_models(scale)
        if entries:
            return entries[0].name
        from clipsr_cli.hub.registry import default_model

        raise _refusal(f"{default_model(scale or 4)} (the default)", scale)
    entry = load_registry().find(model)
    if isinstance(entry, (*UPSCALERS, PipelineEntry)) and not entry.text_guided:
        raise _refusal(model, scale)
    return model


# -- editing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditFrame:
    strength: float
    label: str  # e.g. 'A=0.50  (no text) -> "a red bird"'
    sr: torch.Tensor  # (1, 3, S·h, S·w) float32 in [0, 1]: the uncropped output
    lr_psnr: float  # lr_consistency(sr, lr)


def _prompt_label(source_text: str | None, target_text: str, strength: float) -> str:
    src = f'"{source_text}"' if source_text else "(no text)"
    return f'A={strength:.2f}  {src} -> "{target_text}"'  # ASCII: the default font has no →


def iter_edits(up, lr: torch.Tensor, *, target_text: str, source_text: str | None = None,
               strengths: list[float], progress=None) -> Iterator[EditFrame]:
    """Super-resolve ``lr`` once per strength, conditioned on the interpolated embedding; yields
    the frames one at a time (a caller writing each one holds a single float output).

    ``up``: a text-conditioned :class:`~clipsr_cli.infer.engine.Upscaler`; ``source_text`` None means
    the model's learned null embedding (no caption)."""
    if not up.info.text_conditioned:
        raise _refusal(up.name, up.scale)
    check_edit(target_text=target_text)
    target = up.embed_text(target_text)
    if source_text:
        source = up.embed_text(source_text)
    else:
        source = up.null_text_embedding()
    for a in strengths:
        emb = interpolate_embedding(source, target, a)
        sr = up.upscale_tensor(lr, text_embedding=emb, progress=progress)
        yield EditFrame(a, _prompt_label(source_text, target_text, a), sr,
                        lr_consistency(sr, lr, up.scale))


def edit_lr(up, lr: torch.Tensor, *, target_text: str, source_text: str | None = None,
            strengths: list[float], progress=None) -> list[EditFrame]:
    """All frames of :func:`iter_edits` as a list."""
    return list(iter_edits(up, lr, target_text=target_text, source_text=source_text,
                           strengths=strengths, progress=progress))


# -- the whole command ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EditOutput:
    """What ``edit_file`` wrote for one strength, and how consistent it is."""

    path: Path | None  # None: standard output
    strength: float
    label: str
    lr_consistency: float  # dB, see lr_consistency()
    psnr_vs_input: float | None  # photo mode: Y-PSNR of the edit vs the photo (how much changed)

    def to_json(self) -> dict:
        return {"path": str(self.path) if self.path is not None else "-",
                "strength": self.strength, "label": self.label,
                "lr_consistency_db": round(self.lr_consistency, 3),
                "psnr_vs_input_db": (round(self.psnr_vs_input, 3)
                                     if self.psnr_vs_input is not None else None)}


@dataclass(frozen=True)
class EditResult:
    plan: EditPlan
    outputs: tuple[EditOutput, ...]
    model: str
    scale: int
    seconds: float

    def to_json(self, *, input: str, as_lr: bool, target_text: str,
                source_text: str | None) -> dict:
        return {"version": REPORT_VERSION, "input": input, "mode": "lr" if as_lr else "photo",
                "model": self.model, "scale": self.scale, "target_text": target_text,
                "source_text": source_text, "outputs": [o.to_json() for o in self.outputs],
                "grid": str(self.plan.grid) if self.plan.grid else None,
                "gif": str(self.plan.gif) if self.plan.gif else None}


def edit_file(*, input: str, target_text: str, source_text: str | None = None,
              strength: float | None = None, sweep: int | None = None, grid: bool = False,
              gif: bool = False, scale: int | None = None, as_lr: bool = False,
              model: str | None = None, options: EngineOptions | None = None,
              output: str | None = None, format: str | None = None, quality: int = 95,
              overwrite: bool = False, overwrite_input: bool = False, report: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> EditResult:
    """Read ``input``, edit it with ``target_text`` and write the results (atomically, never
    clobbering without ``overwrite``); notes and the LR consistency go to the log, tiles to
    ``progress(done, total)``.

    Every destination is checked before the model is loaded. A grayscale input gives colour
    output (an edit may add colour); bit depth, ICC profile and EXIF follow the input."""
    from clipsr_cli.data.metrics import psnr
    from clipsr_cli.infer.engine import upscale_alpha
    from clipsr_cli.io import images as imageio
    from clipsr_cli.io.reports import write_json
    from clipsr_cli.tasks.upscale import check_device_here, check_values, load_upscaler

    t0 = time.perf_counter()
    strengths = check_edit(target_text=target_text, strength=strength, sweep=sweep, gif=gif)
    options = options or EngineOptions()
    check_values(scale=scale, format=format, quality=quality)
    check_device_here(options)
    if (sweep is not None or strength not in (None, 1.0)) and not source_text:
        log.info("no `source_text`: A = 0 is the model's null text (no caption)")
    plan = plan_outputs(input, output, len(strengths), format=format, grid=grid, gif=gif,
                        report=report, overwrite=overwrite, overwrite_input=overwrite_input)
    replace = overwrite or overwrite_input
    image = imageio.read_image(input)  # fail on a bad input before loading any model
    name = require_text_model(model, scale)
    up = load_upscaler(model=name, scale=scale, options=options)
    if not up.info.text_conditioned:
        raise _refusal(name, scale)
    s = up.scale
    prep = prepare_lr(image.rgb, s, as_lr=as_lr)
    w, h = image.size
    if prep.padded:
        log.info(f"{w}×{h} is not a multiple of ×{s}: mirrored the bottom/right edge for the "
                 f"downscale; the edit is cropped back to {w}×{h}")
    oh, ow = prep.out_size
    alpha = image.alpha if not as_lr else (
        upscale_alpha(image.alpha, s) if image.alpha is not None else None)
    like = dataclasses.replace(image, grayscale=False)
    outputs: list[EditOutput] = []
    views: list[np.ndarray] = []  # uint8 copies for the grid / GIF
    plan.make_folder()  # `output='DIR/'` that does not exist yet: created now, parents too
    frames = iter_edits(up, prep.lr, target_text=target_text, source_text=source_text,
                        strengths=strengths, progress=progress)
    for f, dest in zip(frames, plan.outputs, strict=True):
        out = f.sr[..., :oh, :ow]
        fidelity = None if as_lr else float(psnr(out, image.rgb, border=0)[0])
        imageio.write_image(dest if dest is not None else "-", out, alpha, like=like,
                            format=format, quality=quality, overwrite=replace)
        outputs.append(EditOutput(dest, f.strength, f.label, f.lr_psnr, fidelity))
        if plan.grid is not None or plan.gif is not None:
            views.append(to_uint8(out))
    if plan.grid is not None:
        first = to_uint8(image.rgb)
        if as_lr:
            first = np.repeat(np.repeat(first, s, axis=0), s, axis=1)
        label = "input" if not as_lr else f"input (LR, nearest x{s})"
        arr = compose_grid([first, *views], [label, *(o.label for o in outputs)])
        imageio.write_image(plan.grid, arr, overwrite=overwrite)
    if plan.gif is not None:
        write_bytes_atomic(plan.gif, compose_gif(views, [o.label for o in outputs]),
                           overwrite=overwrite)
    result = EditResult(plan, tuple(outputs), up.name, s, time.perf_counter() - t0)
    _log_result(result, image, as_lr)
    if plan.report is not None:
        write_json(plan.report, result.to_json(input=input, as_lr=as_lr, target_text=target_text,
                                               source_text=source_text),
                   version=REPORT_VERSION, overwrite=overwrite)
    return result


def _log_result(result: EditResult, image, as_lr: bool) -> None:
    s, (w, h) = result.scale, image.size
    mode = f"{w}×{h} photo, degraded ×{s}" if not as_lr else f"{w}×{h} LR"
    log.info(f"{image.source} ({mode}) → {len(result.outputs)} edit(s) with {result.model} in "
             f"{result.seconds:.1f} s")
    for o in result.outputs:
        extra = f", {o.psnr_vs_input:.2f} dB vs the input" if o.psnr_vs_input is not None else ""
        log.info(f"  {o.label}: LR consistency {o.lr_consistency:.2f} dB{extra} → "
                 f"{o.path or '<stdout>'}")
    log.info(f"  (LR consistency: Y-PSNR of the edit, downscaled ×{s} with the training "
             "degradation, vs the LR; high = the edit kept the input's content)")
    worst = min(o.lr_consistency for o in result.outputs)
    if worst < LOW_CONSISTENCY_DB:
        log.warning(f"LR consistency is {worst:.1f} dB (< {LOW_CONSISTENCY_DB:.0f} dB): the edit "
                    "departs from the input; try a lower `strength`")
