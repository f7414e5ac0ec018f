"""What a JPEG file's quantisation tables say about how hard it was compressed.

Encoders that follow the IJG convention (libjpeg, Pillow, most web tools, many cameras) scale the
JPEG standard's example luminance table (Annex K) by a factor that the "quality" setting picks.
``estimate_quality`` inverts that: it fits the scale factor of the file's luminance table to the
standard table (least squares on the log ratio, so odd entries do not dominate) and maps it back
to the IJG quality. Tables of other encoders (Photoshop, some phones) get the IJG quality of the
same average coarseness: a usable "equivalent quality", not the encoder's own setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["JpegQuality", "estimate_quality", "ijg_table"]

# JPEG standard Annex K, table K.1 (luminance), natural (row-major) order, as Pillow reports it
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)


@dataclass(frozen=True)
class JpegQuality:
    """An estimated IJG quality (1-100) and whether the tables were IJG-standard ones."""

    quality: int
    standard: bool  # the table is exactly IJG's table for ``quality`` (else an equivalent)


def ijg_table(quality: int) -> tuple[int, ...]:
    """The IJG (libjpeg / Pillow) luminance table for ``quality`` 1-100, natural order."""
    q = min(100, max(1, int(quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q  # integer division, as libjpeg does
    return tuple(min(255, max(1, (v * scale + 50) // 100)) for v in _LUMA)


def _quality_of_scale(scale_percent: float) -> float:
    """Inverse of IJG's quality -> scale mapping (scale in percent of the standard table)."""
    if scale_percent <= 100:
        return (200 - scale_percent) / 2
    return 5000 / scale_percent


def estimate_quality(quantization: object) -> JpegQuality | None:
    """The quality of a JPEG from its quantisation tables (Pillow's ``img.quantization``: a dict
    of tables of 64 values in natural order; table 0 is the luminance one).

    Returns None when the tables are missing or cannot be read (no dict, no table 0, not 64
    positive numbers): the caller falls back to looking at the pixels."""
    if not isinstance(quantization, dict) or 0 not in quantization:
        return None
    table = quantization[0]
    try:
        values = [int(v) for v in table]
    except (TypeError, ValueError):
        return None
    if len(values) != 64 or min(values) < 1 or max(values) > 65535:
        return None
    exact = [q for q in range(1, 101) if ijg_table(q) == tuple(values)]
    if exact:
        return JpegQuality(quality=exact[-1] if len(exact) == 1 else exact[0], standard=True)
    # least squares on log(table / standard): the scale factor of the whole table
    logs = [math.log(v / b) for v, b in zip(values, _LUMA)]
    scale = 100 * math.exp(sum(logs) / len(logs))
    quality = int(round(min(100.0, max(1.0, _quality_of_scale(scale)))))
    return JpegQuality(quality=quality, standard=False)
