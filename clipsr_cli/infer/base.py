"""What every engine offers on top of its ``bands``: tensors, quantised arrays, decoded images
and PIL images in and out, alpha upscaled on its own.

An engine (:class:`~clipsr_cli.infer.engine.Upscaler`, :class:`~clipsr_cli.infer.pipeline.Pipeline`)
defines ``scale`` and ``bands(lr, text, *, text_embedding, progress)``, which yields finished
output row bands ``(y0, band)``: float32 in [0, 1], (1, 3, rows, s·W). Everything here is built
on that, so a 192-megapixel output is filled band by band and never held in float32.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.errors import InputError, ModelError
from clipsr_cli.infer.degradation import Degradation, Strength, choose_strength
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io import images as imageio
from clipsr_cli.io.images import LoadedImage
from clipsr_cli.io.memory import check_output
from clipsr_cli.io.quantise import levels, quantise

ProgressFn = Callable[[int, int], None]

__all__ = ["Engine", "ProgressFn", "StrengthLike", "finite", "upscale_alpha"]


StrengthLike = Strength | float | None


class Engine:
    """The shared output side of the engines (subclasses define ``scale`` and ``bands``).

    ``strength`` (every method): the degradation strength of the input (see
    :mod:`clipsr_cli.infer.degradation`): a :class:`Strength`, a number in [0, 1], or None to
    decide it from the input by the engine's ``degradation`` choice. Only engines with
    degradation-aware weights (``blendable``) use it."""

    scale: int
    options: EngineOptions
    degradation: Degradation = Degradation()

    def bands(self, lr: torch.Tensor, text: str | None = None, *,
              text_embedding: torch.Tensor | None = None, progress: ProgressFn | None = None,
              strength: float | None = None):  # pragma: no cover - abstract
        """``strength``: the blend weight (0: the clean weights, 1: the degradation-aware ones);
        None: the clean weights, the only ones an engine that does not blend has."""
        raise NotImplementedError

    @property
    def blendable(self) -> bool:
        """Whether the engine has degradation-aware weights to blend in (``strength`` matters)."""
        return False

    def strength_for(self, image: LoadedImage | torch.Tensor) -> Strength:
        """The degradation strength this engine uses for ``image`` (decided once per image)."""
        if not self.blendable:
            return Strength(0.0, "the model has no degradation-aware weights")
        return choose_strength(self.degradation, image)

    def _strength(self, strength: StrengthLike, image: LoadedImage | torch.Tensor) -> float | None:
        """The blend weight ``bands`` runs ``image`` with: None where the engine has no
        degradation-aware weights (nothing to blend: a given strength is ignored), else the
        given strength's value, or the one decided from ``image``."""
        if not self.blendable:
            return None
        if strength is None:
            strength = self.strength_for(image)
        return float(strength.value if isinstance(strength, Strength) else strength)

    def upscale_tensor(self, lr: torch.Tensor, text: str | None = None, *,
                       text_embedding: torch.Tensor | None = None,
                       progress: ProgressFn | None = None,
                       strength: StrengthLike = None) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] → (1, 3, s·H, s·W) float32 in [0, 1] on the CPU."""
        h, w = lr.shape[-2:]
        check_output(int(w) * self.scale, int(h) * self.scale, bytes_per_pixel=3 * 4,
                     what=f"the ×{self.scale} output", available=self.options.memory)
        t = self._strength(strength, lr)
        out = torch.empty(1, 3, h * self.scale, w * self.scale)
        for y0, band in self.bands(lr, text, text_embedding=text_embedding, progress=progress,
                                   strength=t):
            out[:, :, y0:y0 + band.shape[2]] = band.cpu()
        return out

    def upscale_array(self, lr: torch.Tensor, text: str | None = None, *, bit_depth: int = 8,
                      text_embedding: torch.Tensor | None = None,
                      progress: ProgressFn | None = None,
                      strength: StrengthLike = None) -> np.ndarray:
        """Like ``upscale_tensor`` but returns a quantised (s·H, s·W, 3) uint8/uint16 array, filled
        band by band: a 192-megapixel output needs 0.6 GB (uint8), not 2.3 GB of float32."""
        h, w = lr.shape[-2:]
        h, w = int(h), int(w)
        check_output(w * self.scale, h * self.scale, bytes_per_pixel=3 * (2 if bit_depth == 16
                                                                           else 1),
                     what=f"the ×{self.scale} output", available=self.options.memory)
        t = self._strength(strength, lr)
        out = np.empty((h * self.scale, w * self.scale, 3), dtype=levels(bit_depth)[0])
        for y0, band in self.bands(lr, text, text_embedding=text_embedding, progress=progress,
                                   strength=t):
            out[y0:y0 + band.shape[2]] = quantise(band[0], bit_depth).transpose(1, 2, 0)
        return out

    def upscale(self, image, text: str | None = None, *, progress: ProgressFn | None = None,
                strength: StrengthLike = None):
        """Upscale a PIL image (→ PIL image; alpha kept, upscaled separately) or a
        (1, 3, H, W) / (3, H, W) tensor in [0, 1] (→ tensor of the same rank)."""
        if isinstance(image, torch.Tensor):
            squeeze = image.ndim == 3
            x = image.unsqueeze(0) if squeeze else image
            out = self.upscale_tensor(x, text, progress=progress, strength=strength)
            return out[0] if squeeze else out
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise InputError(f"cannot upscale an object of type {type(image).__name__}; pass a "
                             "PIL image or a tensor")
        loaded = imageio.from_pil(image)
        rgb, alpha = self.upscale_image(loaded, text, progress=progress, strength=strength)
        return imageio.to_pil(rgb, alpha, bit_depth=loaded.bit_depth, grayscale=loaded.grayscale,
                              icc_profile=loaded.icc_profile)

    def upscale_image(self, image: LoadedImage, text: str | None = None, *,
                      text_embedding: torch.Tensor | None = None,
                      progress: ProgressFn | None = None,
                      strength: StrengthLike = None) -> tuple[np.ndarray, torch.Tensor | None]:
        """Upscale a decoded image: colour through the network (a (s·H, s·W, 3) array at the
        image's bit depth) and alpha, if any, on its own (bicubic, see :func:`upscale_alpha`).
        With ``strength=None`` the strength is decided from the decoded file (a JPEG's tables)."""
        t = self._strength(strength, image)
        rgb = self.upscale_array(image.rgb, text, bit_depth=image.bit_depth,
                                 text_embedding=text_embedding, progress=progress, strength=t)
        alpha = upscale_alpha(image.alpha, self.scale) if image.alpha is not None else None
        return rgb, alpha

    # -- several images ------------------------------------------------------------------------
    def batch_limit(self, height: int, width: int, batch_size: int) -> int:
        """How many ``height`` × ``width`` images :meth:`upscale_images` runs together, at most
        ``batch_size``; 1 here (a pipeline, or any engine but a plain ``Upscaler``)."""
        return 1

    def upscale_images(self, images: Sequence[LoadedImage], texts: Sequence[str | None],
                       strengths: Sequence[StrengthLike] | None = None, *,
                       strength: StrengthLike = None
                       ) -> list[tuple[np.ndarray, torch.Tensor | None]]:
        """Upscale ``images`` with their captions ``texts``; each result as
        :meth:`upscale_image` gives it. Degradation ``strengths`` per image, or one ``strength``
        for all (``video`` decides it once); neither: decided per image. Here one image at a
        time; an ``Upscaler`` runs same-size images in one forward pass."""
        return [self.upscale_image(im, t, strength=s)
                for im, t, s in zip(images, texts, self._strengths(images, strengths, strength))]

    def _strengths(self, images: Sequence[LoadedImage], strengths: Sequence[StrengthLike] | None,
                   strength: StrengthLike) -> list[StrengthLike]:
        if strengths is not None:
            return list(strengths)
        if strength is not None:
            return [strength] * len(images)
        return [self.strength_for(im) for im in images]



def finite(out: torch.Tensor, name: str) -> torch.Tensor:
    """``out`` (the network's raw output, before clamping: a clamp hides ±inf) if every value is
    finite; else ModelError: a NaN/inf result is never quantised and written as black."""
    if not bool(torch.isfinite(out).all()):
        raise ModelError(f"model {name} produced non-finite values (NaN or inf); nothing was "
                         "written. Its weights are damaged, or it overflowed in half precision: "
                         "check the model file, or pass `precision='fp32'`")
    return out


def upscale_alpha(alpha: torch.Tensor, scale: int) -> torch.Tensor:
    """Alpha is upscaled on its own (bicubic, clamped), never through the colour network."""
    return F.interpolate(alpha.float(), scale_factor=scale, mode="bicubic",
                         align_corners=False).clamp_(0, 1)


