"""Getting a registered file into the cache without ever leaving (or loading) a broken one.

The whole life of a download, for one entry of the registry:

1. take the entry's lock (``clipsr_cli.hub.store.locked``): a second process downloading the
   same file waits, then finds the finished file and uses it;
2. stream into ``<file>.part`` beside the final path, resuming a partial file with an HTTP
   ``Range`` request; transient errors (connection drops, timeouts, 5xx, 429) are retried with
   exponential backoff, permanent ones (404, 403, ...) move on to the next mirror;
   ``$CLIPSR_MIRROR`` (a base URL; ``<base>/<file>``) is tried first; ``file://`` URLs work;
   within limits (``clipsr_cli.hub.transfer``: never more than the entry's ``size`` or, when
   unknown, a cap; a stall limit; the sha256 computed as bytes arrive, so the file is complete
   as soon as it matches; a full disk deletes the ``.part``);
3. check the size and sha256 of the ``.part``; a mismatch deletes it (nothing is left in the
   cache that a later run cannot use) and reports the expected and actual hashes;
4. install it (``clipsr_cli.hub.store.install``: fsync, ``os.replace``, ``.verified`` marker).

Offline (``offline=True``, or ``offline=None`` with ``CLIPSR_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``)
nothing is fetched from the network; ``file://`` mirrors are still used (they are local disks).
Progress is reported to an optional ``progress(file_name, done_bytes, total_bytes_or_None)``
callback, notes to :data:`clipsr_cli.errors.log`.

The transport is the standard library's ``urllib`` (no extra dependency; it handles proxies
from the environment) plus ``filelock``, which clipsr already depends on.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
import urllib.parse
from pathlib import Path
from typing import Callable

from clipsr_cli.errors import DownloadError, ModelError, log
from clipsr_cli.hub.entries import FileEntry, ModelEntry, PipelineEntry
from clipsr_cli.hub.store import (
    check_installed, check_package, install, installed_path, locked, part_path, rmdir_if_empty,
)
from clipsr_cli.hub.transfer import (
    PROGRESS_BYTES, Partial, Permanent, RetryPolicy, Transient, check_space, transfer,
)

Progress = Callable[[str, int, int | None], None]
"""``progress(file_name, done_bytes, total_bytes_or_None)``, called as bytes arrive (``done``
may go back to 0 when a download starts over)."""

POLICY = RetryPolicy()
_TRUE = {"1", "true", "yes", "on"}


def _user_agent() -> str:
    try:
        return f"clipsr/{importlib.metadata.version('clipsr')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "clipsr"


_USER_AGENT = _user_agent()


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


def candidate_urls(entry: FileEntry) -> list[str]:
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


def offline_error(entry: FileEntry, offline: bool | None = None) -> DownloadError:
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
    if isinstance(entry, PipelineEntry):
        raise ModelError(f"{entry.name!r} is a pipeline of other models and has no file; fetch "
                         "its stages (store.pipeline_stages)")
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


def _ticker(entry: FileEntry, progress: Progress | None) -> _Tick:
    if progress is None:
        return lambda done, total: None
    return lambda done, total: progress(entry.file, done, total)


def _download(entry: FileEntry, urls: list[str], *, force: bool, policy: RetryPolicy,
              tick: _Tick) -> Path:
    with locked(entry, timeout=policy.lock_timeout) as path:
        if not force and check_installed(entry, path):
            return path  # another process finished it while we waited
        if force:
            part_path(path).unlink(missing_ok=True)
        limit = entry.size if entry.size is not None else policy.size_cap()
        part = Partial(part_path(path), policy.chunk, limit)
        failures: list[str] = []
        mismatch: tuple[str, _Mismatch] | None = None
        try:
            check_space(entry, part, entry.size)
            for i, url in enumerate(urls):
                log.info("downloading %s from %s", entry.name, url)
                try:
                    _fetch_url(url, part, entry, policy, tick)
                except Permanent as e:
                    failures.append(f"{url}: {e}")
                    if i + 1 < len(urls):
                        log.warning("%s: %s; trying the next mirror", url, e)
                    continue
                except _Mismatch as e:
                    part.discard()
                    mismatch = (url, e)
                    failures.append(f"{url}: wrong file ({e})")
                    if i + 1 < len(urls):
                        log.warning("%s: the file does not match its sha256; trying the next "
                                    "mirror", url)
                    continue
                install(part.path, path, entry.sha256)
                return path
        finally:
            part.close()
            if not part.path.exists():
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


def _fetch_url(url: str, part: Partial, entry: FileEntry, policy: RetryPolicy,
               tick: _Tick) -> None:
    """Bring ``part`` to the complete, verified file from ``url`` (resuming what is there).

    Transient failures are retried ``policy.attempts`` times (a try that added at least
    ``PROGRESS_BYTES`` starts the count again), then ``Permanent``; ``_Mismatch`` when the whole
    file is there and wrong."""
    attempt, restarted = 0, False
    while True:
        if part.matches(entry):
            return  # complete (an interrupted install, or the bytes matched early)
        if entry.size is not None and part.size >= entry.size:
            part.discard()  # full size and wrong: it cannot be resumed
        have = part.size
        try:
            transfer(url, part, entry, policy, tick, user_agent=_USER_AGENT)
        except Transient as e:
            if part.matches(entry):
                return  # every byte is there; what the server did next does not matter
            grew = part.size >= have + PROGRESS_BYTES
            attempt = 1 if grew else attempt + 1
            if attempt >= policy.attempts:
                raise Permanent(f"{e} (gave up after {attempt} tries)") from None
            delay = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
            log.info("%s: %s; retrying in %.1fs", url, e, delay)
            time.sleep(delay)
            continue
        if part.matches(entry):
            return
        if have and not restarted:  # the kept partial may be stale: start over once
            restarted = True
            part.discard()
            log.info("%s: resumed file does not verify; downloading it again from the start",
                     entry.name)
            continue
        raise _Mismatch(part.sha256, part.size)


__all__ = ["RetryPolicy", "POLICY", "Progress", "ensure", "candidate_urls", "offline_error",
           "offline_reason", "is_offline"]
