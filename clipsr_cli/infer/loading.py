"""Loading what a :data:`~clipsr_cli.hub.resolve.ModelRef` names, for
:meth:`~clipsr_cli.infer.engine.Upscaler.load`: a network with its weights (a clipsr checkpoint or
a third-party one), a registered pipeline's stages, a CLIP backbone."""

from __future__ import annotations

from typing import Callable

import torch

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.resolve import (ClipRef, ForeignFile, ModelRef, PipelineRef, Registered,
                                    clip_weights_file)
from clipsr_cli.infer.base import Engine
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.infer.pipeline import Pipeline
from clipsr_cli.model.checkpoint import load_checkpoint
from clipsr_cli.model.clip import ClipBackbone, ClipSpec, load_clip
from clipsr_cli.model.foreign import load_foreign

__all__ = ["load_clip_backbone", "load_network", "load_pipeline"]


def load_clip_backbone(spec: str | ClipSpec, device: str | torch.device = "cpu") -> ClipBackbone:
    """The frozen CLIP of ``spec`` (``ARCH[:WEIGHTS]``) on ``device``: registered weights (e.g.
    ``ViT-B-32:openai``) come verified from the registry's cache, downloaded first unless offline;
    anything else (``random``, a file, an open_clip tag) is loaded as it stands."""
    spec = ClipSpec.parse(spec) if isinstance(spec, str) else spec
    return load_clip(spec, device, weights_path=clip_weights_file(spec.arch, spec.weights))


def load_network(ref: ModelRef, device: torch.device) -> torch.nn.Module:
    """The network ``ref`` names, with its weights, on ``device``."""
    if isinstance(ref, ClipRef):
        raise ModelError(f"{ref.name!r} is a CLIP backbone, not an upscaling model; choose a "
                         "generator from 'clipsr models'")
    if isinstance(ref, Registered):
        ref = ref.file()
    if isinstance(ref, ForeignFile):  # a third-party SR checkpoint (Real-ESRGAN, SwinIR, ...)
        return load_foreign(ref.path, format=ref.format, device=device)
    return load_checkpoint(ref.path, clip=load_clip_backbone, device=device)


def load_pipeline(load: Callable[[ModelRef, EngineOptions], Engine], ref: PipelineRef,
                  options: EngineOptions, *, scale: int | None) -> Pipeline:
    """A registered pipeline: each model stage loaded once by ``load`` (stages naming the same
    model share it), ``bicubic:N`` steps as resize factors; the scales must multiply to the
    entry's."""
    loaded: dict[str, Engine] = {}
    stages: list[Engine | int] = []
    for stage in ref.stages:
        if isinstance(stage, int):
            stages.append(stage)
            continue
        if stage.name not in loaded:
            loaded[stage.name] = load(stage, options)
        stages.append(loaded[stage.name])
    entry = ref.entry
    pipe = Pipeline(stages, name=entry.name)
    if pipe.scale != entry.scale:
        raise ModelError(f"pipeline {entry.name!r} ({entry.origin}): its stages upscale "
                         f"×{pipe.scale}, but the entry says ×{entry.scale}; fix the registry file")
    if scale is not None and pipe.scale != scale:
        raise ModelError(f"model {entry.name} upscales ×{pipe.scale}, not ×{scale}; drop `scale` "
                         f"or pick a ×{scale} model (see 'clipsr models')")
    return pipe
