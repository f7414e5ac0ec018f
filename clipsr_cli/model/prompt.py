"""The text path of the generator: prompt predictor, F_U read-out, conditioning.

The unit sentence embedding t reaches the image two ways, each of which can be switched off:

* **TIFBlocks** (``ModelConfig.tif_text``): t predicts the channel-wise γ, β of every TIFBlock;
* **F_U** (``ModelConfig.fu_fusion``): the *prompt predictor* turns t into K prompt tokens that
  join CLIP's visual transformer from block 2 on and stay in its sequence, so the patch tokens of
  every later block attend to them; CLIP sees the image through the windows of
  :mod:`clipsr_cli.model.view`. The *F_U read-out* lets each patch token attend once more, with
  learned weights, to all of CLIP's output tokens (patches and prompts), modulates the result by
  the text (FiLM) and projects it to the width of every level of the generator: F_U is added at
  each level of the Iterative Refinement Module (LR/4, LR/2, LR) and after each ×2 upsampling
  stage, where the detail is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipsr_cli.model.view import ViewPlan


@dataclass(frozen=True)
class Conditioning:
    """Per-image conditioning, computed once and shared by every tile of that image."""

    text: torch.Tensor | None
    """(B, D) unit-norm sentence embedding for the TIFBlocks (the learned null embedding when no
    text), or None for an image-only model."""
    fu: tuple[torch.Tensor, ...] | None
    """F_U per level: the pyramid levels (LR/2^k, k = 0 first), then the upsampling stages (2^j·LR,
    j = 1 first); each (B, n, C_i, g, g), one g × g map per CLIP window of ``view``. None without
    the F_U path."""
    full_size: tuple[int, int]
    """(H, W) of the whole LR image."""
    view: ViewPlan | None = None
    """The CLIP windows ``fu`` was computed on."""


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
    """CLIP's output sequence (and the text) → F_U at every pyramid level.

    LayerNorm; one cross-attention of the patch tokens over all output tokens (patch and prompt
    tokens; residual); a FiLM by the text, (1 + γ(t))·h + β(t); one linear map per level. The
    per-level maps start at zero (a fresh model ignores CLIP): they are the last layer of the
    branch, so their gradient is non-zero from the first step and everything before them learns
    from the second.
    """

    def __init__(self, clip_width: int, widths: tuple[int, ...], text_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(clip_width)
        self.attn = nn.MultiheadAttention(clip_width, max(1, clip_width // 64), batch_first=True)
        self.film = nn.Sequential(nn.Linear(text_dim, clip_width), nn.GELU(),
                                  nn.Linear(clip_width, 2 * clip_width))
        self.proj = nn.ModuleList(nn.Linear(clip_width, w) for w in widths)
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, seq: torch.Tensor, grid: int, t: torch.Tensor) -> list[torch.Tensor]:
        """``seq`` (N, 1 + g² + K, width), ``t`` (N, D) → per level (N, C_i, g, g)."""
        x = self.norm(seq)
        patches, context = x[:, 1:1 + grid * grid], x[:, 1:]
        h = patches + self.attn(patches, context, context, need_weights=False)[0]
        gamma, beta = self.film(t.to(h.dtype)).unsqueeze(1).chunk(2, dim=-1)
        h = h * (1 + gamma) + beta
        n = seq.shape[0]
        return [p(h).transpose(1, 2).reshape(n, -1, grid, grid) for p in self.proj]
