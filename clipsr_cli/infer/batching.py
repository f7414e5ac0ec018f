"""Several images of the same size through the network in one forward pass (``batch_size``).

The engine's :meth:`~clipsr_cli.infer.engine.Upscaler.bands` takes one image at a time (tiling
is planned per image). Images that fit untiled can instead go through together:
:func:`upscale_images` does what ``bands`` does for a single tile (conditioning per image, pad
to the model's multiple, the forward pass under the engine's precision, crop, clamp) on a
(B, 3, H, W) stack, then quantises each image like ``upscale_array``. Results equal one image at
a time up to the rounding of batched kernels. Only a plain :class:`Upscaler` is batched; a
pipeline (``passes``, ×16 built-ins) or any other engine runs one image at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clipsr_cli.infer.degradation import Strength
from clipsr_cli.infer.base import finite
from clipsr_cli.infer.engine import Upscaler, upscale_alpha
from clipsr_cli.infer.tiling import count_tiles, pad_to_multiple, plan_tiles
from clipsr_cli.io.images import LoadedImage
from clipsr_cli.io.quantise import quantise

__all__ = ["batch_limit", "upscale_images"]


def batch_limit(up, height: int, width: int, batch_size: int) -> int:
    """How many ``height`` × ``width`` images ``up`` may run together (1: one at a time):
    at most ``batch_size``, and only as many as fit in one tile: the memory budget of
    ``tile='auto'``, or together no more pixels than one ``tile`` × ``tile`` tile."""
    if batch_size <= 1 or not isinstance(up, Upscaler):
        return 1
    st, m = up.settings, up.info.pad_multiple
    hp, wp = -(-height // m) * m, -(-width // m) * m
    if st.tile == 0:
        return batch_size
    if st.tile == "auto":  # the largest n whose stack runs untiled (bisected: a few calls)
        lo, hi = 1, batch_size
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if up._tile_size(height * mid, width) == 0:
                lo = mid
            else:
                hi = mid - 1
        return lo
    if count_tiles(plan_tiles(hp, wp, tile=int(st.tile), overlap=st.tile_overlap, multiple=m)) > 1:
        return 1
    return max(1, min(batch_size, int(st.tile) ** 2 // (hp * wp)))


def upscale_images(up, images: Sequence[LoadedImage], texts: Sequence[str | None],
                   strengths: Sequence[Strength | float] | None = None, *,
                   strength: Strength | float | None = None
                   ) -> list[tuple[np.ndarray, torch.Tensor | None]]:
    """Upscale ``images`` (all the same size, untiled: see :func:`batch_limit`) with their
    captions ``texts``; each result as :meth:`Upscaler.upscale_image` gives it. Degradation
    ``strengths`` per image, or one ``strength`` for all (``video`` decides it once); neither:
    decided per image. Images of different strengths run one at a time."""
    if strengths is None:
        strengths = ([strength] * len(images) if strength is not None
                     else [up.strength_for(im) for im in images])
    values = {float(getattr(s, "value", s)) for s in strengths} if up.blendable else {0.0}
    if len(images) == 1 or not isinstance(up, Upscaler) or len(values) > 1:
        return [up.upscale_image(im, t, strength=s) for im, t, s in zip(images, texts, strengths)]
    up.set_strength(values.pop())
    h, w = images[0].rgb.shape[-2:]
    if any(im.rgb.shape[-2:] != (h, w) for im in images):
        raise ValueError("upscale_images needs images of one size")
    st, s, m = up.settings, up.scale, up.info.pad_multiple
    dev = st.device
    emb = None
    if up.info.text_conditioned:
        null = up.null_text_embedding()
        emb = torch.cat([up.embed_text(t) if t else null for t in texts]).to(dev)
    with torch.inference_mode():
        x = torch.cat([im.rgb for im in images]).to(dev, torch.float32)
        cond = up.model.condition(x, emb)  # fp32: CLIP stays fp32
        xp = pad_to_multiple(x, m)
        if dev.type == "cpu":
            xp = xp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=st.dtype, enabled=st.dtype != torch.float32):
            y = up.model(xp, cond, (0, 0))
        y = finite(y.float()[:, :, :h * s, :w * s], up.name).clamp_(0, 1)
        out = []
        for k, im in enumerate(images):
            q = quantise(y[k], im.bit_depth).transpose(1, 2, 0)
            alpha = upscale_alpha(im.alpha, s) if im.alpha is not None else None
            out.append((q, alpha))
    return out
