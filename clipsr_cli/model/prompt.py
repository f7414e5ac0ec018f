"""The text path of the generator: prompt predictor, F_U read-out, conditioning.

The unit sentence embedding t reaches the image by three routes (``ROUTES``), each of which can
be switched off:

* **TIFBlocks** (``ModelConfig.tif_text``): t predicts the channel-wise γ, β of every TIFBlock;
* **prompt tokens** (``ModelConfig.fu_fusion``, the paper's route): the *prompt predictor* turns
  t into K prompt tokens that join CLIP's visual transformer from block 2 on and stay in its
  sequence, so the patch tokens of every later block attend to them and they to the patch tokens;
  CLIP sees the image through the windows of :mod:`clipsr_cli.model.view`. The *F_U read-out*
  lets each patch token attend once more, with learned weights, to all of CLIP's output tokens
  (patches and prompts), modulates the result by the prompt tokens' outputs (a FiLM whose γ, β
  come from their mean) and projects it to the width of every level of the generator: F_U is
  added at each level of the Iterative Refinement Module (LR/4, LR/2, LR) and after each ×2
  upsampling stage, where the detail is drawn;
* **direct FiLM** (``ModelConfig.fu_film``, off by default): the read-out is also modulated by t
  itself, a route that bypasses CLIP (clipsr's addition; docs/text-path.md measures all three).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipsr_cli.model.view import ViewPlan

#: The text routes of a text-conditioned generator, in the column order of a per-route
#: ``null_mask``: the TIFBlocks' γ, β; the prompt tokens in CLIP's ViT; the read-out's direct FiLM.
ROUTES = ("tif", "prompt", "film")


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
    """Text features → K prompt tokens for CLIP's visual transformer (MLP + self-attention).

    The unit-norm t is first scaled to unit rms per element (× √D): at unit norm its entries
    (≈ 0.04 for D = 512) are swamped by the MLP's biases, and the tokens of two captions differed
    by 15 % of their size (issue #21: alone, the prompt route learned the stripes task to 21 dB
    without the scaling, 47 dB with it; docs/text-path.md)."""

    def __init__(self, text_dim: int, width: int, tokens: int):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.gain = text_dim ** 0.5
        hidden = max(width, text_dim)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, tokens * width))
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        heads = max(1, width // 64)
        self.attn = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                               activation="gelu", batch_first=True, norm_first=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        p = self.mlp(t * self.gain).view(t.shape[0], self.tokens, self.width) + self.pos
        return self.attn(p)


class FUProjection(nn.Module):
    """CLIP's output sequence (and the text) → F_U at every pyramid level.

    LayerNorm; one cross-attention of the patch tokens over all output tokens (patch and prompt
    tokens; residual); a FiLM by the prompt tokens' outputs, (1 + γ(p̄))·h + β(p̄) with p̄ their
    mean (the paper's route: the text reaches F_U through CLIP's ViT); with ``film`` (the direct
    route, ``ModelConfig.fu_film``) a second FiLM by the text t itself; one linear map per level.
    The per-level maps start at zero (a fresh model ignores CLIP): they are the last layer of the
    branch, so their gradient is non-zero from the first step and everything before them learns
    from the second.
    """

    def __init__(self, clip_width: int, widths: tuple[int, ...], text_dim: int, film: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(clip_width)
        self.attn = nn.MultiheadAttention(clip_width, max(1, clip_width // 64), batch_first=True)
        self.prompt_film = _film_mlp(clip_width, clip_width)
        self.film = _film_mlp(text_dim, clip_width) if film else None
        self.proj = nn.ModuleList(nn.Linear(clip_width, w) for w in widths)
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, seq: torch.Tensor, grid: int, t: torch.Tensor | None) -> list[torch.Tensor]:
        """``seq`` (N, 1 + g² + K, width), ``t`` (N, D) (read by the direct FiLM only) → per
        level (N, C_i, g, g)."""
        x = self.norm(seq)
        patches, context = x[:, 1:1 + grid * grid], x[:, 1:]
        h = patches + self.attn(patches, context, context, need_weights=False)[0]
        h = _modulate(h, self.prompt_film(x[:, 1 + grid * grid:].mean(1)))
        if self.film is not None:
            h = _modulate(h, self.film(t.to(h.dtype)))
        n = seq.shape[0]
        return [p(h).transpose(1, 2).reshape(n, -1, grid, grid) for p in self.proj]


def _film_mlp(in_dim: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, 2 * width))


def _modulate(h: torch.Tensor, gamma_beta: torch.Tensor) -> torch.Tensor:
    gamma, beta = gamma_beta.unsqueeze(1).chunk(2, dim=-1)
    return h * (1 + gamma) + beta
