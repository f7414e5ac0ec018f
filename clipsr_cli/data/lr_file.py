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
import math
import re
import zlib
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from clipsr_cli.data.degrade import quantize_8bit
from clipsr_cli.errors import UsageError
from clipsr_cli.io.images import read_image, to_pil

__all__ = ["FileDegradation", "parse_degradations", "lr_file", "degrade_file"]

Kind = Literal["clean", "jpeg", "noise"]
_SPEC = re.compile(r"^\s*(clean|jpeg|noise)\s*(?::\s*([0-9]+(?:\.[0-9]*)?)\s*)?$", re.IGNORECASE)


def _show(v) -> str:
    """A level for a message: 75, 2.5, None."""
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


@dataclass(frozen=True)
class FileDegradation:
    """How the LR file is made: ``clean``, ``jpeg`` at ``level`` = quality (1-100, whole), or
    ``noise`` at ``level`` = Gaussian std in 0-255 units (0-100). ``str()`` gives the spec back
    (``"jpeg:75"``, ``"noise:5"``, ``"clean"``)."""

    kind: Kind = "clean"
    level: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "clean":
            if self.level is not None:
                raise UsageError("`degrade` clean takes no level (use clean, jpeg:Q or noise:S)",
                                 param="degrade")
        elif self.kind == "jpeg":
            q = self.level
            if q is None or q != int(q) or not 1 <= q <= 100:
                raise UsageError(f"`degrade` jpeg needs a whole quality 1-100 (jpeg:75), got "
                                 f"{_show(q)}", param="degrade")
            object.__setattr__(self, "level", int(q))
        elif self.kind == "noise":
            s = self.level
            if s is None or not math.isfinite(s) or not 0 <= s <= 100:
                raise UsageError(f"`degrade` noise needs a std 0-100 in 0-255 units (noise:5), got "
                                 f"{_show(s)}", param="degrade")
            object.__setattr__(self, "level", float(s))
        else:
            raise UsageError(f"`degrade` must be clean, jpeg:Q or noise:S, not {self.kind!r}",
                             param="degrade")

    @classmethod
    def parse(cls, spec: str | FileDegradation) -> FileDegradation:
        """``"clean"``, ``"jpeg:75"``, ``"noise:5"`` (case and spaces ignored) → the value."""
        if isinstance(spec, FileDegradation):
            return spec
        m = _SPEC.match(str(spec))
        if m is None:
            raise UsageError(f"`degrade` must be clean, jpeg:Q (quality 1-100) or noise:S (std in "
                             f"0-255 units), not {spec!r}", param="degrade")
        kind, level = m.group(1).lower(), m.group(2)
        if kind != "clean" and level is None:
            raise UsageError(f"`degrade` {kind} needs a level: {kind}:"
                             f"{'75' if kind == 'jpeg' else '5'}", param="degrade")
        return cls(kind, None if level is None else float(level))  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.kind == "clean":
            return "clean"
        return f"{self.kind}:{_show(self.level)}"


def parse_degradations(specs: str | Sequence[str] | None) -> list[FileDegradation]:
    """Conditions from repeated values and/or comma lists (``["clean,jpeg:75", "noise:5"]``), in
    order, duplicates dropped; nothing given → ``[clean]``."""
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [specs]
    out: list[FileDegradation] = []
    for s in specs:
        for part in str(s).split(","):
            if not part.strip():
                continue
            d = FileDegradation.parse(part)
            if d not in out:
                out.append(d)
    return out or [FileDegradation()]


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
