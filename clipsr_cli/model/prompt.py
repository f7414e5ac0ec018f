"""The text path of the generator: prompt predictor, F_U projection and placement, conditioning.

The sentence embedding t modulates every TIFBlock (γ, β) directly. It also reaches the image a
second way: the *prompt predictor* turns t into K prompt tokens for CLIP's visual transformer,
whose text-aware patch tokens (F_U) are projected to the encoder's coarsest width and added to
the coarsest features before the Iterative Refinement Module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


class FUProjection(nn.Module):
    """CLIP patch-token map (B, W, g, g) → F_U (B, C, g, g): LayerNorm then a linear map that
    starts at zero (a fresh model ignores CLIP)."""

    def __init__(self, clip_width: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(clip_width)
        self.proj = nn.Linear(clip_width, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def place_fu(fu: torch.Tensor, offset: tuple[int, int], full: tuple[int, int],
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
