"""CLIP backbones through open_clip: a frozen text encoder and a promptable visual transformer.

A CLIP *spec* is ``ARCH`` or ``ARCH:WEIGHTS``. ARCH is an open_clip architecture name
(``ViT-B-32``, ``RN50`` is not supported: CLIP-SR needs a visual *transformer*) or ``clipsr-tiny``,
a tiny architecture registered by this package for tests. WEIGHTS is ``openai`` (the default,
fetched through the clipsr registry), another registry entry, a file path, an open_clip pretrained
tag, or ``random`` (deterministic random initialisation, for tests and experiments only).

This module does not look names up in the registry: :func:`load_clip` takes an already resolved
``weights_path``; ``clipsr_cli.infer.engine.load_clip_backbone`` resolves and loads.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import ModelError

TINY_ARCH = "clipsr-tiny"
_TINY_CONFIG = Path(__file__).with_name("clipsr-tiny.json")
_registered = False


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

    @property
    def weights_file(self) -> Path | None:
        """WEIGHTS as a local file path, when it is one (a path separator, ``~``, or an
        existing file; a bare file name is told by its suffix one layer up, in
        :func:`clipsr_cli.hub.resolve.clip_weights_file`)."""
        w = self.weights
        p = Path(w).expanduser()
        if "/" in w or os.sep in w or w.startswith("~") or p.exists():
            return p
        return None


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


def _pretrained(spec: ClipSpec, weights_path: str | os.PathLike | None) -> str | None:
    """What open_clip's ``pretrained=`` gets: a local file, a tag, or None for random weights."""
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise ModelError(f"CLIP weights file not found: {p}")
        return str(p)
    if spec.weights == "random":
        return None
    p = spec.weights_file
    if p is not None:
        if not p.is_file():
            raise ModelError(f"CLIP weights file not found: {p}")
        return str(p)
    return spec.weights  # an open_clip pretrained tag


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

    # -- the visual transformer, step by step (open_clip's public attributes only) -------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The visual transformer's residual blocks; each maps (B, L, width) → (B, L, width)."""
        return self.model.visual.transformer.resblocks

    @property
    def grid(self) -> int:
        """g: the visual transformer sees g × g patch tokens."""
        return self.image_size // self.model.visual.conv1.stride[0]

    def embed_patches(self, img: torch.Tensor, *, prepared: bool = False) -> torch.Tensor:
        """Image in [0,1] → the token sequence (B, 1 + g², width) that enters the first block:
        patch embeddings after the class token, plus positions, after ``ln_pre``. ``prepared``:
        ``img`` is already CLIP's input (resized and normalised, e.g. by
        :func:`clipsr_cli.model.view.clip_view`). (Patch dropout, a training-time option of
        open_clip, never runs: this CLIP is always in eval mode.)"""
        visual = self.model.visual
        x = visual.conv1(img if prepared else self.preprocess(img))  # (B, width, g, g)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g², width)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The token sequence after the last block → the image embedding (B, D): ``ln_post`` and
        the class token (or the patch mean, as the architecture says), times ``proj``."""
        visual = self.model.visual
        pool_type = getattr(visual, "pool_type", "tok")
        if getattr(visual, "attn_pool", None) is not None or pool_type not in ("tok", "avg"):
            raise ModelError(f"CLIP {self.spec.arch} pools with attention; CLIP-SR needs a plain "
                             "ViT (e.g. 'ViT-B-32')")
        after = getattr(visual, "final_ln_after_pool", False)
        if not after:
            x = visual.ln_post(x)
        pooled = x[:, 0] if pool_type == "tok" else x[:, 1:].mean(dim=1)
        if after:
            pooled = visual.ln_post(pooled)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    @staticmethod
    def token_map(x: torch.Tensor) -> torch.Tensor:
        """A token sequence (B, 1 + g² [+ extra], width) → the patch-token map (B, width, g, g)."""
        g = int(round((x.shape[1] - 1) ** 0.5))
        return _to_map(x, g)

    def visual_features(self, img: torch.Tensor, layers: Sequence[int] = ()) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One pass over an image in [0,1]: the patch-token maps after the given (1-based) blocks
        and the image embedding (B, D), fp32. Differentiable w.r.t. ``img``."""
        x = self.embed_patches(img)
        maps = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if (i + 1) in layers:
                maps.append(self.token_map(x))
        return maps, self.pool(x).float()

    def prompt_blocks(self, k: int) -> list[int]:
        """The (0-based) block before which each of ``k`` prompt tokens enters: token i before
        block min(i + 1, depth - 1), i.e. blocks 2 … K+1 in 1-based terms (ViT-B/32 with K = 8:
        blocks 2–9, as CLIP-SR's authors); tokens beyond the depth all enter before the last."""
        last = len(self.blocks) - 1
        return [min(i + 1, last) for i in range(k)]

    def prompted_sequence(self, x: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Run every block over the token sequence ``x`` (from :meth:`embed_patches`) with the
        prompt tokens ``prompts`` (B, K, width) joining it as :meth:`prompt_blocks` says and
        staying in it (later patch tokens attend to them). Returns the sequence after the last
        block: (B, 1 + g² + K, width), the prompt tokens last."""
        enter = self.prompt_blocks(0 if prompts is None else prompts.shape[1])
        for i, blk in enumerate(self.blocks):
            joining = [k for k, b in enumerate(enter) if b == i]
            if joining:
                x = torch.cat([x, prompts[:, joining[0]:joining[-1] + 1].to(x.dtype)], dim=1)
            x = blk(x)
        return x

    def visual_tokens(self, img: torch.Tensor, prompts: torch.Tensor | None = None,
                      return_layers: tuple[int, ...] | None = None):
        """Run the visual transformer on an image in [0,1] (squashed to CLIP's input size).

        ``prompts`` (B, K, width): injected as :meth:`prompted_sequence` does. Returns the
        patch-token map (B, width, g, g) after the last block, or, with ``return_layers`` (and no
        prompts), a list of the patch-token maps after each of those (1-based) blocks.
        """
        x = self.embed_patches(img)
        g = self.grid
        if not return_layers:
            return _to_map(self.prompted_sequence(x, prompts), g)
        if prompts is not None:
            raise ModelError("visual_tokens: `return_layers` works without `prompts` only")
        outs = []
        for i, blk in enumerate(self.blocks[:max(return_layers)]):
            x = blk(x)
            if (i + 1) in return_layers:
                outs.append(_to_map(x, g))
        return outs

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (B, D) of an image in [0,1] (differentiable w.r.t. the image)."""
        return self.model.encode_image(self.preprocess(img), normalize=False).float()

    @torch.no_grad()
    def similarity(self, img: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B,) between the CLIP embedding of ``img`` (in [0,1]) and a sentence
        embedding (B or 1, D) from :meth:`encode_text`."""
        emb = self.encode_image(img.to(self.device))
        return F.cosine_similarity(emb, text_embedding.to(emb.device))


def _to_map(x: torch.Tensor, g: int) -> torch.Tensor:
    t = x[:, 1:1 + g * g]
    return t.transpose(1, 2).reshape(x.shape[0], -1, g, g)


_RANDOM_SEED = 20241215


def load_clip(spec: str | ClipSpec, device: torch.device | str = "cpu", *,
              weights_path: str | os.PathLike | None = None) -> ClipBackbone:
    """Build a frozen CLIP backbone in fp32 on ``device``.

    ``weights_path``: the weights file, already resolved (e.g. from the registry's cache). Without
    it the spec's WEIGHTS is used as it stands: ``random``, a file path, or an open_clip
    pretrained tag (registered names such as ``openai`` are resolved one layer up, by
    ``clipsr_cli.infer.engine.load_clip_backbone``).
    """
    spec = ClipSpec.parse(spec) if isinstance(spec, str) else spec
    clip_dims(spec.arch)  # validates the architecture
    open_clip = _open_clip()
    pretrained = _pretrained(spec, weights_path)
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
