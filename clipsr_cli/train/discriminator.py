"""The text-conditional CLIP-based discriminator (GALIP-style) and its losses.

D(image, t): a frozen CLIP visual transformer gives patch-token maps after a few blocks: after
the 2nd, 5th and 9th of ViT-B/32's 12 (``layers=(2, 5, 9)``, counted from 1 like
``ClipBackbone.visual_features``; the authors' released code writes ``selected = [1, 4, 8]``,
counting from 0), 3 x 768 x 7 x 7. Each map is projected, the first starts the trunk and each
next one enters through a small residual conv block scaled by a zero-initialised learned gate;
a conditional head concatenates the unit sentence embedding tiled over the grid and outputs one
logit. Only the blocks and the head are trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.train.losses import clamp_layers


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.c2(F.leaky_relu(self.c1(F.leaky_relu(x, 0.2)), 0.2))


class ClipDiscriminator(nn.Module):
    def __init__(self, clip, *, layers: tuple[int, ...] = (2, 5, 9), width: int = 512,
                 text_dim: int = 0):
        super().__init__()
        object.__setattr__(self, "clip", clip)  # frozen; not a submodule, not in state_dict
        self.layers = clamp_layers(tuple(layers), clip.visual_layers)
        cw = clip.visual_width
        self.proj = nn.ModuleList(nn.Conv2d(cw, width, 1) for _ in self.layers)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in self.layers[1:])
        self.gates = nn.Parameter(torch.zeros(len(self.layers) - 1))
        self.text_dim = text_dim
        g = clip.image_size // clip.model.visual.conv1.kernel_size[0]
        self.grid = g
        self.head = nn.Sequential(nn.Conv2d(width + text_dim, width, 3, padding=1),
                                  nn.LeakyReLU(0.2), nn.Conv2d(width, 1, g))

    def features(self, img: torch.Tensor, *, with_embedding: bool = False):
        """CLIP patch-token maps of ``img`` in [0,1] (and its CLIP image embedding)."""
        maps, emb = self.clip.visual_features(img.float(), self.layers)
        return (maps, emb) if with_embedding else maps

    def logits(self, maps: list[torch.Tensor], t: torch.Tensor | None) -> torch.Tensor:
        x = self.proj[0](maps[0])
        for j, m in enumerate(maps[1:]):
            x = x + self.gates[j] * self.blocks[j](x + self.proj[j + 1](m))
        if self.text_dim:
            x = torch.cat([x, t[:, :, None, None].expand(-1, -1, x.shape[-2], x.shape[-1])], dim=1)
        return self.head(x).flatten(1).squeeze(1)


def d_loss(D: ClipDiscriminator, real: torch.Tensor, fake: torch.Tensor, t: torch.Tensor | None,
           *, gp_weight: float, gp_power: float,
           keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on (real, t), (fake, t), (real, t rolled by one) + MA-GP on (real, t).

    ``keep`` (B,) bool: rows whose ``t`` is a caption (the others hold the null text). A
    mismatched pair is only made with a caption: (real, null text) is a real pair, not a fake one.
    """
    real_maps = [m.detach().requires_grad_(True) for m in D.features(real)]
    with torch.no_grad():
        fake_maps = D.features(fake.detach())
    tt = None if t is None else t.detach().requires_grad_(True)
    out_real = D.logits(real_maps, tt)
    out_fake = D.logits(fake_maps, None if t is None else t.detach())
    loss_real = F.relu(1 - out_real).mean()
    loss_fake = F.relu(1 + out_fake).mean()
    if t is not None and real.shape[0] > 1:
        out_mis = D.logits([m.detach() for m in real_maps], t.detach().roll(1, 0))
        if keep is None:
            loss_fake = 0.5 * (loss_fake + F.relu(1 + out_mis).mean())
        else:  # masked means, no host sync: without any caption in the batch, no mismatch term
            mis = keep.roll(1, 0).float()
            any_mis = mis.amax()
            loss_mis = (F.relu(1 + out_mis) * mis).sum() / mis.sum().clamp(min=1)
            loss_fake = loss_fake * (1 - 0.5 * any_mis) + 0.5 * loss_mis
    inputs = real_maps + ([tt] if tt is not None else [])
    grads = torch.autograd.grad(out_real.sum(), inputs, create_graph=True)
    g = torch.cat([gr.flatten(1) for gr in grads], dim=1)
    gp = gp_weight * (g.norm(2, dim=1) ** gp_power).mean()
    loss = loss_real + loss_fake + gp
    return loss, {"d_real": loss_real.detach(), "d_fake": loss_fake.detach(), "d_gp": gp.detach()}


def g_adv_loss(D: ClipDiscriminator, sr: torch.Tensor, t: torch.Tensor | None, *,
               clip_weight: float, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """-D(fake, t) - clip_weight * cos(CLIP_image(SR), t) (before the 0.01 weight). The cosine
    is averaged over the ``keep`` rows (those with a caption; 0 when there is none): a null text
    is no target for CLIP similarity."""
    maps, emb = D.features(sr, with_embedding=True)
    adv = -D.logits(maps, t).mean()
    if t is None or clip_weight == 0:
        return adv, {"g_adv": adv.detach()}
    cos = F.cosine_similarity(emb, t.float(), dim=-1)
    if keep is None:
        cos = cos.mean()
    else:
        k = keep.float()
        cos = (cos * k).sum() / k.sum().clamp(min=1)
    return adv - clip_weight * cos, {"g_adv": adv.detach(), "g_cos": cos.detach()}
