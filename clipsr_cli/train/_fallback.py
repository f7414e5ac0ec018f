"""Stand-ins used only while ``clipsr_cli.data.degrade`` / ``clipsr_cli.metrics`` are missing.

TEMPORARY: remove once those modules are in the tree (they are the reference implementations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def degrade(hr: torch.Tensor, scale: int, *, quantize: bool = True, options=None, generator=None):
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    lr = F.interpolate(hr.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    lr = lr.clamp(0, 1)
    return torch.round(lr * 255) / 255 if quantize else lr


def _y(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([65.481, 128.553, 24.966], device=x.device).view(1, 3, 1, 1)
    return ((x.float() * w).sum(1, keepdim=True) + 16.0) / 255.0


def psnr(sr: torch.Tensor, hr: torch.Tensor, *, border: int = 0, y_channel: bool = True) -> torch.Tensor:
    sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
    sr, hr = torch.round(sr * 255) / 255, torch.round(hr * 255) / 255
    if y_channel:
        sr, hr = _y(sr), _y(hr)
    if border:
        sr, hr = sr[..., border:-border, border:-border], hr[..., border:-border, border:-border]
    mse = ((sr - hr) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def ssim(sr: torch.Tensor, hr: torch.Tensor, *, border: int = 0, y_channel: bool = True) -> torch.Tensor:
    sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
    if y_channel:
        sr, hr = _y(sr), _y(hr)
    if border:
        sr, hr = sr[..., border:-border, border:-border], hr[..., border:-border, border:-border]
    c = sr.shape[1]
    g = torch.exp(-(torch.arange(11, device=sr.device) - 5.0) ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)
    f = lambda x: F.conv2d(x, k, groups=c)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu1, mu2 = f(sr), f(hr)
    s11, s22, s12 = f(sr * sr) - mu1 ** 2, f(hr * hr) - mu2 ** 2, f(sr * hr) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return m.flatten(1).mean(1)


class _Folder:
    EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}

    def __init__(self, root):
        from pathlib import Path

        root = Path(root)
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.EXTS)

    def __len__(self):
        return len(self.files)

    def load(self, i):
        from PIL import Image

        from clipsr_cli.errors import DataError

        try:
            with Image.open(self.files[i]) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "P"):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                return im.convert("RGB"), ()
        except OSError as e:
            raise DataError(f"cannot read {self.files[i]}: {e}") from None


def open_folder(path, fmt="auto", *, split="train"):
    return _Folder(path)
