"""The one safetensors header reader, without torch (so that ``clipsr download`` and model
resolution stay torch-free): clipsr's checkpoints, third-party detection and batch planning all
read headers here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clipsr_cli.errors import ModelError
from clipsr_cli.io.files import open_regular

__all__ = ["FORMAT", "MAX_HEADER_BYTES", "read_header"]

#: The ``format`` metadata value of a clipsr checkpoint.
FORMAT = "clipsr"

#: Largest safetensors header read, in bytes (clipsr's own are under 200 KB).
MAX_HEADER_BYTES = 16 << 20


def read_header(path: str | os.PathLike) -> tuple[bytes, dict[str, dict], dict[str, str]]:
    """(the header's bytes, {tensor name: its header entry}, metadata) of a safetensors file,
    read without its tensors; every malformed or truncated header is a one-line ModelError.
    """
    path = Path(path)
    def invalid(why: str) -> ModelError:
        return ModelError(f"{path} is not a valid safetensors file ({why}); re-download or "
                          "re-export it")

    try:
        with open_regular(path, what="model file", error=ModelError) as f:  # no FIFO/device
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path} is not a clipsr checkpoint (file too small); "
                                 "re-download or re-export it")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise ModelError(f"{path} is not a clipsr checkpoint or is truncated; "
                                 "re-download or re-export it")
            if n > MAX_HEADER_BYTES:
                raise invalid(f"a {n}-byte header, more than {MAX_HEADER_BYTES >> 20} MiB")
            head += f.read(n)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}; check the file") from None
    try:
        header = json.loads(head[8:])
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise invalid(f"its header is not JSON: {str(e)[:80]}") from None
    if not isinstance(header, dict):
        raise invalid(f"its header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise invalid("its metadata is not a map of strings")
    end = 0
    for name, entry in header.items():
        if not _well_formed(entry):
            raise invalid(f"tensor {name[:60]!r} has a malformed header entry")
        end = max(end, entry["data_offsets"][1])
    if len(head) + end > size:
        raise ModelError(f"{path} is truncated ({size} of {len(head) + end} bytes); "
                         "re-download or re-export it")
    return head, header, meta


def _well_formed(entry: object) -> bool:
    """A tensor's header entry: ``{"dtype": str, "shape": [n, ...], "data_offsets": [a, b]}``."""
    def count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(entry, dict):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (isinstance(entry.get("dtype"), str) and isinstance(shape, list)
            and all(count(d) for d in shape) and isinstance(offsets, list) and len(offsets) == 2
            and all(count(o) for o in offsets) and offsets[0] <= offsets[1])
