"""Run reports: one strict-JSON writer and one CSV writer, both atomic (torch-free).

JSON: UTF-8, indented, keys in the order given (stable), a ``version`` field first, a trailing
newline; NaN and ±inf (a metric that could not be computed) become ``null``, so any strict JSON
reader can load the file. CSV: a header row of ``fields``, then one row per mapping; None, NaN
and ±inf are empty cells.

Both go through the output policy (:mod:`clipsr_cli.io.outputs`): the report's folder must
exist, and an existing report is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from clipsr_cli.io.outputs import check_destination, write_bytes_atomic

__all__ = ["strict_json", "to_json_text", "write_csv", "write_json"]


def strict_json(value):
    """``value`` with every non-finite float replaced by None (recursively; tuples → lists,
    paths → strings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def to_json_text(data: Mapping, *, version: int | str | None = None) -> str:
    """The report text: ``{"version": version, **data}`` (when ``version`` is given), strict."""
    if version is not None:
        if "version" in data and data["version"] != version:
            raise ValueError(f"the report says version {data['version']!r}, not {version!r}")
        data = {"version": version, **{k: v for k, v in data.items() if k != "version"}}
    text = json.dumps(strict_json(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # file names that are not UTF-8 (surrogate-escaped bytes): kept
        # losslessly as \udcXX escapes, which strict JSON readers load and os.fsencode() reverts
        text = json.dumps(strict_json(data), indent=2, ensure_ascii=True, allow_nan=False) + "\n"
    return text


def write_json(path: str | os.PathLike[str], data: Mapping, *, version: int | str | None,
               overwrite: bool, param: str = "report") -> Path:
    """Write ``data`` as a strict-JSON report (see :func:`to_json_text`) atomically."""
    path = check_destination(Path(path).expanduser(), overwrite=overwrite, param=param)
    text = to_json_text(data, version=version)
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite, param=param)


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping], *, fields: Sequence[str],
              overwrite: bool, param: str = "report") -> Path:
    """Write ``rows`` (mappings with exactly the keys ``fields``, or fewer) as CSV atomically."""
    path = check_destination(Path(path).expanduser(), overwrite=overwrite, param=param)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields))
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(v) for k, v in row.items()})
    # names that are not UTF-8 are written back as the bytes they were (lossless)
    return write_bytes_atomic(path, buf.getvalue().encode("utf-8", "surrogateescape"),
                              overwrite=overwrite, param=param)
