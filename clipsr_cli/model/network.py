"""The CLIP-SR generator (Hu et al., arXiv 2412.11609), reimplemented from the paper's design.

Inference contract (``CLIPSR.forward``): ``lr`` is (B, 3, h, w) float in [0, 1] on the model's
device, h and w multiples of ``info.pad_multiple`` (the tiler pads); the result is
(B, 3, s·h, s·w), *not* clamped. Text and CLIP-visual conditioning come from
``CLIPSR.condition`` once per image, so that tiles of one image share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.config import ModelConfig, ModelInfo


@dataclass
class Conditioning:
    """Per-image conditioning, computed once and shared by every tile of that image."""

    text: torch.Tensor | None
    """(B, D) unit-norm sentence embedding (the learned null embedding when no text), or None
    for an image-only model."""
    fu: torch.Tensor | None
    """(B, C, g, g) text-aware CLIP visual features F_U (projected), or None."""
    full_size: tuple[int, int]
    """(H, W) of the whole LR image, for placing F_U under a tile."""


class Affine(nn.Module):
    """Channel-wise γ·x + β with γ, β predicted from the text by two MLPs; starts as identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True),
                                   nn.Linear(channels, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True),
                                  nn.Linear(channels, channels))
        for mlp, bias in ((self.gamma, 1.0), (self.beta, 0.0)):
            nn.init.zeros_(mlp[2].weight)
            nn.init.constant_(mlp[2].bias, bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = self.gamma(t).to(x.dtype)[:, :, None, None]
        b = self.beta(t).to(x.dtype)[:, :, None, None]
        return x * g + b


class TIFBlock(nn.Module):
    """Text-Image Fusion Block: conv → affine(t) → LeakyReLU → conv → affine(t), residual.

    With ``cond_dim == 0`` (image-only models) it is a plain residual block.
    """

    def __init__(self, channels: int, cond_dim: int, slope: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.aff1 = Affine(cond_dim, channels) if cond_dim else None
        self.aff2 = Affine(cond_dim, channels) if cond_dim else None
        self.slope = slope
        nn.init.kaiming_normal_(self.conv2.weight, a=slope)
        self.conv2.weight.data.mul_(0.1)  # residual branch starts small: stable deep stacks

    def forward(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(x)
        if self.aff1 is not None:
            h = self.aff1(h, t)
        h = F.leaky_relu(h, self.slope)
        h = self.conv2(h)
        if self.aff2 is not None:
            h = self.aff2(h, t)
        return x + h


class PromptPredictor(nn.Module):
    """Text features → K prompt tokens for CLIP's visual transformer (MLP + self-attention)."""

    def __init__(self, text_dim: int, width: int, tokens: int):
        super().__init__()
        self.tokens, self.width = tokens, width
        hidden = max(width, text_dim)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, tokens * width))
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        heads = max(1, width // 64)
        self.attn = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                               activation="gelu", batch_first=True, norm_first=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        p = self.mlp(t).view(t.shape[0], self.tokens, self.width) + self.pos
        return self.attn(p)


class CLIPSR(nn.Module):
    """CLIP-SR generator. Build with ``CLIPSR(config)``; attach a CLIP backbone with
    ``attach_clip`` for text-conditioned configs (CLIP is frozen and not part of ``state_dict``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        widths = cfg.encoder_widths
        d = cfg.text_dim if cfg.text_conditioned else 0
        self.slope = cfg.negative_slope
        # image encoder: a conv pyramid of the LR image
        self.head = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1)
                                  for i in range(1, len(widths)))
        # iterative refinement, coarse to fine: stage i works at level i, then goes up to i-1
        self.stages = nn.ModuleList(
            nn.ModuleList(TIFBlock(widths[i], d, self.slope) for _ in range(cfg.stage_blocks))
            for i in range(1, len(widths)))
        self.lift = nn.ModuleList(nn.Conv2d(widths[i], widths[i - 1] * 4, 3, padding=1)
                                  for i in range(1, len(widths)))
        self.body = nn.ModuleList(TIFBlock(widths[0], d, self.slope) for _ in range(cfg.body_blocks))
        self.body_conv = nn.Conv2d(widths[0], widths[0], 3, padding=1)
        # upsampler: log2(s) pixel-shuffle x2 stages, each followed by a text-modulated block
        ups, blocks, c = [], [], widths[0]
        for w in cfg.up_widths[:cfg.num_up]:
            ups.append(nn.Conv2d(c, w * 4, 3, padding=1))
            blocks.append(TIFBlock(w, d, self.slope))
            c = w
        self.up = nn.ModuleList(ups)
        self.up_blocks = nn.ModuleList(blocks)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as bicubic: the net predicts the residual
        nn.init.zeros_(self.tail.bias)
        # text path
        if cfg.text_conditioned:
            null = torch.randn(d)
            self.null_text = nn.Parameter(null / null.norm())
            self.prompt = PromptPredictor(d, cfg.clip_width, cfg.prompt_tokens)
            self.fu_norm = nn.LayerNorm(cfg.clip_width)
            self.fu_proj = nn.Linear(cfg.clip_width, widths[-1])
            nn.init.zeros_(self.fu_proj.weight)
            nn.init.zeros_(self.fu_proj.bias)
        self._clip = None

    # -- description ---------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        cfg = self.config
        m = cfg.pad_multiple
        # theoretical receptive-field radius in LR pixels; the effective one is much smaller
        r = 1 + sum(2 ** (i - 1) for i in range(1, len(cfg.encoder_widths)))
        r += sum(2 ** i * (2 * cfg.stage_blocks + 1) for i in range(1, len(cfg.encoder_widths)))
        r += 2 * cfg.body_blocks + 1 + 2
        overlap = min(-(-r // m) * m, 64)
        return ModelInfo(scale=cfg.scale, text_conditioned=cfg.text_conditioned, clip=cfg.clip,
                         pad_multiple=m, tile_overlap=overlap,
                         parameters=sum(p.numel() for p in self.parameters()))

    def bytes_per_lr_pixel(self, elem_size: int = 4) -> int:
        """Rough peak activation memory per LR pixel of a tile (for choosing tile sizes)."""
        cfg, s = self.config, 1
        peak = 6 * cfg.encoder_widths[0]
        for w in cfg.up_widths[:cfg.num_up]:
            s *= 2
            peak = max(peak, 6 * w * s * s)
        return peak * elem_size + 3 * cfg.scale ** 2 * 4 * 3

    # -- CLIP ----------------------------------------------------------------------------------
    def attach_clip(self, clip) -> None:
        """Attach a frozen CLIP backbone (kept out of ``state_dict`` and of ``parameters()``)."""
        if self.config.text_conditioned:
            if clip.text_dim != self.config.text_dim or clip.visual_width != self.config.clip_width:
                from clipsr_cli.errors import ModelError

                raise ModelError(f"CLIP {clip.spec} does not match this model (needs text_dim "
                                 f"{self.config.text_dim}, visual width {self.config.clip_width})")
            if self.config.prompt_tokens > clip.visual_layers:
                from clipsr_cli.errors import ModelError

                raise ModelError(f"CLIP {clip.spec} has {clip.visual_layers} visual blocks, fewer "
                                 f"than the model's {self.config.prompt_tokens} prompt tokens")
        object.__setattr__(self, "_clip", clip)

    @property
    def clip(self):
        return self._clip

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._clip is not None:
            self._clip._apply(fn)
        return self

    def text_embedding(self, texts: list[str | None] | None, batch: int = 1) -> torch.Tensor | None:
        """Sentence embeddings for ``texts`` (None entries → null); raw, not normalised."""
        if not self.config.text_conditioned:
            return None
        if self._clip is None:
            from clipsr_cli.errors import ModelError

            raise ModelError("this text-conditioned model has no CLIP attached")
        texts = texts if texts is not None else [None] * batch
        out = self.null_text.detach().unsqueeze(0).repeat(len(texts), 1)
        real = [i for i, t in enumerate(texts) if t]
        if real:
            emb = self._clip.encode_text([texts[i] for i in real]).to(out.dtype)
            out[real] = emb
        return out

    def condition(self, lr_full: torch.Tensor, text_emb: torch.Tensor | None = None,
                  *, null_mask: torch.Tensor | None = None) -> Conditioning:
        """Per-image conditioning from the whole LR image and (optional) sentence embeddings.

        ``text_emb``: (B, D) from ``text_embedding`` (or any CLIP-space vector; None → null text).
        ``null_mask``: (B,) bool, rows that use the learned null embedding (caption dropout).
        """
        h, w = lr_full.shape[-2:]
        if not self.config.text_conditioned:
            return Conditioning(None, None, (h, w))
        b = lr_full.shape[0]
        null = self.null_text.unsqueeze(0).expand(b, -1)
        if text_emb is None:
            t = null
        else:
            t = text_emb.to(null.dtype)
            if null_mask is not None:
                t = torch.where(null_mask[:, None], null, t)
        t = F.normalize(t, dim=-1)
        fu = None
        if self.config.fu_fusion:
            if self._clip is None:
                from clipsr_cli.errors import ModelError

                raise ModelError("this text-conditioned model has no CLIP attached")
            prompts = self.prompt(t)
            tokens = self._clip.visual_tokens(lr_full.float(), prompts.float())  # (B, W, g, g)
            fu = self.fu_proj(self.fu_norm(tokens.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return Conditioning(t, fu, (h, w))

    # -- forward -------------------------------------------------------------------------------
    def forward(self, lr: torch.Tensor, cond: Conditioning | None = None,
                offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Super-resolve ``lr`` (a whole image or a tile at ``offset`` of the image that
        ``cond`` was computed for)."""
        if cond is None:
            cond = self.condition(lr)
        t = cond.text
        x0 = F.leaky_relu(self.head(lr), self.slope)
        feats = [x0]
        x = x0
        for conv in self.down:
            x = F.leaky_relu(conv(x), self.slope)
            feats.append(x)
        if cond.fu is not None:
            x = x + _place_fu(cond.fu, offset, cond.full_size, x.shape[-2:],
                              2 ** (len(feats) - 1)).to(x.dtype)
        for i in range(len(self.stages), 0, -1):
            for blk in self.stages[i - 1]:
                x = blk(x, t)
            x = F.leaky_relu(F.pixel_shuffle(self.lift[i - 1](x), 2), self.slope) + feats[i - 1]
        for blk in self.body:
            x = blk(x, t)
        x = self.body_conv(x) + x0
        for conv, blk in zip(self.up, self.up_blocks):
            x = F.leaky_relu(F.pixel_shuffle(conv(x), 2), self.slope)
            x = blk(x, t)
        base = F.interpolate(lr, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return self.tail(x) + base.to(x.dtype)


def _place_fu(fu: torch.Tensor, offset: tuple[int, int], full: tuple[int, int],
              size: tuple[int, int], stride: int) -> torch.Tensor:
    """Bilinearly sample the F_U grid (which covers the whole LR image) at the centres of the
    coarse-level pixels of a tile. Pointwise in absolute coordinates, so tiles agree exactly."""
    h, w = size
    dev = fu.device
    ys = offset[0] + stride * torch.arange(h, device=dev, dtype=torch.float32) + (stride - 1) / 2
    xs = offset[1] + stride * torch.arange(w, device=dev, dtype=torch.float32) + (stride - 1) / 2
    gy = (ys + 0.5) / full[0] * 2 - 1
    gx = (xs + 0.5) / full[1] * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (h, w, 2) as (x, y)
    grid = grid.unsqueeze(0).expand(fu.shape[0], -1, -1, -1)
    return F.grid_sample(fu.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def build_model(config: ModelConfig, clip=None) -> CLIPSR:
    """Build a generator (random weights); attach ``clip`` if the config is text-conditioned."""
    model = CLIPSR(config)
    if clip is not None:
        model.attach_clip(clip)
    return model
