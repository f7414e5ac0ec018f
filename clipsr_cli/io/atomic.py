"""The one atomic file writer (torch-free, so `clipsr download` and image I/O stay light).

A temporary file beside the destination is written, fsynced and given a normal file mode, then
renamed into place; on any failure (KeyboardInterrupt included) it is removed. Without
``overwrite`` the final step is a hard link, which fails with ``FileExistsError`` if the
destination appeared meanwhile (on file systems without hard links: check, then rename).

The temporary file is named ``.<destination name>.<random>.part`` (``<random>`` has no dot);
:func:`temporary_owner` and :func:`remove_stale_temporaries` are the only other code that knows
this, so a run killed mid-write can be cleaned up without touching anybody else's files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

__all__ = ["atomic_write", "atomic_write_bytes", "remove_stale_temporaries", "temporary_owner"]

_PREFIX, _SUFFIX = ".", ".part"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, encode: Callable[[BinaryIO], None], *,
                 overwrite: bool = True) -> Path:
    """Write ``path`` through ``encode(file)``, atomically; ``FileExistsError`` if ``path``
    exists and not ``overwrite``. Raises what ``encode`` or the file system raise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_PREFIX}{path.name}.", suffix=_SUFFIX,
                                dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            encode(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_clobber(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def _rename_no_clobber(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def temporary_owner(name: str) -> str | None:
    """The destination file name whose atomic write ``name`` is the temporary file of, or None
    if ``name`` is not such a temporary file (``".a.png.x1y2.part"`` → ``"a.png"``)."""
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    dest, dot, rand = name[len(_PREFIX):-len(_SUFFIX)].rpartition(".")
    return dest if dot and dest and rand else None


def remove_stale_temporaries(dests: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files that a killed write of any of ``dests`` left; return them.

    Only the temporaries of ``dests`` are touched: another process writing other files into the
    same folder at the same moment keeps its own.
    """
    by_dir: dict[Path, set[str]] = {}
    for d in dests:
        d = Path(d)
        by_dir.setdefault(d.parent, set()).add(d.name)
    removed = []
    for folder, names in by_dir.items():
        try:
            entries = [e for e in os.scandir(folder) if temporary_owner(e.name) in names
                       and e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        for e in entries:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                continue
            removed.append(Path(e.path))
    return removed
