"""An LR image as a user's file would hold it: clean 8-bit, JPEG at a quality, or with sensor noise.

``clipsr eval --degrade`` measures models on the files people actually have. For each condition
(:class:`FileDegradation`, parsed from ``clean``, ``jpeg:Q`` or ``noise:S``), the bicubic LR made
by ``clipsr eval`` (any ``--resizer``) is quantised to 8 bits, then

* ``clean``: written as a PNG (lossless: the 8-bit LR itself);
* ``jpeg:Q``: encoded by Pillow as a JPEG file at quality Q with Pillow's other defaults (4:2:0
  chroma subsampling, baseline, standard tables), as phones, browsers and most tools save;
* ``noise:S``: Gaussian noise of std S in 0-255 units added independently to every sample (a
  fixed seed per image, so runs repeat exactly), clamped and quantised to 8 bits, written as a
  PNG;

and the file's bytes are decoded back through the project's image reader
(:func:`clipsr_cli.io.images.read_image`), as ``clipsr upscale`` would read it. :func:`lr_file`
gives the bytes (for anything that wants to inspect the file itself), :func:`degrade_file` the
decoded LR tensor.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import torch

from clipsr_cli.data.conditions import FileDegradation, parse_degradations
from clipsr_cli.data.degrade import quantize_8bit
from clipsr_cli.io.images import read_image, to_pil

__all__ = ["FileDegradation", "parse_degradations", "lr_file", "degrade_file"]

def _levels(lr: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) or (3, h, w) [0, 1] float (already on the 8-bit grid) → (h, w, 3) uint8."""
    x = lr[0] if lr.dim() == 4 else lr
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected one RGB image (1, 3, h, w), got shape {tuple(lr.shape)}")
    a = torch.round(x.detach().float().cpu() * 255).clamp_(0, 255).to(torch.uint8)
    return a.permute(1, 2, 0).contiguous().numpy()


def lr_file(lr: torch.Tensor, degradation: FileDegradation | str = "clean", *,
            seed: int | str = 0) -> tuple[bytes, str]:
    """The bytes of the LR file a user would have, and its format (``"PNG"`` or ``"JPEG"``).

    ``lr``: one bicubic LR image (1, 3, h, w) or (3, h, w), float in [0, 1] on any device; it is
    quantised to 8 bits first. ``seed`` fixes the noise (an int, or a string such as the image's
    name: hashed with CRC-32, so the same image always gets the same noise).
    """
    d = FileDegradation.parse(degradation)
    x = quantize_8bit(lr.detach().float().cpu().clamp(0, 1))
    if d.kind == "noise" and d.level:
        s = zlib.crc32(seed.encode()) if isinstance(seed, str) else int(seed)
        g = torch.Generator().manual_seed(s)
        x = quantize_8bit((x + torch.randn(x.shape, generator=g) * (d.level / 255)).clamp(0, 1))
    pil = to_pil(_levels(x))
    buf = io.BytesIO()
    if d.kind == "jpeg":
        pil.save(buf, format="JPEG", quality=int(d.level))  # Pillow's defaults: 4:2:0, baseline
        return buf.getvalue(), "JPEG"
    pil.save(buf, format="PNG")
    return buf.getvalue(), "PNG"


def degrade_file(lr: torch.Tensor, degradation: FileDegradation | str = "clean", *,
                 seed: int | str = 0) -> torch.Tensor:
    """``lr`` made into the user's file (:func:`lr_file`) and read back with the project's reader:
    (1, 3, h, w) float32 in [0, 1] on the CPU, on the 8-bit grid."""
    data, _ = lr_file(lr, degradation, seed=seed)
    return read_image(data).rgb
