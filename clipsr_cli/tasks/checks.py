"""Option values that can never work, refused before torch is imported (issue #22, item 4).

Every check here raises ``UsageError`` (exit status 2 in the CLI) and imports no torch, so
``clipsr upscale a.png -s 3`` is answered as fast as ``--help``. The tasks call these same
functions first (one home for each rule); the CLI calls them before it imports a task, and the
shared option declarations (``clipsr_cli.cli.options``) check each single value as it is parsed.
Whether a device exists *here* (CUDA, MPS) is a different question, judged when torch is loaded.
"""

from __future__ import annotations

import math
from typing import Sequence

from clipsr_cli.errors import UsageError
from clipsr_cli.infer.options import MAX_BATCH_SIZE
from clipsr_cli.infer.values import check_device, check_precision, parse_tiling
from clipsr_cli.io.formats import normalise_format
from clipsr_cli.io.outputs import output_path_for
from clipsr_cli.model.config import SCALES
from clipsr_cli.tasks.outsize import OutputSize
from clipsr_cli.tasks.sources import check_caption_options, parse_shard

__all__ = ["MAX_BATCH_SIZE", "check_values", "check_passes", "check_scale", "check_quality",
           "check_suffix", "check_upscale", "check_batch", "check_edit", "sweep_strengths",
           "parse_crop_spec", "check_eval", "RESIZERS"]

#: How ``eval`` makes the LR from an HR image.
RESIZERS = ("matlab", "pil-bicubic", "lanczos")


def check_scale(scale: int | None) -> int | None:
    if scale is not None and scale not in SCALES:
        raise UsageError(f"`scale` must be 4, 8 or 16 (2 for custom models), not {scale}",
                         param="scale")
    return scale


def check_quality(quality: int) -> int:
    if not 1 <= int(quality) <= 100:
        raise UsageError(f"`quality` must be between 1 and 100, not {quality}", param="quality")
    return quality


def check_passes(passes: int) -> int:
    """``passes``: how many times the model runs (a whole number >= 1)."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise UsageError(f"`passes` must be a whole number >= 1, not {passes!r}", param="passes")
    return passes


def check_suffix(suffix: str | None) -> str | None:
    if suffix is not None:
        output_path_for("x.png", 1, suffix=suffix)  # a separator in it is refused there
    return suffix


def check_values(*, scale: int | None = None, device: str = "auto", precision: str = "auto",
                 tile: str | int = "auto", tile_overlap: int | None = None,
                 format: str | None = None, quality: int = 95) -> None:
    """The engine and output options every command shares."""
    check_scale(scale)
    parse_tiling(tile, tile_overlap)
    if format is not None:
        normalise_format(format)
    check_quality(quality)
    check_device(device)
    check_precision(precision)


def check_upscale(*, format: str | None = None,
                  suffix: str | None = None, passes: int = 1, outscale: float | None = None,
                  width: int | None = None, height: int | None = None,
                  **engine) -> OutputSize | None:
    """``upscale``'s options (``engine``: :func:`check_values`' keywords); the output size asked
    for (None: the model's own)."""
    check_values(format=format, **engine)
    check_passes(passes)
    size = OutputSize.parse(outscale=outscale, width=width, height=height)
    check_suffix(suffix)
    return size


def check_batch(*, skip_existing: bool = False, overwrite: bool = False, io_threads: int = 2,
                batch_size: int = 1, shard: str | tuple[int, int] | None = None,
                text: str | None = None, captions=None, caption_sidecar: bool = False,
                suffix: str | None = None, passes: int = 1, outscale: float | None = None,
                width: int | None = None, height: int | None = None,
                **engine) -> OutputSize | None:
    """``batch``'s options (``engine``: :func:`check_values`' keywords, ``format`` included)."""
    if skip_existing and overwrite:
        raise UsageError("use either `skip_existing=True` or `overwrite=True`, not both",
                         param="skip_existing")
    if io_threads < 0:
        raise UsageError("`io_threads` must be 0 or more", param="io_threads")
    check_values(**engine)
    check_passes(passes)
    if (isinstance(batch_size, bool) or not isinstance(batch_size, int)
            or not 1 <= batch_size <= MAX_BATCH_SIZE):
        raise UsageError(f"`batch_size` must be a whole number from 1 to {MAX_BATCH_SIZE}, not "
                         f"{batch_size!r}", param="batch_size")
    size = OutputSize.parse(outscale=outscale, width=width, height=height)
    if isinstance(shard, tuple) or (shard is not None and str(shard).strip().lower() != "auto"):
        parse_shard(shard)
    check_caption_options(text=text, captions=captions, caption_sidecar=caption_sidecar)
    check_suffix(suffix)
    return size


def sweep_strengths(n: int) -> list[float]:
    """``n`` >= 2 strengths evenly spaced from 0 to 1 (both included)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UsageError(f"`sweep` needs at least 2 steps, got {n}; e.g. `sweep=5`",
                         param="sweep")
    return [i / (n - 1) for i in range(n)]


def check_edit(*, target_text: str | None, strength: float | None = None,
               sweep: int | None = None, gif: bool = False) -> list[float]:
    """``edit``'s options; the strengths to run (one, or a sweep from 0 to 1)."""
    if not target_text or not target_text.strip():
        raise UsageError("the target text (`target_text`) is empty; describe what the result "
                         "should show", param="target_text")
    if sweep is not None and strength is not None:
        raise UsageError("`strength` and `sweep` exclude each other: a sweep runs A from 0 to 1",
                         param="strength")
    if gif and sweep is None:
        raise UsageError("`gif` animates a sweep; add `sweep` (e.g. `sweep=5`)", param="gif")
    if sweep is not None:
        return sweep_strengths(sweep)
    a = 1.0 if strength is None else float(strength)
    if not math.isfinite(a):
        raise UsageError(f"`strength` must be a finite number, got {a}", param="strength")
    return [a]


def parse_crop_spec(crop: str | Sequence[int]) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` (or a 4-sequence) → four whole numbers (whether they fit the input is
    judged once it is read)."""
    try:
        vals = [int(v) for v in (crop.split(",") if isinstance(crop, str) else crop)]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4:
        raise UsageError(f"`crop` must be x,y,w,h in input pixels (e.g. 10,20,64,64), not {crop!r}",
                         param="crop")
    x, y, w, h = vals
    return x, y, w, h


def check_eval(*, resizer: str = "matlab", text: str | None = None, captions=None) -> None:
    if resizer not in RESIZERS:
        raise UsageError(f"`resizer` must be one of {', '.join(RESIZERS)}, not {resizer!r}",
                         param="resizer")
    if text and captions:
        raise UsageError("use either `text` or `captions`, not both", param="captions")
