"""How CLIP sees an LR image: one rule, the same in training and in use.

CLIP's visual transformer sees the LR image through square *windows* of ``window`` LR pixels
(``ModelConfig.clip_view``), each resized to CLIP's input size, so one ViT token always covers
``window / grid`` LR pixels (the *density*), whatever the size or aspect ratio of the image:

* an image no larger than a window is one window, centred and padded with CLIP's mean colour
  (zero after normalisation): the aspect ratio is kept, nothing is squashed;
* a larger image is covered by the fewest windows per axis, spread evenly (neighbours overlap
  by what is left over), each a real crop of the image.

A training patch of ``window`` LR pixels is therefore exactly one window: CLIP sees a training
patch the way it sees every part of an image at inference. Training (``CLIPSR.condition`` on the
LR patch) and inference (``CLIPSR.condition`` on the whole LR image, once per image) both call
:func:`clip_view`.

The text-aware features F_U computed per window are put back together by :func:`sample_windows`:
each pixel blends the windows that cover it with tent weights (largest at a window's centre).
It is pointwise in absolute LR coordinates, so tiles of an image agree with the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ViewPlan", "plan_view", "window_starts", "clip_view", "sample_windows"]


def window_starts(n: int, window: int) -> tuple[int, ...]:
    """Start offsets of the windows covering [0, n) along one axis (negative: a centred, padded
    single window when ``n < window``)."""
    if n <= window:
        return (-((window - n) // 2),)
    count = -(-n // window)
    return tuple(round(k * (n - window) / (count - 1)) for k in range(count))


@dataclass(frozen=True)
class ViewPlan:
    """The CLIP windows of one LR image size."""

    size: tuple[int, int]
    """(H, W) of the LR image."""
    window: int
    """Side of a window in LR pixels."""
    rows: tuple[int, ...]
    """Window start rows (the windows are ``rows × cols``, row-major)."""
    cols: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_view(height: int, width: int, window: int) -> ViewPlan:
    return ViewPlan((int(height), int(width)), int(window), window_starts(int(height), window),
                    window_starts(int(width), window))


def clip_view(lr: torch.Tensor, window: int, *, size: int, mean: torch.Tensor,
              std: torch.Tensor) -> tuple[torch.Tensor, ViewPlan]:
    """THE function that makes CLIP's input from an LR image or patch.

    ``lr`` (B, 3, H, W) in [0, 1] → (B·n, 3, size, size) normalised CLIP input, window-major per
    image (image b's windows are rows b·n … b·n + n - 1), and the plan. ``mean``/``std``: CLIP's
    (1, 3, 1, 1) normalisation.
    """
    b, _, h, w = lr.shape
    plan = plan_view(h, w, window)
    x = lr.float()
    pad_y, pad_x = max(0, -plan.rows[0]), max(0, -plan.cols[0])
    if pad_y or pad_x:  # letterbox with CLIP's mean colour: after normalisation it is 0
        canvas = mean.to(x).expand(b, 3, max(h, window), max(w, window)).clone()
        canvas[:, :, pad_y:pad_y + h, pad_x:pad_x + w] = x
        x = canvas
    crops = [x[:, :, r + pad_y:r + pad_y + window, c + pad_x:c + pad_x + window]
             for r in plan.rows for c in plan.cols]
    views = torch.stack(crops, dim=1).reshape(b * plan.count, 3, window, window)
    views = F.interpolate(views, size=(size, size), mode="bicubic", align_corners=False,
                          antialias=True)
    return (views.clamp(0, 1) - mean.to(views)) / std.to(views), plan


def _axis(offset: int, n: int, stride: float, starts: tuple[int, ...], window: int, full: int,
          device) -> tuple[list[tuple[int, int, int, torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per window along one axis: (window index, i0, i1, grid coordinate, tent weight) over the
    output pixels [i0, i1) it covers, and the total weight per output pixel."""
    centre = offset + stride * torch.arange(n, device=device, dtype=torch.float32) + stride / 2
    centre = centre.clamp(0.5, full - 0.5)  # the padding the tiler adds: the border value
    total = torch.zeros(n, device=device)
    out = []
    for k, a in enumerate(starts):
        u = centre - a
        inside = ((u >= 0) & (u <= window)).nonzero()
        if inside.numel() == 0:
            continue
        i0, i1 = int(inside[0]), int(inside[-1]) + 1
        # the tent, plus a floor so that a point on the edge shared by two windows has weight
        wk = torch.minimum(u[i0:i1], window - u[i0:i1]) + 1e-3 * window
        total[i0:i1] += wk
        out.append((k, i0, i1, u[i0:i1] / window * 2 - 1, wk))
    return out, total


def sample_windows(maps: torch.Tensor, plan: ViewPlan, offset: tuple[int, int],
                   size: tuple[int, int], stride: float) -> torch.Tensor:
    """Features of a tile from per-window feature maps.

    ``maps`` (B, n, C, g, g): one map per window of ``plan`` (each covering its window);
    the result (B, C, h, w) holds, at every pixel of the level of the given ``stride`` of the
    tile at LR ``offset`` of ``size`` (h, w), the tent-weighted blend of the windows covering
    its centre (bilinear within each window).
    """
    b, _, c = maps.shape[:3]
    h, w = size
    dev = maps.device
    ry, ty = _axis(offset[0], h, stride, plan.rows, plan.window, plan.size[0], dev)
    rx, tx = _axis(offset[1], w, stride, plan.cols, plan.window, plan.size[1], dev)
    out = torch.zeros(b, c, h, w, device=dev, dtype=torch.float32)
    ncols = len(plan.cols)
    for r, y0, y1, gy, wy in ry:
        for q, x0, x1, gx, wx in rx:
            grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
            grid = grid.unsqueeze(0).expand(b, -1, -1, -1)
            part = F.grid_sample(maps[:, r * ncols + q].float(), grid, mode="bilinear",
                                 padding_mode="border", align_corners=False)
            out[:, :, y0:y1, x0:x1] += part * (wy[:, None] * wx[None, :])
    return out / (ty[:, None] * tx[None, :])
