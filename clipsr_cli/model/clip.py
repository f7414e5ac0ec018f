"""CLIP backbones through open_clip: a frozen text encoder and a promptable visual transformer.

A CLIP *spec* is ``ARCH`` or ``ARCH:WEIGHTS``. ARCH is an open_clip architecture name
(``ViT-B-32``, ``RN50`` is not supported: CLIP-SR needs a visual *transformer*) or ``clipsr-tiny``,
a tiny architecture registered by this package for tests. WEIGHTS is ``openai`` (the default,
fetched through the clipsr registry), another registry entry, a file path, an open_clip pretrained
tag, or ``random`` (deterministic random initialisation, for tests and experiments only).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import ModelError

TINY_ARCH = "clipsr-tiny"
_TINY_CONFIG = Path(__file__).with_name("clipsr-tiny.json")
_registered = False
log = logging.getLogger(__name__)


def _open_clip():
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(_TINY_CONFIG)
        _registered = True
    return open_clip


@dataclass(frozen=True)
class ClipSpec:
    arch: str
    weights: str = "openai"

    @classmethod
    def parse(cls, spec: str) -> "ClipSpec":
        spec = spec.strip()
        if not spec or spec.lower() == "none":
            raise ModelError("empty CLIP spec; use e.g. 'ViT-B-32' or 'ViT-B-32:openai'")
        arch, _, weights = spec.partition(":")
        if not weights:
            weights = "random" if arch == TINY_ARCH else "openai"
        return cls(arch, weights)

    def __str__(self) -> str:
        return f"{self.arch}:{self.weights}"


@dataclass(frozen=True)
class ClipDims:
    text_dim: int
    visual_width: int
    visual_layers: int
    image_size: int


def clip_dims(arch: str) -> ClipDims:
    """Dimensions of a CLIP architecture, read from its open_clip config (no weights built)."""
    cfg = _open_clip().get_model_config(arch)
    if cfg is None:
        raise ModelError(f"unknown CLIP architecture {arch!r}; use an open_clip ViT name such as "
                         f"'ViT-B-32', 'ViT-B-16', 'ViT-L-14', or '{TINY_ARCH}'")
    v = cfg["vision_cfg"]
    if isinstance(v.get("layers"), (list, tuple)) or "timm_model_name" in v and v["timm_model_name"]:
        raise ModelError(f"CLIP architecture {arch!r} has no plain visual transformer; "
                         "CLIP-SR needs a ViT (e.g. 'ViT-B-32')")
    size = v.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return ClipDims(cfg["embed_dim"], v["width"], v["layers"], size)


def _resolve_weights(spec: ClipSpec) -> str | None:
    """Return what open_clip's ``pretrained=`` needs: a local file, a tag, or None for random."""
    if spec.weights == "random":
        return None
    p = Path(spec.weights).expanduser()
    if p.suffix in (".pt", ".pth", ".bin", ".safetensors") or p.exists():
        if not p.is_file():
            raise ModelError(f"CLIP weights file not found: {p}")
        return str(p)
    try:  # the registry/cache (downloads with sha256 verification)
        from clipsr_cli.hub import registry

        path = registry.clip_weights_path(spec.arch, spec.weights)
        if path is not None:
            return str(path)
    except (ImportError, AttributeError):  # registry not available: fall back to open_clip tags
        pass
    return spec.weights


class ClipBackbone(nn.Module):
    """Frozen CLIP: sentence embeddings, and visual tokens with optional injected prompts."""

    def __init__(self, model: nn.Module, tokenizer, spec: ClipSpec):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        visual = model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise ModelError(f"CLIP {spec.arch} has no plain visual transformer; use a ViT")
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen, always eval
        return super().train(False)

    @property
    def text_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if not isinstance(
            self.model.text_projection, nn.Linear) else self.model.text_projection.out_features

    @property
    def visual_width(self) -> int:
        return int(self.model.visual.conv1.out_channels)

    @property
    def visual_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings (B, D): the end-of-text token after ln_final times the projection."""
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=False).float()

    def preprocess(self, img: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> CLIP input: resized to image_size², normalised."""
        x = F.interpolate(img.float(), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True)
        return (x.clamp(0, 1) - self.mean) / self.std

    def visual_tokens(self, img: torch.Tensor, prompts: torch.Tensor | None = None,
                      return_layers: tuple[int, ...] | None = None):
        """Run the visual transformer on an image in [0,1].

        ``prompts`` (B, K, width): token k is appended before block k and removed after it.
        Returns the patch-token map (B, width, g, g) after the last block that received a prompt
        (after all blocks when there are no prompts), or, with ``return_layers``, a list of the
        patch-token maps after each of those (1-based) blocks.
        """
        visual = self.model.visual
        x = visual._embeds(self.preprocess(img))  # (B, 1+g², W)  (batch_first)
        blocks = visual.transformer.resblocks
        k = 0 if prompts is None else prompts.shape[1]
        last = max(return_layers) if return_layers else (k if k else len(blocks))
        g = int(round((x.shape[1] - 1) ** 0.5))
        outs = []
        for i, blk in enumerate(blocks[:last]):
            if i < k:
                x = torch.cat([x, prompts[:, i:i + 1].to(x.dtype)], dim=1)
                x = blk(x)[:, :-1]
            else:
                x = blk(x)
            if return_layers and (i + 1) in return_layers:
                outs.append(_to_map(x, g))
        return outs if return_layers else _to_map(x, g)

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (B, D) of an image in [0,1] (differentiable w.r.t. the image)."""
        return self.model.encode_image(self.preprocess(img), normalize=False).float()


def _to_map(x: torch.Tensor, g: int) -> torch.Tensor:
    t = x[:, 1:1 + g * g]
    return t.transpose(1, 2).reshape(x.shape[0], -1, g, g)


_RANDOM_SEED = 20241215


def load_clip(spec: str | ClipSpec, device: torch.device | str = "cpu") -> ClipBackbone:
    """Build a frozen CLIP backbone in fp32 on ``device``."""
    spec = ClipSpec.parse(spec) if isinstance(spec, str) else spec
    dims = clip_dims(spec.arch)  # validates the architecture
    del dims
    open_clip = _open_clip()
    pretrained = _resolve_weights(spec)
    if pretrained is None and spec.arch != TINY_ARCH:
        warnings.warn(f"CLIP {spec.arch} with random weights: for tests and experiments only",
                      stacklevel=2)
    try:
        with warnings.catch_warnings(), _quiet_open_clip():
            warnings.simplefilter("ignore")
            if pretrained is None:
                # deterministic random init: a checkpoint trained with ':random' must see the same CLIP
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_RANDOM_SEED)
                    model = open_clip.create_model(spec.arch, pretrained=None, device="cpu")
            else:
                model = open_clip.create_model(spec.arch, pretrained=pretrained, device="cpu")
    except ModelError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError for bad weights
        hint = "check the file, or run 'clipsr download' for registered CLIP weights"
        if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("CLIPSR_OFFLINE"):
            hint += " (offline mode is on)"
        raise ModelError(f"cannot load CLIP {spec}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                         f"{hint}") from None
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return ClipBackbone(model.float(), tokenizer, spec).to(device)


class _quiet_open_clip:
    """open_clip logs 'No pretrained weights loaded' at WARNING for random inits; silence it."""

    def __enter__(self):
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.root.setLevel(self._level)
