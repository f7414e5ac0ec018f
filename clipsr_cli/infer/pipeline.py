"""Pipelines: several upscaling stages run one after the other, behind the ``Upscaler`` interface.

A registry entry of kind ``pipeline`` (``clipsr_cli/models.toml``) names its stages: registered
models and ``bicubic:N`` resize steps, e.g. the built-in ×16 is the ×4 network twice and the ×8
is the ×4 network followed by a ×2 bicubic (both measured better on photos nobody trained on
than dedicated ×8/×16 networks trained the same way; see the README). ``Pipeline.repeat(up, n)``
runs one model ``n`` times (``--passes``).

Each network stage is an ordinary :class:`~clipsr_cli.infer.engine.Upscaler` with its own
padding and tiling; between stages the image stays float32 in [0, 1] on the CPU (no 8-bit
rounding), and the last stage yields its output row bands like any engine. The same model object
is shared by all the stages that use it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from clipsr_cli.infer.degradation import LATER_STAGE_STRENGTH
from clipsr_cli.data.degrade import imresize, imresize_bands
from clipsr_cli.errors import InputError, ModelError, UsageError
from clipsr_cli.infer.base import Engine, ProgressFn
from clipsr_cli.model.config import ModelInfo

__all__ = ["Pipeline"]


class Pipeline(Engine):
    """Stages (each an ``Upscaler`` or an int N: a MATLAB-style bicubic ×N resize) run in order.

    The first stage must be a model. Text (and a precomputed ``text_embedding``) goes to the
    first text-conditioned stage; other text-conditioned stages embed the text themselves.
    A model stage is anything with the engine interface (``Upscaler``, or another pipeline).
    """

    def __init__(self, stages: Sequence[Engine | int], *, name: str | None = None):
        stages = list(stages)
        if not stages or not _is_model(stages[0]):
            raise ModelError("a pipeline needs at least one model, and starts with one")
        for s in stages:
            if not _is_model(s) and not (isinstance(s, int) and s >= 2):
                raise ModelError(f"a pipeline stage must be a model or a resize factor >= 2, not {s!r}")
        self.stages = stages
        self.name = name or " → ".join(s.name if _is_model(s) else f"bicubic:{s}"
                                       for s in stages)
        self._nets = [s for s in stages if _is_model(s)]
        first = self._nets[0]
        self.model = first.model  # the first model: text embedding, CLIP, null text
        self.settings = first.settings
        self.options = first.options
        self._info = _combined_info(stages)

    @classmethod
    def repeat(cls, upscaler: Engine, passes: int) -> Engine:
        """``upscaler`` run ``passes`` times (×s^passes); ``passes = 1`` returns it unchanged."""
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise UsageError(f"`passes` must be a whole number >= 1, not {passes!r}",
                             param="passes")
        if passes == 1:
            return upscaler
        return cls([upscaler] * passes, name=f"{upscaler.name} ×{passes} passes")

    # -- description -----------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def scale(self) -> int:
        return self._info.scale

    @property
    def device(self) -> torch.device:
        return self.settings.device

    def _text_stage(self) -> Engine | None:
        return next((s for s in self._nets if s.info.text_conditioned), None)

    def embed_text(self, text: str | None) -> torch.Tensor | None:
        st = self._text_stage()
        return st.embed_text(text) if st is not None else None

    def null_text_embedding(self) -> torch.Tensor | None:
        st = self._text_stage()
        return st.null_text_embedding() if st is not None else None

    def clip_similarity(self, image: torch.Tensor, text: str) -> float:
        st = self._text_stage()
        if st is None:
            raise ModelError(f"{self.name} is image-only: it has no CLIP to score images with")
        return st.clip_similarity(image, text)

    # -- core ------------------------------------------------------------------------------------
    @property
    def blendable(self) -> bool:
        return self._nets[0].blendable

    @property
    def degradation(self):
        return self._nets[0].degradation

    def bands(self, lr: torch.Tensor, text: str | None = None, *,
              text_embedding: torch.Tensor | None = None,
              progress: ProgressFn | None = None, strength: float | None = None):
        """Like ``Upscaler.bands``: every stage but the last produces its whole output (float32,
        CPU), the last yields row bands. ``strength`` goes to the first model stage; later
        model stages, which see an upscaled image, run at ``LATER_STAGE_STRENGTH`` (models with
        degradation-aware weights). ``progress(done, total)`` counts per mille of the work, each
        network stage weighted by the output pixels it makes."""
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise InputError(f"expected an image tensor of shape (1, 3, H, W), got {tuple(lr.shape)}")
        weights, s = [], 1
        for st in self.stages:
            s *= st.scale if _is_model(st) else st
            weights.append(s * s if _is_model(st) else 0)
        total_w = float(sum(weights))
        done_w = 0.0
        text_stage = self._text_stage()
        x = lr
        for i, st in enumerate(self.stages):
            last = i == len(self.stages) - 1
            if not _is_model(st):
                if last:  # band by band: a 192-MP output is never held in float32
                    for y0, band in imresize_bands(x.float(), st):
                        yield y0, band.clamp_(0, 1)
                    if progress is not None:
                        progress(1000, 1000)
                else:
                    x = imresize(x.float(), st).clamp_(0, 1)
                continue
            emb = text_embedding if st is text_stage else None
            sub = _sub_progress(progress, done_w, weights[i], total_w)
            t = strength if i == 0 else LATER_STAGE_STRENGTH  # stage 0 is always a model
            if last:
                yield from st.bands(x, text, text_embedding=emb, progress=sub, strength=t)
            else:
                x = st.upscale_tensor(x, text, text_embedding=emb, progress=sub, strength=t)
            done_w += weights[i]


def _combined_info(stages: Sequence[Engine | int]) -> ModelInfo:
    nets = [s for s in stages if _is_model(s)]
    scale = math.prod(s.scale if _is_model(s) else s for s in stages)
    first = nets[0].info
    precisions = tuple(p for p in first.precisions if all(p in n.info.precisions for n in nets))
    distinct = {id(n.model): n for n in nets}
    return ModelInfo(scale=scale, text_conditioned=any(n.info.text_conditioned for n in nets),
                     clip=next((n.info.clip for n in nets if n.info.clip), None),
                     pad_multiple=1, tile_overlap=first.tile_overlap, precisions=precisions,
                     parameters=sum(n.info.parameters for n in distinct.values()))


def _is_model(s) -> bool:
    return isinstance(s, Engine)


def _sub_progress(progress: ProgressFn | None, done_w: float, weight: float,
                  total_w: float) -> ProgressFn | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        frac = (done_w + weight * (done / max(total, 1))) / total_w
        progress(min(1000, round(1000 * frac)), 1000)

    return report
