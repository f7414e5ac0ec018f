"""The one atomic file writer (torch-free, so `clipsr download` and image I/O stay light).

A temporary file beside the destination is written, fsynced and given a normal file mode, then
renamed into place; on any failure (KeyboardInterrupt included) it is removed. Without
``overwrite`` the final step is a hard link, which fails with ``FileExistsError`` if the
destination appeared meanwhile (on file systems without hard links: check, then rename).

The temporary file is named ``.<destination name>.<host>~<pid>~<random>.part`` (the last part
has no dot): it names the process writing it. :func:`temporary_owner`, :func:`temporary_writer`
and :func:`remove_stale_temporaries` are the only other code that knows this, so a run killed
mid-write can be cleaned up without touching anybody else's files: a temporary is *stale* only
when its writer is gone (same host: no such process; another host: untouched for
:data:`FOREIGN_STALE_SECONDS`; a name without a writer, from older versions: stale).

A FIFO or a character device (``/dev/null``, a named pipe a reader waits on) is a stream, not a
file: it is written directly, never replaced or renamed over, whatever ``overwrite`` says; a
terminal is refused. Other special files (block devices, sockets) are refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

__all__ = ["FOREIGN_STALE_SECONDS", "atomic_write", "atomic_write_bytes", "is_stream",
           "remove_stale_temporaries", "temporary_owner", "temporary_writer"]

_PREFIX, _SUFFIX = ".", ".part"
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
#: A temporary written by another host counts as stale once untouched for this long.
FOREIGN_STALE_SECONDS = 3600

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, encode: Callable[[BinaryIO], None], *,
                 overwrite: bool = True) -> Path:
    """Write ``path`` through ``encode(file)``, atomically; ``FileExistsError`` if ``path``
    exists and not ``overwrite``. Raises what ``encode`` or the file system raise."""
    path = Path(path)
    kind = _special_kind(path)
    if kind == "stream":
        return _write_stream(path, encode)
    if kind is not None:
        raise OSError(errno.EPERM, f"{path} is a {kind}, not a regular file")
    fd, tmp = tempfile.mkstemp(prefix=f"{_PREFIX}{path.name}.{_HOST}~{os.getpid()}~",
                                suffix=_SUFFIX, dir=path.parent)
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


def _special_kind(path: Path) -> str | None:
    """None for a regular file, a folder or nothing; "stream" for a FIFO or character device;
    else what it is (block device, socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    return "block device" if stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode) else "special file"


def is_stream(path: str | os.PathLike) -> bool:
    """True if ``path`` is a FIFO or a character device: written directly, never replaced."""
    return _special_kind(Path(path)) == "stream"


def _write_stream(path: Path, encode: Callable[[BinaryIO], None]) -> Path:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))  # never O_CREAT: no new file
    try:
        if os.isatty(fd):
            raise OSError(errno.ENOTTY, "refusing to write binary data to a terminal")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "wb") as f:
        encode(f)
        f.flush()
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


def temporary_writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that writes the temporary file ``name``; None if the name does
    not say (a temporary of an older clipsr, or no temporary at all)."""
    if temporary_owner(name) is None:
        return None
    tag = name[:-len(_SUFFIX)].rpartition(".")[2]
    m = re.fullmatch(r"([A-Za-z0-9_-]+)~(\d+)~[^.~]+", tag)
    return (m.group(1), int(m.group(2))) if m else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _is_stale(entry: os.DirEntry) -> bool:
    writer = temporary_writer(entry.name)
    if writer is None:
        return True
    host, pid = writer
    if host == _HOST:
        return not _alive(pid)
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_STALE_SECONDS
    except OSError:
        return False


def remove_stale_temporaries(dests: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files that a killed write of any of ``dests`` left; return them.

    Only stale temporaries of ``dests`` are touched: another process writing other files into
    the same folder, or the same files (a second run started meanwhile), keeps its own.
    """
    by_dir: dict[Path, set[str]] = {}
    for d in dests:
        d = Path(d)
        by_dir.setdefault(d.parent, set()).add(d.name)
    removed = []
    for folder, names in by_dir.items():
        try:
            entries = [e for e in os.scandir(folder) if temporary_owner(e.name) in names
                       and e.is_file(follow_symlinks=False) and _is_stale(e)]
        except FileNotFoundError:
            continue
        for e in entries:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                continue
            removed.append(Path(e.path))
    return removed
