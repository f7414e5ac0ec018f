"""The generator's text-modulated building blocks: ``Affine`` and the Text-Image Fusion Block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
