"""How many images of one size may go through the network together (``batch_size``).

The engine plans tiling per image (:meth:`~clipsr_cli.infer.engine.Upscaler.bands`). Images that
fit untiled can instead go through as one (B, 3, H, W) stack:
:meth:`~clipsr_cli.infer.engine.Upscaler.upscale_images` does that (conditioning per image, the
engine's own padding and precision, crop, clamp, each image quantised like ``upscale_array``);
results equal one image at a time up to the rounding of batched kernels. Only a plain
``Upscaler`` batches; a pipeline (``passes``, ×16 built-ins) runs one image at a time (the
:class:`~clipsr_cli.infer.base.Engine` default). This module sizes a stack from the engine's
tiling settings: arithmetic only, it never sees the engine.
"""

from __future__ import annotations

from typing import Callable, Literal

from clipsr_cli.infer.tiling import count_tiles, plan_tiles

__all__ = ["stack_limit"]


def stack_limit(height: int, width: int, batch_size: int, *, tile: int | Literal["auto"],
                overlap: int, multiple: int, untiled: Callable[[int, int], bool]) -> int:
    """How many ``height`` × ``width`` images may run together (1: one at a time): at most
    ``batch_size``, and only as many as fit in one tile: with ``tile='auto'`` the largest n for
    which ``untiled(n · height, width)`` (bisected: a few calls), with ``tile=N`` together no
    more pixels (padded to ``multiple``) than one N × N tile, none if one image needs several."""
    if batch_size <= 1:
        return 1
    if tile == 0:
        return batch_size
    if tile == "auto":
        lo, hi = 1, batch_size
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if untiled(height * mid, width):
                lo = mid
            else:
                hi = mid - 1
        return lo
    hp, wp = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    if count_tiles(plan_tiles(hp, wp, tile=int(tile), overlap=overlap, multiple=multiple)) > 1:
        return 1
    return max(1, min(batch_size, int(tile) ** 2 // (hp * wp)))
