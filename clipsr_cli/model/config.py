"""The model configuration: a frozen dataclass stored (as JSON) inside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from clipsr_cli.errors import ModelError

SCALES = (2, 4, 8, 16)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a CLIP-SR generator.

    The network: a conv pyramid of the LR image (``encoder_widths``, one level per entry, each
    level after the first halves the resolution), coarse-to-fine refinement stages of
    ``stage_blocks`` TIFBlocks each, ``body_blocks`` TIFBlocks at LR resolution, then
    log2(scale) pixel-shuffle x2 stages (widths ``up_widths``) each followed by a TIFBlock,
    and a global bicubic skip.
    """

    scale: int = 4
    """Upscaling factor: 2, 4, 8 or 16."""
    encoder_widths: tuple[int, ...] = (64, 96, 128)
    """Channels of each pyramid level; level 0 is at LR resolution, level i at LR/2^i."""
    stage_blocks: int = 1
    """TIFBlocks in each coarse refinement stage (levels >= 1)."""
    body_blocks: int = 4
    """TIFBlocks at LR resolution (the last refinement stage)."""
    up_widths: tuple[int, ...] = (32, 16, 16, 16)
    """Channels after each x2 upsampling stage; the first log2(scale) entries are used."""
    clip: str | None = None
    """CLIP backbone spec ``ARCH:WEIGHTS`` (e.g. ``ViT-B-32:openai``), or None: image-only."""
    text_dim: int = 0
    """Width of the CLIP sentence embedding (0 for an image-only model)."""
    clip_width: int = 0
    """Token width of CLIP's visual transformer (0 for an image-only model)."""
    clip_image_size: int = 224
    """Input resolution of CLIP's visual transformer."""
    prompt_tokens: int = 8
    """K: prompt tokens predicted from the text; token k joins CLIP's ViT before block k+1
    (blocks 2 … K+1, capped at the last) and stays; every block runs."""
    fu_fusion: bool = True
    """Text path 1: fuse CLIP's text-aware visual features F_U into every level of the generator
    (False: no F_U; an ablation switch)."""
    fu_film: bool = False
    """Inside F_U: also modulate the read-out directly by the text, (1 + γ(t))·h + β(t), a route
    that bypasses CLIP (clipsr's addition). Off by default: F_U then hears the text only through
    the prompt tokens in CLIP's ViT, the paper's route (docs/text-path.md: the measurement)."""
    tif_text: bool = True
    """Text path 2: the text sets the γ, β of every TIFBlock (False: the TIFBlocks get no text;
    an ablation switch)."""
    clip_view: int = 48
    """Side, in LR pixels, of the windows CLIP sees (``clipsr_cli.model.view``): one ViT token
    covers clip_view / grid LR pixels. Training sets it to the LR patch side
    (``data.patch_size``, 48 by default), so a training patch is exactly one window."""
    negative_slope: float = 0.2
    """LeakyReLU slope."""

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ModelError(f"scale must be one of {SCALES}, got {self.scale}")
        if len(self.up_widths) < self.num_up:
            raise ModelError(f"up_widths needs {self.num_up} entries for scale {self.scale}")
        if not self.encoder_widths:
            raise ModelError("encoder_widths must not be empty")
        if self.clip is not None and (self.text_dim <= 0 or self.clip_width <= 0):
            raise ModelError("a CLIP-conditioned config needs text_dim and clip_width")
        if self.clip is not None and not (self.fu_fusion or self.tif_text):
            raise ModelError("a text-conditioned model needs a text path: `fu_fusion=True` or "
                             "`tif_text=True`")
        if self.clip_view < 1:
            raise ModelError(f"`clip_view` must be a positive number of LR pixels, not {self.clip_view}")

    @property
    def num_up(self) -> int:
        return {2: 1, 4: 2, 8: 3, 16: 4}[self.scale]

    @property
    def text_conditioned(self) -> bool:
        return self.clip is not None

    @property
    def pad_multiple(self) -> int:
        """LR sizes must be multiples of this (the pyramid halves the size len-1 times)."""
        return 2 ** (len(self.encoder_widths) - 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelError(f"{source}: unknown model config keys {unknown}; is this checkpoint "
                             "from a newer clipsr? Upgrade clipsr.")
        kwargs = {}
        for k, v in data.items():
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        try:
            return cls(**kwargs)
        except TypeError as e:  # pragma: no cover - defensive
            raise ModelError(f"{source}: invalid model config: {e}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> "ModelConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"{source}: model config is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{source}: model config must be a JSON object")
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model says about itself; the engine and tiler read this."""

    scale: int
    text_conditioned: bool
    clip: str | None
    pad_multiple: int
    tile_overlap: int
    """Recommended overlap between tiles, in LR pixels (covers the effective receptive field);
    for a ``two_phase`` model, that of its LR part (``lr_features``)."""
    precisions: tuple[str, ...] = field(default=("fp32", "bf16", "fp16"))
    parameters: int = 0
    tail_overlap: int = 0
    """``two_phase`` models: the exact receptive-field radius, in LR pixels, of the
    high-resolution tail (``reconstruct``); its tiles are grown by this much and not blended."""
    two_phase: bool = False
    """The model splits into ``lr_features(lr, cond, offset)`` at LR resolution and
    ``reconstruct(feats, lr, cond, offset)``, so the engine tiles the two parts separately, each
    with the overlap it needs (False: third-party models, tiled as a whole)."""
