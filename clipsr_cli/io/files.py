"""Reading a file whole, safely: only regular files, and a size cap judged before reading
(torch-free).

Every file clipsr reads whole (images, registry, list, caption and manifest files, checkpoints,
``file://`` download sources) goes through here. A FIFO, a device (``/dev/zero``,
``/dev/urandom``), a socket or a folder is refused at once with one line, never read: opening
uses ``O_NONBLOCK`` so a FIFO without a writer cannot hang, and the type is judged on the opened
file (no race with a rename). Standard input (``-``) is the one documented stream; callers that
accept it handle it themselves.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from clipsr_cli.errors import ClipsrError, InputError

__all__ = ["MAX_TEXT_BYTES", "check_regular", "human_bytes", "kind_of", "open_regular",
           "read_regular", "read_text_regular"]

#: Cap on a text file read whole (list, caption, manifest files): far above any real one
#: (a million 100-character paths is 100 MB), far below what exhausts memory.
MAX_TEXT_BYTES = 256 << 20


def human_bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, *, what: str = "file",
                 error: type[ClipsrError] = InputError) -> BinaryIO:
    """``path`` opened for reading in binary mode, if it is a regular file; else ``error``
    saying what it is (``what`` names the file's role, e.g. ``"registry file"``).

    OSError (missing file, permissions) propagates, for the caller's own message."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            hint = (" (for a folder of images, use batch)" if kind == "a folder"
                    and what == "image file" else "")
            article = "an" if what[:1].lower() in "aeiou" else "a"
            raise error(f"{path} is {kind}, not a regular file; pass {article} {what}{hint}")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike, *, what: str = "file",
                  error: type[ClipsrError] = InputError) -> int:
    """Refuse (``error``) a path that is not a regular file, for readers that open it by name
    themselves (safetensors, ``torch.load``); returns its size in bytes."""
    with open_regular(path, what=what, error=error) as f:
        return os.fstat(f.fileno()).st_size


def read_regular(path: str | os.PathLike, *, max_bytes: int, what: str = "file",
                 error: type[ClipsrError] = InputError, hint: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` (judged from its size
    before a byte is read, and again while reading: a file that grows is refused too)."""
    with open_regular(path, what=what, error=error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path} is {human_bytes(size)}, more than a {what} may be "
                        f"({human_bytes(max_bytes)}){hint or '; check that it is the right file'}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{path} grew past {human_bytes(max_bytes)} while it was read; check that "
                    f"it is the right {what}")
    return data


def read_text_regular(path: str | os.PathLike, *, max_bytes: int = MAX_TEXT_BYTES,
                      what: str = "text file", error: type[ClipsrError] = InputError,
                      encoding: str = "utf-8") -> str:
    """:func:`read_regular`, decoded (UnicodeDecodeError propagates)."""
    return read_regular(path, max_bytes=max_bytes, what=what, error=error).decode(encoding)
