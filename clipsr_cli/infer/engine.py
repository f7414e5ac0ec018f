"""The inference engine shared by ``upscale``, ``batch`` and ``edit``.

Contract: images enter as (1, 3, H, W) float tensors in [0, 1] (any H × W); the engine pads to
the model's multiple, computes the per-image conditioning (text + CLIP visual features) once,
runs the generator tile by tile under ``torch.inference_mode()`` and the resolved precision,
blends the tiles and crops back to exactly (s·H × s·W).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.errors import InputError, ModelError, UsageError, log
from clipsr_cli.hub.registry import ModelEntry, default_model, load_registry, resize_factor
from clipsr_cli.hub.resolve import clip_weights_path, resolve_model
from clipsr_cli.infer.devices import available_memory as _available_memory
from clipsr_cli.infer.base import Engine, ProgressFn, upscale_alpha
from clipsr_cli.infer.devices import resolve_device, resolve_precision
from clipsr_cli.infer.pipeline import Pipeline
from clipsr_cli.infer.tiling import count_tiles, pad_to_multiple, plan_tiles, run_tiled
from clipsr_cli.model.checkpoint import load_checkpoint
from clipsr_cli.model.clip import ClipBackbone, ClipSpec, load_clip
from clipsr_cli.model.config import ModelInfo
from clipsr_cli.model.foreign import is_foreign_file, load_foreign

Precision = Literal["auto", "fp32", "bf16", "fp16"]

__all__ = ["Upscaler", "EngineSettings", "load_clip_backbone", "parse_tiling", "upscale_alpha",
           "resolve_device", "resolve_precision"]


def load_clip_backbone(spec: str | ClipSpec, device: str | torch.device = "cpu") -> ClipBackbone:
    """The frozen CLIP of ``spec`` (``ARCH[:WEIGHTS]``) on ``device``: registered weights (e.g.
    ``ViT-B-32:openai``) come verified from the registry's cache, downloaded first unless offline;
    anything else (``random``, a file, an open_clip tag) is loaded as it stands."""
    spec = ClipSpec.parse(spec) if isinstance(spec, str) else spec
    path = clip_weights_path(spec.arch, spec.weights) if spec.weights_is_name else None
    return load_clip(spec, device, weights_path=path)


def parse_tiling(tile: int | str, tile_overlap: int | None) -> tuple[int | Literal["auto"], int | None]:
    """Check ``tile`` ('auto', 0 = off, or a size; a string is parsed) and ``tile_overlap``
    (>= 0, or None for the model's hint); UsageError for a value that can never work."""
    if tile_overlap is not None and tile_overlap < 0:
        raise UsageError("`tile_overlap` must be >= 0", param="tile_overlap")
    if isinstance(tile, str):
        if tile.strip().lower() != "auto":
            try:
                tile = int(tile)
            except ValueError:
                raise UsageError(f"`tile` must be 'auto', 0 (off) or a size in LR pixels, "
                                 f"not {tile!r}", param="tile") from None
        else:
            tile = "auto"
    if isinstance(tile, int) and tile < 0:
        raise UsageError("`tile` must be 'auto', 0 (off) or a positive size", param="tile")
    return tile, tile_overlap


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

    def __init__(self, model, *, device: str | torch.device = "auto", precision: Precision = "auto",
                 tile: int | str = "auto", tile_overlap: int | None = None, name: str | None = None):
        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
        self.model = model.to(dev).eval()
        if dev.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name or "model"
        info = self.model.info
        dtype = _supported_dtype(info, dtype, precision, self.name)
        if tile_overlap is None:
            tile_overlap = info.tile_overlap
        tile, tile_overlap = parse_tiling(tile, tile_overlap)
        self.settings = EngineSettings(dev, dtype, tile, tile_overlap)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, scale: int | None = None,
             device: str | torch.device = "auto", precision: Precision = "auto",
             tile: int | str = "auto", tile_overlap: int | None = None) -> "Upscaler":
        """Load a registered model name, a clipsr ``.safetensors`` checkpoint path, or a
        third-party SR checkpoint (``.pth``/``.safetensors`` of an architecture spandrel knows,
        see :mod:`clipsr_cli.model.foreign`).

        With ``model=None`` the built-in default for ``scale`` is used.
        """
        dev = resolve_device(device)
        resolve_precision(precision, dev)  # fail fast on a bad precision before loading anything
        if model is None:
            if scale is None:
                raise ModelError("no model given; pass a model name/path or a scale")
            model = default_model(scale)
        entry = _registered_pipeline(str(model))
        if entry is not None:  # e.g. the built-in ×16: the ×4 network twice
            return _load_pipeline(cls, entry, scale=scale, device=dev, precision=precision,
                                  tile=tile, tile_overlap=tile_overlap)
        path = _resolve_model_path(str(model))
        if is_foreign_file(path):  # a third-party SR checkpoint (Real-ESRGAN, SwinIR, ...)
            net = load_foreign(path, device=dev)
        else:
            net = load_checkpoint(path, clip=load_clip_backbone, device=dev)
        if scale is not None and net.info.scale != scale:
            raise ModelError(f"model {model} upscales ×{net.info.scale}, not ×{scale}; drop `scale` or "
                             f"pick a ×{scale} model (see 'clipsr models')")
        return cls(net, device=dev, precision=precision, tile=tile, tile_overlap=tile_overlap,
                   name=str(model))

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

    def _tile_size(self, h: int, w: int) -> int:
        tile = self.settings.tile
        if tile != "auto":
            return int(tile)
        dev = self.settings.device
        elem = 2 if self.settings.dtype != torch.float32 else 4
        per_px = self.model.bytes_per_lr_pixel(elem)
        budget = _available_memory(dev) * (0.5 if dev.type == "cuda" else 0.25)
        # CPU: 1 GiB of activations keeps a 192-megapixel ×8 job under 3 GiB RSS (measured)
        budget = min(budget, (1.0 if dev.type == "cpu" else 16) * (1 << 30))
        max_px = max(budget / per_px, 64 * 64)
        if h * w <= max_px:
            return 0
        m = self.info.pad_multiple
        side = int(max_px ** 0.5) - 2 * self.settings.tile_overlap
        return max(64, side // m * m)

    def bands(self, lr: torch.Tensor, text: str | None = None, *,
              text_embedding: torch.Tensor | None = None,
              progress: ProgressFn | None = None):
        """Upscale ``lr`` (1, 3, H, W) in [0, 1]; yield finished output row bands
        ``(y0, band)`` (float32, clamped to [0, 1], cropped to s·W wide, rows beyond s·H dropped).
        This is the memory-lean core that every other method uses."""
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise InputError(f"expected an image tensor of shape (1, 3, H, W), got {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        if h == 0 or w == 0:
            raise InputError("the image has zero size")
        s, m = self.scale, self.info.pad_multiple
        dev = self.settings.device
        if text_embedding is None:
            text_embedding = self.embed_text(text)
        with torch.inference_mode():
            x = lr.to(dev, torch.float32)
            cond = self.model.condition(x, text_embedding.to(dev) if text_embedding is not None
                                        else None)  # fp32: CLIP stays fp32
            xp = pad_to_multiple(x, m)
            if dev.type == "cpu":
                xp = xp.contiguous(memory_format=torch.channels_last)
            plan = plan_tiles(xp.shape[-2], xp.shape[-1], tile=self._tile_size(h, w),
                              overlap=self.settings.tile_overlap, multiple=m)
            total, done = count_tiles(plan), 0

            def run(tile: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
                with self._autocast():
                    return self.model(tile, cond, offset)

            def tick() -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            for y0, band in run_tiled(run, xp, s, plan, self.settings.tile_overlap, on_tile=tick):
                if y0 >= h * s:
                    break
                band = band[:, :, :h * s - y0, :w * s].clamp_(0, 1)
                yield y0, band

_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _supported_dtype(info: ModelInfo, dtype: torch.dtype, precision: str, name: str) -> torch.dtype:
    """``dtype`` if the model runs in it; for ``precision='auto'`` fp32 instead (with a note),
    and an explicit precision the model does not support is refused (UsageError)."""
    chosen = _PRECISION_NAMES[dtype]
    if chosen in info.precisions:
        return dtype
    if str(precision).strip().lower() == "auto":
        log.info("model %s does not run in %s; using fp32", name, chosen)
        return torch.float32
    raise UsageError(f"model {name} does not support {chosen} (it runs in "
                     f"{', '.join(info.precisions)}); use `precision='fp32'` or "
                     "`precision='auto'`", param="precision")


def _registered_pipeline(model: str) -> ModelEntry | None:
    if os.sep in model or "/" in model or model.lower().endswith(_CHECKPOINT_SUFFIXES):
        return None
    entry = load_registry().find(model)
    return entry if entry is not None and entry.kind == "pipeline" else None


def _load_pipeline(cls, entry: ModelEntry, *, scale: int | None, **engine) -> Pipeline:
    """A registered pipeline: each model stage loaded once (stages naming the same model share
    it), ``bicubic:N`` steps as resize factors; the scales must multiply to the entry's."""
    loaded: dict[str, Upscaler] = {}
    stages: list[Upscaler | int] = []
    for name in entry.stages:
        factor = resize_factor(name)
        if factor is not None:
            stages.append(factor)
            continue
        if name not in loaded:
            sub = load_registry().find(name)
            if sub is None or sub.kind not in ("generator", "spandrel"):
                raise ModelError(f"pipeline {entry.name!r} ({entry.origin}): stage {name!r} is not "
                                 "a registered upscaling model; fix the registry file")
            loaded[name] = cls.load(name, **engine)
        stages.append(loaded[name])
    pipe = Pipeline(stages, name=entry.name)
    if pipe.scale != entry.scale:
        raise ModelError(f"pipeline {entry.name!r} ({entry.origin}): its stages upscale "
                         f"×{pipe.scale}, but the entry says ×{entry.scale}; fix the registry file")
    if scale is not None and pipe.scale != scale:
        raise ModelError(f"model {entry.name} upscales ×{pipe.scale}, not ×{scale}; drop `scale` "
                         f"or pick a ×{scale} model (see 'clipsr models')")
    return pipe


_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def _resolve_model_path(model: str) -> Path:
    p = Path(model).expanduser()
    if p.suffix == ".safetensors" or os.sep in model or p.exists():
        if p.is_dir():
            cand = p / "model.safetensors"
            if cand.is_file():
                return cand
            raise ModelError(f"{p} is a directory without model.safetensors; pass a checkpoint file")
        if not p.exists():
            raise ModelError(f"checkpoint not found: {p}")
        return p
    return resolve_model(model)
