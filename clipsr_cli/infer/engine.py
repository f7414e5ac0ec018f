"""The inference engine shared by ``upscale``, ``batch`` and ``edit``.

Contract: images enter as (1, 3, H, W) float tensors in [0, 1] (any H × W); the engine pads to
the model's multiple, computes the per-image conditioning (text + CLIP visual features) once,
runs the generator under ``torch.inference_mode()`` and the resolved precision and crops back to
exactly (s·H × s·W), handing the output over in finished row bands.

Tiling (``tile``): ``0`` runs the whole image in one forward pass. ``'auto'`` on CUDA does too
when the whole forward fits the memory budget (50 % of free VRAM; on the CPU min(25 % of free
RAM, 1 GiB)). Otherwise, and always on the CPU with ``'auto'``, a model that splits
(``info.two_phase``: CLIP-SR) runs in two phases:

1. **LR part** (``lr_features``: encoder + Iterative Refinement Module, cheap per pixel): tiles
   of ``tile`` LR px (``'auto'``: as large as the budget allows, usually the whole image: then
   the result is the untiled one) grown by ``tile_overlap`` and blended, giving the LR feature
   map row band by row band (stored in the autocast precision, bf16/fp16, or fp32);
2. **tail** (``reconstruct``: upsampler + bicubic skip, where the cost is): tiles grown by the
   tail's exact receptive field (``info.tail_overlap``, a few LR px) whose cores are kept as
   they are, so they change nothing and cost only that margin; ``'auto'``: full-width row bands
   or squares, from the budget (CPU: cache-sized, ``_CPU_TAIL_BYTES``), ``tile=N``: N × N LR px.

Only a window of feature rows is held (:class:`~clipsr_cli.infer.tiling.RowStream`). Third-party
models (``two_phase`` False) are tiled as a whole: ``tile`` LR px with ``tile_overlap``, blended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from clipsr_cli.errors import InputError, ModelError, log
from clipsr_cli.hub.resolve import ModelRef, PipelineRef, Registered, resolve
from clipsr_cli.infer.base import Engine, ProgressFn, StrengthLike, finite, upscale_alpha
from clipsr_cli.infer.batching import stack_limit
from clipsr_cli.infer.degradation import WeightBlend, partner_weights
from clipsr_cli.infer.devices import available_memory as _available_memory
from clipsr_cli.infer.devices import resolve_device, resolve_precision, supported_dtype
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.infer.pipeline import Pipeline
from clipsr_cli.infer.values import parse_tiling
from clipsr_cli.infer.tiling import (RowStream, count_tiles, pad_to_multiple, plan_tiles, run_plan,
                                     run_tiled)
from clipsr_cli.infer.loading import load_clip_backbone, load_network, load_pipeline
from clipsr_cli.io.images import LoadedImage
from clipsr_cli.io.quantise import quantise
from clipsr_cli.model.config import ModelInfo

Precision = Literal["auto", "fp32", "bf16", "fp16"]

__all__ = ["Upscaler", "EngineSettings", "load_clip_backbone", "parse_tiling", "upscale_alpha",
           "resolve_device", "resolve_precision"]


@dataclass(frozen=True)
class EngineSettings:
    device: torch.device
    dtype: torch.dtype
    tile: int | Literal["auto"]
    tile_overlap: int


class Upscaler(Engine):
    """Loads a model (and its CLIP) once and upscales images.

    >>> up = Upscaler.load(scale=4)                       # built-in default for ×4
    >>> big = up.upscale(PIL.Image.open("in.png"), text="a red bird")
    """

    def __init__(self, model, options: EngineOptions | None = None, *, name: str | None = None,
                 degraded_state: dict[str, torch.Tensor] | None = None, **option_values):
        """``model`` run as ``options`` say (or as ``option_values``, the fields of
        :class:`EngineOptions`, e.g. ``device="cpu", tile=0``)."""
        options = _options(options, option_values)
        dev = resolve_device(options.device)
        self.options = options
        self.model = model.to(dev).eval()
        if dev.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name or "model"
        info = self.model.info
        dtype = supported_dtype(info.precisions, resolve_precision(options.precision, dev),
                                options.precision, self.name)
        overlap = info.tile_overlap if options.tile_overlap is None else options.tile_overlap
        self.settings = EngineSettings(dev, dtype, options.tile, overlap)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.degradation = options.degradation
        self._blend = None
        if degraded_state is not None:  # the clean weights are the model's own, as loaded
            clean = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._blend = WeightBlend(self.model, clean, degraded_state, name=self.name)

    @property
    def blendable(self) -> bool:
        return self._blend is not None

    def set_strength(self, strength: float | None) -> None:
        """Run with the weights of ``strength`` (None: the clean weights; no-op for a model
        without degradation-aware weights)."""
        if self._blend is not None:
            self._blend.apply(0.0 if strength is None else strength)

    @classmethod
    def load(cls, model: str | os.PathLike | ModelRef | None = None,
             options: EngineOptions | None = None, *, scale: int | None = None,
             **option_values) -> "Engine":
        """Load a registered model name, a clipsr ``.safetensors`` checkpoint path, or a
        third-party SR checkpoint (``.pth``/``.safetensors`` of an architecture spandrel knows,
        see :mod:`clipsr_cli.model.foreign`), or a :data:`~clipsr_cli.hub.resolve.ModelRef`.

        With ``model=None`` the built-in default for ``scale`` is used. ``options`` (or
        ``option_values``, its fields: ``device="cpu"``, ``tile=0``, ...) say how it runs,
        ``passes`` included (then a :class:`Pipeline` of the model run that many times).
        """
        options = _options(options, option_values)
        dev = resolve_device(options.device)
        resolve_precision(options.precision, dev)  # a bad precision fails before any loading
        ref = resolve(model, scale=scale)
        once = options.replace(passes=1)
        if isinstance(ref, PipelineRef):  # e.g. the built-in ×16: the ×4 network twice
            up = load_pipeline(cls.load, ref, once, scale=scale)
        else:
            net = load_network(ref, dev)
            if scale is not None and net.info.scale != scale:
                raise ModelError(f"model {ref.name} upscales ×{net.info.scale}, not ×{scale}; "
                                 f"drop `scale` or pick a ×{scale} model (see 'clipsr models')")
            entry = ref.entry if isinstance(ref, Registered) else None  # a file has no partner
            degraded = partner_weights(entry, net, options.degradation)
            up = cls(net, once, name=ref.name, degraded_state=degraded)
        return Pipeline.repeat(up, options.passes)

    # -- description -----------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def scale(self) -> int:
        return self.model.info.scale

    @property
    def device(self) -> torch.device:
        return self.settings.device

    # -- text ------------------------------------------------------------------------------------
    def embed_text(self, text: str | None) -> torch.Tensor | None:
        """Raw CLIP sentence embedding (1, D) of ``text``, cached per distinct text; None for an
        image-only model or no text."""
        if not self.info.text_conditioned or not text:
            return None
        if text not in self._text_cache:
            with torch.inference_mode():
                self._text_cache[text] = self.model.text_embedding([text]).clone()
        return self._text_cache[text]

    def null_text_embedding(self) -> torch.Tensor | None:
        """The model's learned null embedding (1, D) (what "no caption" means), or None for an
        image-only model."""
        if not self.info.text_conditioned:
            return None
        with torch.inference_mode():
            return self.model.text_embedding([None]).clone()

    def clip_similarity(self, image: torch.Tensor, text: str) -> float:
        """CLIP score: cosine similarity between CLIP's embedding of ``image`` ((1, 3, H, W) in
        [0, 1]) and of ``text``. Needs a text-conditioned model (its CLIP)."""
        clip = self.model.clip
        if clip is None:
            raise ModelError(f"{self.name} is image-only: it has no CLIP to score images with")
        with torch.inference_mode():
            return float(clip.similarity(image, self.embed_text(text)).item())

    # -- core ------------------------------------------------------------------------------------
    def _autocast(self):
        dt, dev = self.settings.dtype, self.settings.device
        return torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32)

    def _budget(self) -> tuple[float, int]:
        """Bytes of activations one tile may use, and the activation element size."""
        dev = self.settings.device
        elem = 2 if self.settings.dtype != torch.float32 else 4
        free = self.options.memory or _available_memory(dev)
        budget = free * (0.5 if dev.type == "cuda" else 0.25)
        # CPU: 1 GiB of activations keeps a 192-megapixel ×8 job under 3 GiB RSS (measured)
        return min(budget, (1.0 if dev.type == "cpu" else 16) * (1 << 30)), elem

    def _tile_size(self, h: int, w: int) -> int:
        """The LR tile side for an h × w image: 0 runs the whole forward at once; otherwise the
        side of the LR part's tiles (``two_phase`` models; ≥ the image: one tile) or of the
        whole network's tiles."""
        tile = self.settings.tile
        if tile != "auto":
            return int(tile)
        budget, elem = self._budget()
        max_px = max(budget / self.model.bytes_per_lr_pixel(elem), 64 * 64)
        if h * w <= max_px:
            return 0
        m, ov = self.info.pad_multiple, self.settings.tile_overlap
        if self.info.two_phase:
            max_px = max(budget / self.model.bytes_per_lr_pixel(elem, part="lr"), 64 * 64)
            if h * w <= max_px:
                return max(h, w) + m  # the LR part in one tile
            # and a tile row's blended float32 band of features fits the budget too
            rows = budget / (w * self.model.bytes_per_lr_pixel(4, part="features"))
            side = int(min(max_px ** 0.5, rows)) - 2 * ov
        else:
            side = int(max_px ** 0.5) - 2 * ov
        return max(64, side // m * m)

    def _tail_tiles(self, h: int, w: int) -> tuple[int, int]:
        """(rows, cols) of the tail's tile cores on the padded h × w LR grid (0: whole)."""
        tile, r = self.settings.tile, self.info.tail_overlap
        if tile != "auto":
            return int(tile), int(tile)
        budget, elem = self._budget()
        if self.device.type == "cpu":  # cache-sized tiles run faster than large ones (measured)
            budget = min(budget, _CPU_TAIL_BYTES)
        max_px = max(budget / self.model.bytes_per_lr_pixel(elem, part="tail"), 32 * 32)
        rows = int(max_px // (w + 2 * r)) - 2 * r  # full-width bands: a margin above and below
        side = max(16, int(max_px ** 0.5) - 2 * r)  # or squares: a margin on all four sides
        if rows >= 16 and (rows + 2 * r) / rows <= ((side + 2 * r) / side) ** 2:
            return rows, 0
        return side, side

    def bands(self, lr: torch.Tensor, text: str | None = None, *,
              text_embedding: torch.Tensor | None = None,
              progress: ProgressFn | None = None, strength: float | None = None):
        """Upscale ``lr`` (1, 3, H, W) in [0, 1]; yield finished output row bands
        ``(y0, band)`` (float32, clamped to [0, 1], cropped to s·W wide, rows beyond s·H dropped).
        This is the memory-lean core that every other method uses. ``strength``: the weights
        between the clean (0) and the degradation-aware (1) ones, for a ``blendable`` model
        (None: the clean weights)."""
        self.set_strength(strength)
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise InputError(f"expected an image tensor of shape (1, 3, H, W), got {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        if h == 0 or w == 0:
            raise InputError("the image has zero size")
        s = self.scale
        if text_embedding is None:
            text_embedding = self.embed_text(text)
        with torch.inference_mode():
            cond, xp = self._prepared(lr, text_embedding)
            for y0, band in self._run(xp, cond, self._tile_size(h, w), progress):
                if y0 >= h * s:
                    break
                band = finite(band[:, :, :h * s - y0, :w * s], self.name).clamp_(0, 1)
                yield y0, band

    def _prepared(self, lr: torch.Tensor, text_embedding: torch.Tensor | None):
        """(conditioning, padded input) of ``lr`` (B, 3, H, W) on the device: conditioned in
        fp32 (CLIP stays fp32), padded to the model's multiple (channels-last on the CPU)."""
        dev = self.settings.device
        x = lr.to(dev, torch.float32)
        cond = self.model.condition(x, text_embedding.to(dev) if text_embedding is not None
                                    else None)
        xp = pad_to_multiple(x, self.info.pad_multiple)
        if dev.type == "cpu":
            xp = xp.contiguous(memory_format=torch.channels_last)
        return cond, xp

    def _run(self, xp: torch.Tensor, cond, tile: int, progress: ProgressFn | None):
        """Output row bands of the padded image ``xp``: one forward pass, the whole network
        tiled (``tile`` LR px, blended), or the two phases (see the module docstring)."""
        s, m, ov = self.scale, self.info.pad_multiple, self.settings.tile_overlap
        hp, wp = xp.shape[-2:]
        plan = plan_tiles(hp, wp, tile=tile, overlap=ov, multiple=m)
        tail_plan = None
        # on the CPU, 'auto' splits even when the whole forward fits: the same result (the LR
        # part in one tile, the tail exact), and cache-sized tail tiles are faster
        split = tile != 0 or self.settings.tile == "auto" and self.device.type == "cpu"
        if split and self.info.two_phase:
            rows, cols = self._tail_tiles(hp, wp)
            tail_plan = plan_tiles(hp, wp, tile=rows, tile_width=cols,
                                   overlap=self.info.tail_overlap)
            if count_tiles(plan) == 1 and count_tiles(tail_plan) == 1:
                tail_plan = None  # nothing to split: the one forward pass
        total = count_tiles(plan) + (count_tiles(tail_plan) if tail_plan else 0)
        n = count_tiles(plan)
        log.debug("tiles: 1 (the whole image in one pass)" if total == 1 else
                  f"tiles: {n} of {tile} LR px (overlap {ov})" if tail_plan is None else
                  f"tiles: {n} of the LR part (overlap {ov} LR px) + {total - n} of the HR "
                  f"tail (margin {self.info.tail_overlap} LR px)")
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if tail_plan is None:
            def run(tile: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
                with self._autocast():
                    return self.model(tile, cond, offset)

            yield from run_tiled(run, xp, s, plan, ov, on_tile=tick)
            return

        def lr_part(t) -> torch.Tensor:
            with self._autocast():
                return self.model.lr_features(xp[:, :, t.row.i0:t.row.i1, t.col.i0:t.col.i1],
                                              cond, (t.row.i0, t.col.i0))

        cpu = self.device.type == "cpu"
        store = self.settings.dtype  # the autocast precision (bf16/fp16) halves the feature map
        feats = RowStream(run_plan(lr_part, (hp, wp), 1, plan, ov, device=self.device,
                                   dtype=None, on_tile=tick), store, channels_last=cpu)

        def tail(t) -> torch.Tensor:
            rs, cs = t.row, t.col
            f = feats.rows(rs.i0, rs.i1)[:, :, :, cs.i0:cs.i1]
            if cpu and cs.i1 - cs.i0 < wp:
                f = f.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                return self.model.reconstruct(f, xp[:, :, rs.i0:rs.i1, cs.i0:cs.i1], cond,
                                              (rs.i0, cs.i0))

        yield from run_plan(tail, (hp, wp), s, tail_plan, self.info.tail_overlap, blend=False,
                            device=self.device, on_tile=tick)


    # -- several images at once ----------------------------------------------------------------
    def batch_limit(self, height: int, width: int, batch_size: int) -> int:
        """At most ``batch_size``, and only as many ``height`` × ``width`` images as fit in one
        tile (:func:`~clipsr_cli.infer.batching.stack_limit`: the budget of ``tile='auto'``)."""
        st = self.settings
        return stack_limit(height, width, batch_size, tile=st.tile, overlap=st.tile_overlap,
                           multiple=self.info.pad_multiple,
                           untiled=lambda h, w: self._tile_size(h, w) == 0)

    def upscale_images(self, images: Sequence[LoadedImage], texts: Sequence[str | None],
                       strengths: Sequence[StrengthLike] | None = None, *,
                       strength: StrengthLike = None
                       ) -> list[tuple[np.ndarray, torch.Tensor | None]]:
        """Like :meth:`Engine.upscale_images`, but images that share a strength go through the
        network in one forward pass; they must have one size and fit untiled
        (:meth:`batch_limit`). Images of different strengths run one at a time."""
        strengths = self._strengths(images, strengths, strength)
        values = {float(getattr(s, "value", s)) for s in strengths} if self.blendable else {None}
        if len(images) == 1 or len(values) > 1:
            return super().upscale_images(images, texts, strengths)
        self.set_strength(values.pop())
        (h, w), s = images[0].rgb.shape[-2:], self.scale
        if any(im.rgb.shape[-2:] != (h, w) for im in images):
            raise ValueError("upscale_images needs images of one size")
        emb = None
        if self.info.text_conditioned:
            null = self.null_text_embedding()
            emb = torch.cat([self.embed_text(t) if t else null for t in texts])
        with torch.inference_mode():
            cond, xp = self._prepared(torch.cat([im.rgb for im in images]), emb)
            with self._autocast():
                y = self.model(xp, cond, (0, 0))
            y = finite(y.float()[:, :, :h * s, :w * s], self.name).clamp_(0, 1)
            return [(quantise(y[k], im.bit_depth).transpose(1, 2, 0),
                     upscale_alpha(im.alpha, s) if im.alpha is not None else None)
                    for k, im in enumerate(images)]


#: CPU: estimated activations of one tail tile (about 18k LR px for the built-in ×4 in bf16)
_CPU_TAIL_BYTES = 64 << 20


def _options(options: EngineOptions | None, values: dict) -> EngineOptions:
    if options is not None and values:
        raise TypeError(f"pass either `options` or its fields ({', '.join(values)}), not both")
    return options if options is not None else EngineOptions(**values)
