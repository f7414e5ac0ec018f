"""``inspect``: what a model is (a registered name, a pipeline, a clipsr or third-party file),
without running it; the CLI renders the :class:`ModelDescription` this returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.resolve import ClipRef, ForeignFile, ModelRef, PipelineRef, Registered, resolve
from clipsr_cli.model.config import ModelInfo

__all__ = ["ModelDescription", "PipelineDescription", "describe"]


@dataclass(frozen=True)
class ModelDescription:
    """One network's file and what it says about itself."""

    file: Path
    format: str
    """``clipsr checkpoint (format N)`` or ``third-party (spandrel)``."""
    architecture: str
    purpose: str
    channels: str
    info: ModelInfo
    size_requirements: str
    text_guided: str | None = None
    """clipsr checkpoints: ``no`` or ``yes (CLIP)``."""
    tags: tuple[str, ...] = ()
    window_size: int | None = None
    tiling_advice: str | None = None
    """Third-party models: spandrel's advice (``supported``, ``discouraged``, ``internal``)."""


@dataclass(frozen=True)
class PipelineDescription:
    """A registered pipeline: its stages in order and each distinct model stage described."""

    name: str
    scale: int
    stages: tuple[str, ...]
    models: tuple[tuple[str, ModelDescription], ...]


def describe(model: str | ModelRef) -> ModelDescription | PipelineDescription:
    """Describe ``model`` (see :func:`clipsr_cli.hub.resolve.resolve`) without running it.

    Raises ``ModelError`` for a CLIP backbone (no upscaling model) or a file that cannot load."""
    ref = resolve(model)
    if isinstance(ref, PipelineRef):  # e.g. the built-in x8 and x16
        stages = {s.name: s for s in ref.stages if isinstance(s, Registered)}
        return PipelineDescription(ref.name, ref.entry.scale, ref.entry.stages,
                                   tuple((n, describe(s)) for n, s in stages.items()))
    if isinstance(ref, ClipRef):
        raise ModelError(f"{ref.name!r} is a CLIP backbone, not an upscaling model; choose a "
                         "generator from 'clipsr models'")
    if isinstance(ref, Registered):
        ref = ref.file()
    if isinstance(ref, ForeignFile):
        return _foreign(ref)
    from clipsr_cli.model.checkpoint import read_checkpoint
    from clipsr_cli.model.network import CLIPSR

    config, _, meta = read_checkpoint(ref.path)
    info = CLIPSR(config).info
    return ModelDescription(
        file=ref.path, format=f"clipsr checkpoint (format {meta.get('format_version', '?')})",
        architecture="CLIPSR", purpose="SR", channels="RGB → RGB", info=info,
        size_requirements=f"multiple of {info.pad_multiple} (padded by the engine)",
        text_guided=f"yes ({info.clip})" if info.text_conditioned else "no")


def _foreign(ref: ForeignFile) -> ModelDescription:
    from clipsr_cli.model.foreign import load_foreign

    m = load_foreign(ref.path, format=ref.format)
    spec = m.spec
    req = [f"multiple of {spec.size_multiple}"] if spec.size_multiple > 1 else []
    req += [f"at least {spec.size_minimum} px"] if spec.size_minimum else []
    req += ["square"] if spec.square else []
    return ModelDescription(
        file=ref.path, format="third-party (spandrel)",
        architecture=f"{spec.architecture} ({spec.arch_id})", purpose=spec.purpose,
        channels=("RGB → RGB" if spec.input_channels == 3
                  else "grayscale → grayscale (per channel)"),
        info=m.info, size_requirements=", ".join(req) or "none", tags=tuple(spec.tags),
        window_size=spec.window_size, tiling_advice=spec.tiling)
