"""The one judgement of output size and memory, made before work starts (torch-free).

Every command that makes an image (``upscale``, ``batch``, ``edit``, ``compare``, ``eval``, any
``passes``/``outscale``/``width``) asks :func:`check_output` with the size it will make and the
bytes a pixel costs it, before the model runs: an output of more than :func:`max_output_pixels`
pixels, or one whose buffers would not fit in the memory this process may still use
(:func:`available_memory`: the host's available RAM, lowered by an ``RLIMIT_AS``/``RLIMIT_DATA``
limit), is refused with one line, instead of running for hours or being killed.
"""

from __future__ import annotations

import os

from clipsr_cli.errors import ClipsrError, InputError
from clipsr_cli.io.formats import MAX_PIXELS_ENV, max_pixels_limit

__all__ = ["OUTPUT_FACTOR", "available_memory", "check_memory", "check_output",
           "max_output_pixels"]

#: An output may have this many times the input-pixel limit (250 MP → 1 gigapixel: a 250-MP
#: photo ×2, an 8000×8000 ×4 result); it follows ``CLIPSR_MAX_PIXELS``.
OUTPUT_FACTOR = 4
#: Share of the available memory one buffer may take (the rest: the model, tiles, the decoder).
_SHARE = 0.8


def max_output_pixels() -> int:
    """Most pixels an output may have: :data:`OUTPUT_FACTOR` × the input limit."""
    return OUTPUT_FACTOR * max_pixels_limit()


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        pass
    return None


def available_memory() -> int:
    """Bytes this process may still allocate: the host's available RAM, or less when a resource
    limit (``RLIMIT_AS``, ``RLIMIT_DATA``) leaves less headroom."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            avail = 4 << 30
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return avail
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and (now := _status(used)) is not None:
            avail = min(avail, max(0, soft - now))
    return avail


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(need: int, what: str, *, hint: str, error: type[ClipsrError] = InputError,
                 available: int | None = None) -> None:
    """Refuse (``error``) when ``need`` bytes for ``what`` would not fit in the memory left
    (``available``: a budget the caller was given, else :func:`available_memory`)."""
    avail = available or available_memory()
    if need > _SHARE * avail:
        raise error(f"{what} needs {_gib(need)} of memory but only {_gib(avail)} is available; "
                    f"{hint}")


def check_output(width: int, height: int, *, bytes_per_pixel: float, what: str = "the output",
                 hint: str = "use a smaller scale, fewer `passes` or crop the image",
                 available: int | None = None) -> None:
    """Refuse (InputError) an output of ``width`` × ``height`` that is over the pixel limit or
    whose ``bytes_per_pixel`` buffers would not fit in memory; judged before any work."""
    limit = max_output_pixels()
    if width * height > limit:
        raise InputError(f"{what} would be {width}×{height} ({width * height / 1e6:.4g} "
                         f"megapixels), more than the limit of {limit / 1e6:.4g} MP; {hint} (or "
                         f"raise the limit with {MAX_PIXELS_ENV}=N: outputs may have "
                         f"{OUTPUT_FACTOR}×N pixels)")
    check_memory(int(width * height * bytes_per_pixel), f"{what} ({width}×{height})", hint=hint,
                 available=available)
