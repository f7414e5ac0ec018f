"""One try at one URL: stream the rest of a registered file into its ``.part``, within limits.

The limits (see :class:`RetryPolicy`), which no server can talk clipsr out of:

* **size**: never more bytes than the entry's ``size``; when that is unknown (the built-in CLIP
  entries), at most ``max_unknown_size`` (default ``$CLIPSR_MAX_DOWNLOAD_BYTES``, else 1.5 GiB,
  about 1.7 × the largest CLIP file registered, ViT-L/14's 890 MiB). A ``Content-Length`` over
  that is refused before the first byte; a stream that reaches it without matching the sha256 is
  deleted and the URL given up;
* **stall**: less than ``min_rate`` bytes/s (1 KiB/s) over ``stall_seconds`` (default
  ``$CLIPSR_STALL_SECONDS``, else 60; 0 turns it off), or no data at all for that long, fails
  the try (it is retried, then the next mirror is used);
* **hash first**: the sha256 is computed as the bytes arrive, so the file is complete as soon as
  they match, whatever the server's ``Content-Length`` or end of stream says;
* **disk**: the free space is checked when the size is known; a failed write (a full disk)
  deletes the ``.part`` and says how much space is needed.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipsr_cli.errors import DownloadError, InputError, UsageError
from clipsr_cli.hub.entries import FileEntry
from clipsr_cli.io.files import open_regular

DEFAULT_MAX_UNKNOWN_SIZE = 3 << 29
"""1.5 GiB: the most bytes accepted for an entry without a ``size``."""
DEFAULT_STALL_SECONDS = 60.0
PROGRESS_BYTES = 1 << 20
"""A try that added at least this much does not count against ``RetryPolicy.attempts``."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try, and the limits of one download. Tests replace ``fetch.POLICY`` with
    tiny delays and windows."""

    attempts: int = 4
    """Tries per URL for transient errors (reset whenever a try added at least 1 MiB)."""
    backoff: float = 1.0
    """Seconds before the second try; doubled for each further try."""
    max_backoff: float = 30.0
    timeout: float = 30.0
    """Socket timeout (connect and each read), seconds (at most ``stall_seconds``)."""
    lock_timeout: float = 6 * 3600.0
    """How long to wait for another process downloading the same file."""
    chunk: int = 1 << 20
    stall_seconds: float | None = None
    """A try slower than ``min_rate`` over this many seconds fails; None:
    ``$CLIPSR_STALL_SECONDS``, else 60; 0: no stall limit."""
    min_rate: int = 1024
    """Bytes per second below which a download is stalled."""
    max_unknown_size: int | None = None
    """The most bytes accepted for an entry without a ``size``; None:
    ``$CLIPSR_MAX_DOWNLOAD_BYTES``, else 1.5 GiB."""

    def __post_init__(self) -> None:
        if self.stall_seconds is not None and not self.stall_seconds >= 0:
            raise UsageError("`stall_seconds` must be >= 0 (0: no stall limit)",
                             param="stall_seconds")
        if self.max_unknown_size is not None and not self.max_unknown_size > 0:
            raise UsageError("`max_unknown_size` must be a positive number of bytes",
                             param="max_unknown_size")

    def stall_limit(self) -> float:
        """Seconds of too-slow progress that fail a try (0: never)."""
        if self.stall_seconds is not None:
            return self.stall_seconds
        return _env_number("CLIPSR_STALL_SECONDS", DEFAULT_STALL_SECONDS, float,
                           "a number of seconds (0: no stall limit)", lambda v: v >= 0)

    def size_cap(self) -> int:
        """The most bytes accepted for an entry without a ``size``."""
        if self.max_unknown_size is not None:
            return self.max_unknown_size
        return _env_number("CLIPSR_MAX_DOWNLOAD_BYTES", DEFAULT_MAX_UNKNOWN_SIZE, int,
                           "a positive number of bytes", lambda v: v > 0)


def _env_number(var: str, default, kind, what: str, ok: Callable[..., bool]):
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise DownloadError(f"{var}={raw!r} is not {what}; fix or unset it")
    return value


def short(n: int) -> str:
    """``n`` bytes for a reader: ``4.2 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def human(n: int) -> str:
    """``n`` bytes, exactly and for a reader: ``4194304 bytes (4.2 MB)``."""
    return f"{n} bytes ({short(n)})"


class Transient(Exception):
    """Worth retrying the same URL (after a pause)."""


class Stalled(Transient):
    """Too slow (or silent) for ``stall_seconds``."""


class Permanent(Exception):
    """Give up on this URL; try the next mirror."""


Tick = Callable[[int, int | None], None]


# --------------------------------------------------------------------------------------------
# the partial file


class Partial:
    """``<file>.part``: its size and the running sha256 of its bytes (read once when it is
    resumed, then updated as bytes are appended). One over ``limit`` bytes is deleted unread."""

    def __init__(self, path: Path, chunk: int = 1 << 20, limit: int | None = None):
        self.path, self.size, self._h, self._fd = path, 0, hashlib.sha256(), None
        try:
            if limit is not None and path.stat().st_size > limit:
                path.unlink()  # e.g. the disk-sized leftover of an endless download
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    self._h.update(block)
                    self.size += len(block)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DownloadError(f"cannot read {path} ({e.strerror or e}); delete it") from None

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()

    def matches(self, entry: FileEntry) -> bool:
        """Whether the bytes so far are ``entry``'s file."""
        return (entry.size is None or self.size == entry.size) and self.sha256 == entry.sha256

    def discard(self) -> None:
        """Delete the file (it cannot be resumed) and start over from zero bytes."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.size, self._h = 0, hashlib.sha256()

    def write(self, block: bytes) -> None:
        """Append ``block`` (``OSError`` when the disk refuses it)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        view = memoryview(block)
        while view:
            view = view[os.write(self._fd, view):]
        self._h.update(block)
        self.size += len(block)

    def flush(self) -> None:
        """fsync and close what was appended (``OSError`` when the disk refuses it)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def failed(self, entry: FileEntry, e: OSError, expected: int | None) -> DownloadError:
        """Delete the file after a failed write and say what to do."""
        written = self.size
        try:
            self.discard()
        except OSError:
            pass
        where = self.path.parent
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            need = human(expected) if expected is not None else f"more than {human(written)}"
            return DownloadError(f"the disk is full: {entry.name} needs {need} free in {where} "
                                 f"({short(_free(where))} free); the partial download was "
                                 "deleted; free some space or set CLIPSR_HOME to another disk")
        return DownloadError(f"cannot write {self.path} ({e.strerror or e}); the partial "
                             "download was deleted; free some disk space or set CLIPSR_HOME to "
                             "another directory")


def _free(d: Path) -> int:
    try:
        return shutil.disk_usage(d).free
    except OSError:
        return 0


def check_space(entry: FileEntry, part: Partial, expected: int | None) -> None:
    """``DownloadError`` when the rest of an ``expected``-byte file cannot fit on the disk."""
    if expected is None:
        return
    need, free = expected - part.size, _free(part.path.parent)
    if need > free:
        raise DownloadError(f"{entry.name} needs {human(need)} but {part.path.parent} has "
                            f"{short(free)} free; free some space or set CLIPSR_HOME to another "
                            "disk")


# --------------------------------------------------------------------------------------------
# one try


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}


def transfer(url: str, part: Partial, entry: FileEntry, policy: RetryPolicy, tick: Tick, *,
             user_agent: str) -> None:
    """Append the rest of ``entry``'s file from ``url`` to ``part``. Returns at the end of the
    stream or at the size limit (the caller checks the hash); raises ``Transient`` (retry),
    ``Stalled`` or ``Permanent`` (this URL cannot serve the file)."""
    limit = entry.size if entry.size is not None else policy.size_cap()
    stall = policy.stall_limit()
    timeout = min(policy.timeout, stall) if stall else policy.timeout
    if url.startswith("file://"):
        (src, total), who = _open_file(url, part), "the file says"
    else:
        (src, total), who = _open_http(url, part, timeout, user_agent), "the server says"
        if src is None:
            return  # HTTP 416 after `have`: nothing more to get
    with src:
        if entry.size is None and total is not None and total > limit:
            raise Permanent(f"{who} it is {total} bytes, more than {_cap_words(limit)}")
        expected = entry.size if entry.size is not None else total
        check_space(entry, part, expected)
        tick(part.size, expected)
        _copy(src, part, entry, expected, limit, policy, stall, tick)
    if part.matches(entry):
        return
    if entry.size is None and part.size >= limit:
        part.discard()
        raise Permanent(f"reached {_cap_words(limit)} without matching its sha256")
    if expected is not None and part.size < expected:
        raise Transient(f"connection closed after {part.size} of {expected} bytes")


def _cap_words(limit: int) -> str:
    return (f"the {short(limit)} limit for a file of unknown size ({limit} bytes; set "
            "CLIPSR_MAX_DOWNLOAD_BYTES to allow more, or give the registry entry a 'size')")


def _open_http(url: str, part: Partial, timeout: float, user_agent: str):
    headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and part.size:  # nothing after `have`: the partial may be complete
            return None, None
        if e.code in _PERMANENT_HTTP:
            raise Permanent(f"HTTP {e.code} {e.reason}") from None
        raise Transient(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise Transient(f"{e.reason}") from None
    except (http.client.HTTPException, OSError) as e:  # socket.timeout is an OSError
        raise Transient(f"{type(e).__name__}: {e}") from None
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != part.size:
            resp.close()
            part.discard()  # an unexpected range: start over
            raise Transient("the server sent an unexpected byte range")
        return resp, (int(m.group(3)) if m.group(3) != "*" else None)
    part.discard()  # the server ignored the Range (or there was none): start from zero
    length = resp.headers.get("Content-Length")
    return resp, (int(length) if length and length.isdigit() else None)


def _open_file(url: str, part: Partial):
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise Permanent(f"file:// URLs must name a local path (file:///path), not {url}")
    src = Path(urllib.request.url2pathname(parsed.path))
    try:  # only a regular file: /dev/zero or a FIFO would never end (or never start)
        f = open_regular(src, what="download source")
    except InputError as e:
        raise Permanent(str(e)) from None
    except FileNotFoundError:
        raise Permanent("no such file") from None
    except OSError as e:
        raise Transient(f"{e}") from None
    total = os.fstat(f.fileno()).st_size
    if part.size > total:
        part.discard()  # a stream cannot be resumed
    elif part.size:
        f.seek(part.size)
    return f, total


def _copy(src, part: Partial, entry: FileEntry, expected: int | None, limit: int,
          policy: RetryPolicy, stall: float, tick: Tick) -> None:
    """Append ``src`` to ``part`` until its end, or until ``limit`` bytes or the sha256 matches
    (then stop reading: no server decides how much clipsr writes)."""
    read = getattr(src, "read1", src.read)
    t0, n0 = last = time.monotonic(), part.size
    try:
        while part.size < limit and not part.matches(entry):
            try:
                block = read(min(policy.chunk, limit - part.size))
            except TimeoutError:
                hint = _stall_hint(policy, stall) if stall else ""
                raise Stalled(f"stalled: no data for {time.monotonic() - last:.1f}s after "
                              f"{part.size} bytes{hint}") from None
            except (http.client.HTTPException, OSError) as e:
                raise Transient(f"connection lost after {part.size} bytes "
                                f"({type(e).__name__})") from None
            if not block:
                return
            try:
                part.write(block)
            except OSError as e:
                raise part.failed(entry, e, expected) from None
            tick(part.size, expected)
            now = last = time.monotonic()
            if stall and now - t0 >= stall:
                if part.size - n0 < policy.min_rate * (now - t0):
                    raise Stalled(f"stalled: {part.size - n0} bytes in {now - t0:.1f}s"
                                  f"{_stall_hint(policy, stall)}")
                t0, n0 = now, part.size
    finally:
        try:
            part.flush()
        except OSError as e:
            raise part.failed(entry, e, expected) from None


def _stall_hint(policy: RetryPolicy, stall: float) -> str:
    rate = f"{policy.min_rate // 1024} KiB/s" if policy.min_rate % 1024 == 0 \
        else f"{policy.min_rate} B/s"
    return f", under the minimum of {rate} over {stall:g}s (the window is CLIPSR_STALL_SECONDS)"


__all__ = ["RetryPolicy", "Partial", "transfer", "check_space", "human", "Transient",
           "Stalled", "Permanent", "DEFAULT_MAX_UNKNOWN_SIZE", "DEFAULT_STALL_SECONDS"]
