"""How degraded an input is, and how strongly to treat it: the ``--degradation`` / ``--denoise``
choice (issue "Practical SR").

A model may have a *degradation-aware partner* of the same architecture (the registry's
``degradation_model``: ``clipsr-lite-x4`` -> ``clipsr-general-x4``). A **strength** t in [0, 1]
runs the network with the weights (1 - t)·clean + t·degraded — network interpolation, as
Real-ESRGAN's ``-dn`` does — computed in memory when t changes, never written anywhere.

``Degradation(mode="auto")`` (the default) decides t from the input itself: a JPEG's quality from
its quantisation tables (:mod:`clipsr_cli.io.jpeg`) and the noise measured on flat regions
(:mod:`clipsr_cli.data.noise`), the larger of the two strengths winning. ``clean`` is t = 0,
``jpeg`` and ``noise`` are t = 1; ``denoise=t`` fixes t and overrides the mode. Every rule and
threshold of that decision lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from clipsr_cli.errors import ModelError, UsageError, log

if TYPE_CHECKING:  # torch is imported where it is used: the CLI checks options without it
    import torch

    from clipsr_cli.hub.entries import ModelEntry
    from clipsr_cli.io.decode import LoadedImage

__all__ = ["DegradationMode", "Degradation", "Strength", "choose_strength", "WeightBlend",
           "partner_weights", "LATER_STAGE_STRENGTH", "JPEG_CLEAN_QUALITY", "JPEG_FULL_QUALITY", "NOISE_CLEAN_SIGMA", "NOISE_FULL_SIGMA"]

DegradationMode = Literal["auto", "clean", "jpeg", "noise"]
MODES: tuple[str, ...] = get_args(DegradationMode)

# -- the auto rule (tuned on shared/data/photos/val, see the README's "Real photos" table) ---------
# (benchmarks/denoise_sweep.py: on the validation photos at x4 the best fixed strength was about
# 0.1 at JPEG quality 95, 0.5 at 90-85, 1 at 75 and below; 0-0.5 at noise σ 3, 0.5 at σ 5, 1 at
# σ 10; the noise estimate reads 0.6-1.1 σ there)
JPEG_CLEAN_QUALITY = 98  # a JPEG of this quality or better is treated as clean (t = 0) ...
JPEG_FULL_QUALITY = 75  # ... one of this quality or worse gets the full strength (t = 1)
NOISE_CLEAN_SIGMA = 2.0  # measured noise (8-bit levels) up to which an image counts as clean ...
NOISE_FULL_SIGMA = 4.0  # ... and from which it gets the full strength (lower strengths scored
#                         more at σ 5 but sharpened the noise on smooth areas: smooth-region flags)
#: the strength of a pipeline's later model stages (the ×16's second ×4 pass), whatever the input:
#: they see an upscaled image, whose smooth areas the degradation-aware weights keep smooth. In
#: fp32 the clean weights twice drew 0.28-0.39 levels RMS of texture over a synthetic clear sky
#: (flagged by the smooth-region check); at 1: 0.07-0.15, val ×16 gain +0.953 vs +0.960 dB.
LATER_STAGE_STRENGTH = 1.0


def _ramp(x: float, zero: float, one: float) -> float:
    """0 at ``zero``, 1 at ``one``, linear between, clamped (``zero`` may be above ``one``)."""
    t = (x - zero) / (one - zero)
    return min(1.0, max(0.0, t))


@dataclass(frozen=True)
class Degradation:
    """What the user asked for: ``mode`` (auto: decided per image) or a fixed ``denoise``."""

    mode: DegradationMode = "auto"
    denoise: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"`degradation` must be one of {', '.join(MODES)}, not {self.mode!r}",
                             param="degradation")
        d = self.denoise
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
                    or not 0 <= d <= 1:
                raise UsageError(f"`denoise` must be a number from 0 to 1, not {d!r}",
                                 param="denoise")
            object.__setattr__(self, "denoise", float(d))

    @property
    def fixed(self) -> float | None:
        """The strength when it does not depend on the image (None for auto)."""
        if self.denoise is not None:
            return self.denoise
        return {"clean": 0.0, "jpeg": 1.0, "noise": 1.0}.get(self.mode)


@dataclass(frozen=True)
class Strength:
    """The strength used for one input and why (shown with ``-v`` and in batch reports)."""

    value: float
    reason: str

    def describe(self) -> str:
        return f"denoise {self.value:.2f} ({self.reason})"


def choose_strength(choice: Degradation, image: "LoadedImage | torch.Tensor") -> Strength:
    """The strength for ``image`` (a decoded file, or a (1, 3, H, W) tensor in [0, 1]).

    Never raises for odd inputs: what cannot be judged (unreadable JPEG tables, an image too small
    or of one colour to measure noise on) falls back to what can, else to clean, with a warning."""
    if choice.denoise is not None:
        return Strength(choice.denoise, "--denoise")
    if choice.mode != "auto":
        return Strength(choice.fixed, f"--degradation {choice.mode}")
    from clipsr_cli.data.noise import estimate_noise
    from clipsr_cli.io.decode import LoadedImage

    loaded = isinstance(image, LoadedImage)
    rgb = image.rgb if loaded else image
    name = image.source if loaded else "the image"
    reasons: list[tuple[float, str]] = []
    if loaded and image.format == "JPEG":
        if image.jpeg is None:
            log.warning(f"{name}: its JPEG quantisation tables could not be read; judging its "
                        "noise only (set --denoise 0..1 to choose)")
        else:
            q = image.jpeg.quality
            t = _ramp(q, JPEG_CLEAN_QUALITY, JPEG_FULL_QUALITY)
            kind = "JPEG quality" if image.jpeg.standard else "JPEG, equivalent quality"
            reasons.append((t, f"{kind} {q}"))
    sigma = estimate_noise(rgb) if rgb.numel() else None
    if sigma is None or sigma == 0.0:
        if not reasons:
            log.warning(f"{name}: too small or too uniform to measure its noise; treating it as "
                        "clean (set --denoise 0..1 to choose)")
            return Strength(0.0, "nothing to measure: clean")
    else:
        reasons.append((_ramp(sigma, NOISE_CLEAN_SIGMA, NOISE_FULL_SIGMA), f"noise σ {sigma:.1f}"))
    t, why = max(reasons, key=lambda r: r[0])
    return Strength(round(t, 3), why)


class WeightBlend:
    """The weights of one network between a clean and a degradation-aware state dict.

    ``apply(t)`` writes (1 - t)·clean + t·degraded into the network's parameters (in memory only,
    computed again only when t changes); t = 0 and t = 1 give exactly the two weight sets."""

    def __init__(self, model: "torch.nn.Module", clean: "dict[str, torch.Tensor]",
                 degraded: "dict[str, torch.Tensor]", *, name: str = "model"):
        import torch

        own = model.state_dict()
        if set(clean) != set(degraded):
            raise ModelError(f"the degradation-aware partner of {name} has other tensors; the two "
                             "must share an architecture")
        for k in clean:
            if k not in own or clean[k].shape != degraded[k].shape or own[k].shape != clean[k].shape:
                raise ModelError(f"the degradation-aware partner of {name} does not match its "
                                 f"architecture (tensor {k}); fix the registry's degradation_model")
        self.model = model
        self.clean = {k: v.to(own[k].device, torch.float32) for k, v in clean.items()}
        self.degraded = {k: v.to(own[k].device, torch.float32) for k, v in degraded.items()}
        self.current: float | None = None

    def apply(self, t: float) -> None:
        import torch

        t = float(t)
        if t == self.current:
            return
        with torch.no_grad():
            self._write(t)
        self.current = t

    def _write(self, t: float) -> None:
        import torch

        params = self.model.state_dict()
        for k, a in self.clean.items():
            if t == 0.0:
                value = a
            elif t == 1.0:
                value = self.degraded[k]
            else:
                value = torch.lerp(a, self.degraded[k], t)
            params[k].copy_(value)


def partner_weights(entry: "ModelEntry | None", net: "torch.nn.Module",
                    degradation: Degradation) -> "dict[str, torch.Tensor] | None":
    """The weights of the degradation-aware partner of the registry ``entry`` the network was
    loaded from (its ``degradation_model``; the entry comes with the resolved
    :class:`~clipsr_cli.hub.resolve.Registered`, None for a file), or None when it has none or
    ``degradation`` never needs it (a fixed strength of 0, e.g. ``--degradation clean``: then the
    clean model runs exactly as before)."""
    from clipsr_cli.hub.entries import GeneratorEntry
    from clipsr_cli.hub.resolve import resolve_model
    from clipsr_cli.model.checkpoint import read_checkpoint

    if degradation.fixed == 0.0 or not isinstance(entry, GeneratorEntry):
        return None
    partner = entry.degradation_model
    if partner is None:
        return None
    config, state, _ = read_checkpoint(resolve_model(partner))
    if config != getattr(net, "config", None):
        raise ModelError(f"{entry.name}'s degradation-aware partner {partner} has another "
                         "architecture; fix the registry's degradation_model")
    return {k: v.float() for k, v in state.items()}
