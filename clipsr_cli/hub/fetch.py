"""Getting a registered file into the cache without ever leaving (or loading) a broken one.

The whole life of a download, for one entry of the registry:

1. take the entry's lock (``clipsr_cli.hub.store.locked``): a second process downloading the
   same file waits, then finds the finished file and uses it;
2. stream into ``<file>.part`` beside the final path, resuming a partial file with an HTTP
   ``Range`` request; transient errors (connection drops, timeouts, 5xx, 429) are retried with
   exponential backoff, permanent ones (404, 403, ...) move on to the next mirror;
   ``$CLIPSR_MIRROR`` (a base URL; ``<base>/<file>``) is tried first; ``file://`` URLs work;
3. check the size and sha256 of the ``.part``; a mismatch deletes it (nothing is left in the
   cache) and reports the expected and actual hashes;
4. install it (``clipsr_cli.hub.store.install``: fsync, ``os.replace``, ``.verified`` marker).

Offline (``offline=True``, or ``offline=None`` with ``CLIPSR_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``)
nothing is fetched from the network; ``file://`` mirrors are still used (they are local disks).
Progress is reported to an optional ``progress(file_name, done_bytes, total_bytes_or_None)``
callback, notes to :data:`clipsr_cli.errors.log`.

The transport is the standard library's ``urllib`` (no extra dependency; it handles proxies
from the environment) plus ``filelock``, which clipsr already depends on.
"""

from __future__ import annotations

import http.client
import importlib.metadata
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

from clipsr_cli.errors import DownloadError, log
from clipsr_cli.hub.registry import ModelEntry
from clipsr_cli.hub.store import (
    check_installed, check_package, install, installed_path, locked, part_path, rmdir_if_empty,
    sha256_file,
)

Progress = Callable[[str, int, int | None], None]
"""``progress(file_name, done_bytes, total_bytes_or_None)``, called as bytes arrive (``done``
may go back to 0 when a download starts over)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Tests replace ``POLICY`` with tiny delays."""

    attempts: int = 4
    """Tries per URL for transient errors (reset whenever a try made progress)."""
    backoff: float = 1.0
    """Seconds before the second try; doubled for each further try."""
    max_backoff: float = 30.0
    timeout: float = 30.0
    """Socket timeout (connect and each read), seconds."""
    lock_timeout: float = 6 * 3600.0
    """How long to wait for another process downloading the same file."""
    chunk: int = 1 << 20


POLICY = RetryPolicy()
_TRUE = {"1", "true", "yes", "on"}


def _user_agent() -> str:
    try:
        return f"clipsr/{importlib.metadata.version('clipsr')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "clipsr"


_USER_AGENT = _user_agent()
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}


class _Transient(Exception):
    """Worth retrying the same URL (after a pause)."""


class _Permanent(Exception):
    """Give up on this URL; try the next mirror."""


class _Mismatch(Exception):
    def __init__(self, actual: str, size: int):
        super().__init__(f"sha256 {actual}, {size} bytes")
        self.actual, self.size = actual, size


# --------------------------------------------------------------------------------------------
# offline mode


def offline_reason(offline: bool | None = None) -> str | None:
    """Why nothing may be fetched from the network, or None when it may: ``offline=True`` /
    ``False`` decide; ``None`` reads ``CLIPSR_OFFLINE`` and ``HF_HUB_OFFLINE``."""
    if offline is not None:
        return "`offline=True`" if offline else None
    for var in ("CLIPSR_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}=1"
    return None


def is_offline(offline: bool | None = None) -> bool:
    """True with ``offline=True``, or (``offline=None``) ``CLIPSR_OFFLINE=1`` or
    ``HF_HUB_OFFLINE=1``: no network."""
    return offline_reason(offline) is not None


# --------------------------------------------------------------------------------------------
# the public operations


def candidate_urls(entry: ModelEntry) -> list[str]:
    """``$CLIPSR_MIRROR/<file>`` (when set), then the entry's URLs, without repeats."""
    urls = []
    mirror = os.environ.get("CLIPSR_MIRROR", "").strip()
    if mirror:
        if not mirror.startswith(("https://", "http://", "file://")):
            raise DownloadError(f"CLIPSR_MIRROR={mirror!r} is not an http(s):// or file:// base "
                                "URL; fix or unset it")
        urls.append(f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.file)}")
    for u in entry.urls:
        if u not in urls:
            urls.append(u)
    return urls


def offline_error(entry: ModelEntry, offline: bool | None = None) -> DownloadError:
    """A missing file while offline: the command to run, and the URLs for a manual download."""
    reason = offline_reason(offline) or "offline"
    return DownloadError(
        f"model {entry.name!r} is not installed and clipsr is offline ({reason}); run "
        f"'clipsr download {entry.name}' with network access, or download "
        f"{' or '.join(entry.urls)} by hand and run "
        f"'clipsr download {entry.name} --from FILE'")


def ensure(entry: ModelEntry, *, offline: bool | None = None, force: bool = False,
           policy: RetryPolicy | None = None, progress: Progress | None = None) -> Path:
    """The verified local file of ``entry``, downloading it first when missing (or ``force``).

    ``offline``: see :func:`offline_reason`; ``progress``: see :data:`Progress`.
    Raises ``DownloadError`` (offline and missing, every mirror failed, hash mismatch, the
    installed file is damaged) or ``ModelError`` (a built-in file is missing or damaged).
    """
    if entry.source == "package":
        return check_package(entry)
    path = installed_path(entry)
    if not force and check_installed(entry, path):
        return path
    urls = candidate_urls(entry)
    if is_offline(offline):
        urls = [u for u in urls if u.startswith("file://")]  # local disks are not "network"
        if not urls:
            raise offline_error(entry, offline)
    return _download(entry, urls, force=force, policy=policy or POLICY,
                     tick=_ticker(entry, progress))


# --------------------------------------------------------------------------------------------
# internals

_Tick = Callable[[int, int | None], None]


def _ticker(entry: ModelEntry, progress: Progress | None) -> _Tick:
    if progress is None:
        return lambda done, total: None
    return lambda done, total: progress(entry.file, done, total)


def _download(entry: ModelEntry, urls: list[str], *, force: bool, policy: RetryPolicy,
              tick: _Tick) -> Path:
    with locked(entry, timeout=policy.lock_timeout) as path:
        if not force and check_installed(entry, path):
            return path  # another process finished it while we waited
        part = part_path(path)
        if force:
            part.unlink(missing_ok=True)
        failures: list[str] = []
        mismatch: tuple[str, _Mismatch] | None = None
        try:
            if entry.size is not None:
                need = entry.size - (part.stat().st_size if part.exists() else 0)
                free = shutil.disk_usage(path.parent).free
                if free < need:
                    raise DownloadError(f"{entry.name} needs {need} bytes but {path.parent} has "
                                        f"{free} free; free some space or set CLIPSR_HOME to "
                                        "another disk")
            for i, url in enumerate(urls):
                log.info("downloading %s from %s", entry.name, url)
                try:
                    _fetch_url(url, part, entry, policy, tick)
                except _Permanent as e:
                    failures.append(f"{url}: {e}")
                    if i + 1 < len(urls):
                        log.warning("%s: %s; trying the next mirror", url, e)
                    continue
                except _Mismatch as e:
                    part.unlink(missing_ok=True)
                    mismatch = (url, e)
                    failures.append(f"{url}: wrong file ({e})")
                    if i + 1 < len(urls):
                        log.warning("%s: the file does not match its sha256; trying the next "
                                    "mirror", url)
                    continue
                install(part, path, entry.sha256)
                return path
        finally:
            if not part.exists():
                rmdir_if_empty(path.parent)
    if mismatch is not None:
        url, e = mismatch
        raise DownloadError(f"{entry.name}: the file from {url} does not match its sha256: "
                            f"expected {entry.sha256}, got {e.actual} ({e.size} bytes); it "
                            "was deleted. The registry entry or the mirror is wrong: report it, "
                            "or use another mirror (CLIPSR_MIRROR)")
    raise DownloadError(f"cannot download {entry.name}: {'; '.join(failures)}; check the "
                        "network, set CLIPSR_MIRROR to a mirror, or download the file by hand "
                        f"and run 'clipsr download {entry.name} --from FILE'")


def _fetch_url(url: str, part: Path, entry: ModelEntry, policy: RetryPolicy, tick: _Tick) -> None:
    """Bring ``part`` to the complete, verified file from ``url`` (resuming what is there)."""
    attempt, restarted = 0, False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if entry.size is not None and have > entry.size:
            part.unlink()
            have = 0
        resumed = have > 0
        try:
            _transfer(url, part, have, entry, policy, tick)
        except _Transient as e:
            now = part.stat().st_size if part.exists() else 0
            attempt = 1 if now > have else attempt + 1  # progress resets the count
            if attempt >= policy.attempts:
                raise _Permanent(f"{e} (gave up after {attempt} tries)") from None
            delay = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
            log.info("%s: %s; retrying in %.1fs", url, e, delay)
            time.sleep(delay)
            continue
        size = part.stat().st_size
        actual = sha256_file(part, policy.chunk)
        if actual == entry.sha256 and (entry.size is None or size == entry.size):
            return
        if resumed and not restarted:  # the kept partial may be stale: start over once
            restarted = True
            part.unlink()
            log.info("%s: resumed file does not verify; downloading it again from the start",
                     entry.name)
            continue
        raise _Mismatch(actual, size)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _transfer(url: str, part: Path, have: int, entry: ModelEntry, policy: RetryPolicy,
              tick: _Tick) -> None:
    """One try: append the rest of the file to ``part``. Raises ``_Transient`` when the body
    ends early, ``_Permanent`` when this URL cannot serve the file."""
    if url.startswith("file://"):
        _transfer_file(url, part, have, policy, tick)
        return
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=policy.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing after `have`: the partial file may be complete
            return
        if e.code in _PERMANENT_HTTP:
            raise _Permanent(f"HTTP {e.code} {e.reason}") from None
        raise _Transient(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _Transient(f"{e.reason}") from None
    except (http.client.HTTPException, OSError) as e:  # socket.timeout is an OSError
        raise _Transient(f"{type(e).__name__}: {e}") from None
    with resp:
        mode, total = "ab", None
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                part.unlink(missing_ok=True)  # an unexpected range: start over
                raise _Transient("the server sent an unexpected byte range")
            total = int(m.group(3)) if m.group(3) != "*" else None
        else:
            mode, have = "wb", 0  # the server ignored the Range: start from zero
            total = int(length) if length and length.isdigit() else None
        total = total if total is not None else entry.size
        tick(have, total)
        _copy(resp, part, mode, have, total, entry, policy, tick)


def _transfer_file(url: str, part: Path, have: int, policy: RetryPolicy, tick: _Tick) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise _Permanent(f"file:// URLs must name a local path (file:///path), not {url}")
    src = Path(urllib.request.url2pathname(parsed.path))
    try:
        f = open(src, "rb")
    except FileNotFoundError:
        raise _Permanent("no such file") from None
    except OSError as e:
        raise _Transient(f"{e}") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        if have > total:
            have = 0
        f.seek(have)
        tick(have, total)
        _copy(f, part, "ab" if have else "wb", have, total, None, policy, tick)


def _copy(src, part: Path, mode: str, have: int, total: int | None, entry: ModelEntry | None,
          policy: RetryPolicy, tick: _Tick) -> None:
    got = have
    limit = entry.size if entry is not None else None
    try:
        out = open(part, mode)
    except OSError as e:
        raise DownloadError(f"cannot write {part} ({e}); set CLIPSR_HOME to a writable "
                            "directory") from None
    with out:
        while True:
            try:
                block = src.read(policy.chunk)
            except (http.client.HTTPException, OSError) as e:  # socket.timeout is an OSError
                raise _Transient(f"connection lost after {got} bytes ({type(e).__name__})") \
                    from None
            if not block:
                break
            try:
                out.write(block)
            except OSError as e:
                raise DownloadError(f"cannot write {part} ({e}); free some disk space or set "
                                    "CLIPSR_HOME to another directory") from None
            got += len(block)
            tick(got, total)
            if limit is not None and got > limit:
                total = None  # more than the registered size: the final check rejects it
                break
        out.flush()
        os.fsync(out.fileno())
    if total is not None and got < total:
        raise _Transient(f"connection closed after {got} of {total} bytes")


__all__ = ["RetryPolicy", "POLICY", "Progress", "ensure", "candidate_urls", "offline_error",
           "offline_reason", "is_offline"]
