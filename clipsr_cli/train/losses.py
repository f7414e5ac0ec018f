"""Generator losses: reconstruction (L1 / Charbonnier) and perceptual (VGG16 or CLIP features).

Nothing here downloads: VGG16 is used only when torchvision's ImageNet weights are already in
the torch hub cache (``torch.hub.get_dir()/checkpoints``), loaded with ``weights_only=True``.
Which features the perceptual loss uses is a setting (``loss.perceptual``), never a silent
fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import TrainingError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1


def pixel_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "l1":
        return lambda a, b: F.l1_loss(a.float(), b.float())
    if kind == "charbonnier":
        return lambda a, b: torch.sqrt((a.float() - b.float()) ** 2 + 1e-6).mean()
    raise ValueError(kind)


def clamp_layers(layers: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Map block indices meant for a 12-block ViT onto a CLIP of ``depth`` blocks (kept if they fit)."""
    if max(layers) <= depth:
        return tuple(layers)
    out = sorted({max(1, min(depth, round(l * depth / 12))) for l in layers})
    return tuple(out)


class VGGPerceptual(nn.Module):
    """L1 between VGG16 features (relu1_2, relu2_2, relu3_3, relu4_3) of ImageNet-normalised images:
    clipsr's choice (the authors' code: MSE on VGG16 ``features[:34]``, not normalised)."""

    CUTS = (4, 9, 16, 23)

    def __init__(self, weights_path: Path):
        super().__init__()
        from torchvision.models import vgg16

        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net = vgg16()
        net.load_state_dict(state)
        self.features = net.features[:self.CUTS[-1]].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        x = torch.cat([sr, hr]).float().sub(self.mean).div(self.std)
        loss = x.new_zeros(())
        start = 0
        for cut in self.CUTS:
            x = self.features[start:cut](x)
            start = cut
            a, b = x.chunk(2)
            loss = loss + F.l1_loss(a, b.detach())
        return loss / len(self.CUTS)


class ClipPerceptual(nn.Module):
    """L1 between CLIP visual patch tokens (a few blocks) of SR and HR: the fallback perceptual loss."""

    def __init__(self, clip, layers: tuple[int, ...] = (2, 4, 6)):
        super().__init__()
        object.__setattr__(self, "clip", clip)  # frozen, not a submodule
        self.layers = clamp_layers(layers, clip.visual_layers)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        maps, _ = self.clip.visual_features(torch.cat([sr, hr]).float(), self.layers)
        loss = sr.new_zeros((), dtype=torch.float32)
        for m in maps:
            a, b = m.chunk(2)
            loss = loss + F.l1_loss(a, b.detach())
        return loss / len(maps)


def vgg16_weights_path() -> Path:
    """Where torchvision keeps VGG16's ImageNet weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def vgg16_cached_weights() -> Path | None:
    p = vgg16_weights_path()
    return p if p.is_file() else None


def _vgg16(path: Path) -> VGGPerceptual:
    try:
        return VGGPerceptual(path)
    except ImportError:
        raise TrainingError("loss.perceptual = 'vgg16' needs torchvision (pip install "
                            "torchvision), or use loss.perceptual = 'clip' or 'none'") from None
    except Exception as e:  # a damaged or foreign file
        raise TrainingError(f"cannot read the VGG16 weights {path} ({type(e).__name__}); replace "
                            "them with torchvision's vgg16-397923af.pth, or use loss.perceptual = "
                            "'clip' or 'none'") from None


def build_perceptual(kind: str, get_clip: Callable[[], object], warn) -> tuple[nn.Module | None, str]:
    """The perceptual loss for ``kind`` and the name of the features used ('vgg16', 'clip' or
    'none'). ``get_clip()`` gives the CLIP for 'clip'. Never silent: CLIP features instead of
    the paper's VGG16 are announced through ``warn`` (one line); 'vgg16' without its weights
    stops with one line. 'auto' (older configs): vgg16 if its weights are there, else clip."""
    if kind == "none":
        return None, "none"
    path = vgg16_cached_weights()
    if kind == "vgg16" or (kind == "auto" and path is not None):
        if path is None:
            raise TrainingError(f"loss.perceptual = 'vgg16' needs torchvision's VGG16 ImageNet "
                                f"weights at {vgg16_weights_path()} (nothing is downloaded during "
                                "training); put vgg16-397923af.pth there, or use loss.perceptual = "
                                "'clip' or 'none'")
        return _vgg16(path), "vgg16"
    clip = get_clip()
    loss = ClipPerceptual(clip)
    why = "" if kind == "clip" else f" (no VGG16 weights at {vgg16_weights_path()})"
    warn(f"perceptual loss: L1 between the visual tokens of CLIP {clip.spec} after blocks "
         f"{', '.join(map(str, loss.layers))}, not the paper's VGG16 features{why}")
    return loss, "clip"
