"""Getting a registered file into the cache without ever leaving (or loading) a broken one.

The whole life of a download, for one entry of the registry:

1. take a per-file lock (``<cache>/locks/``): a second process downloading the same file waits,
   then finds the finished file and uses it;
2. stream into ``<file>.part`` beside the final path, resuming a partial file with an HTTP
   ``Range`` request; transient errors (connection drops, timeouts, 5xx, 429) are retried with
   exponential backoff, permanent ones (404, 403, ...) move on to the next mirror;
   ``$CLIPSR_MIRROR`` (a base URL; ``<base>/<file>``) is tried first; ``file://`` URLs work;
3. check the size and sha256 of the ``.part``; a mismatch deletes it (nothing is left in the
   cache) and reports the expected and actual hashes;
4. fsync and ``os.replace`` it into place, then write ``<file>.verified`` (sha256, size, mtime)
   so later uses check only the size and the marker, not the whole hash.

Offline (``clipsr_cli.hub.registry.is_offline``) nothing is fetched from the network; ``file://``
mirrors are still used (they are local disks).

The transport is the standard library's ``urllib`` (no extra dependency; it handles proxies
from the environment) plus ``filelock``, which clipsr already depends on.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from clipsr_cli.io.atomic import atomic_write_bytes
from clipsr_cli.cli.console import info, state, warn
from clipsr_cli.errors import DownloadError, InputError, ModelError
from clipsr_cli.hub.registry import (
    ModelEntry, cache_dir, installed_path, is_offline, offline_reason,
)


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
_USER_AGENT = "clipsr (+https://github.com/clipsr)"
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
# verification


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_marker(path: Path, sha256: str) -> None:
    st = path.stat()
    data = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    atomic_write_bytes(_marker_path(path), json.dumps(data).encode())


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads(_marker_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _damaged(entry: ModelEntry, path: Path, why: str) -> DownloadError:
    return DownloadError(f"the installed file of {entry.name!r} ({path}) fails verification "
                         f"({why}); it will not be loaded: run 'clipsr download {entry.name} "
                         "--force' to fetch it again")


Status = Literal["installed", "missing", "damaged", "unverified"]


def install_status(entry: ModelEntry) -> Status:
    """Cheap status for listings (no hashing): installed (size and marker agree), missing,
    damaged (wrong size), unverified (present but not yet hashed; checked on first use)."""
    path = installed_path(entry)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if entry.size is not None and st.st_size != entry.size:
        return "damaged"
    if entry.source == "package":
        return "installed"
    m = _read_marker(path)
    if m and m.get("sha256") == entry.sha256:
        if m.get("size") != st.st_size:
            return "damaged"
        if m.get("mtime_ns") == st.st_mtime_ns:
            return "installed"
    return "unverified"


def _check_installed(entry: ModelEntry, path: Path) -> bool:
    """True when ``path`` holds ``entry``'s verified file, False when absent; a present but
    wrong file raises ``DownloadError`` (it is never returned to a loader)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if entry.size is not None and st.st_size != entry.size:
        raise _damaged(entry, path, f"{st.st_size} bytes, expected {entry.size}")
    m = _read_marker(path)
    if m and m.get("sha256") == entry.sha256:
        if m.get("size") != st.st_size:
            raise _damaged(entry, path, f"{st.st_size} bytes, {m.get('size')} when verified")
        if m.get("mtime_ns") == st.st_mtime_ns:
            return True
    actual = sha256_file(path)  # no (valid) marker: hash once, then remember
    if actual != entry.sha256:
        raise _damaged(entry, path, f"sha256 {actual}, expected {entry.sha256}")
    _write_marker(path, actual)
    return True


_package_verified: dict[tuple[str, int, int, str], bool] = {}


def _check_package(entry: ModelEntry, path: Path) -> Path:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"the built-in model file {path.name} of {entry.name!r} is missing "
                         "from this clipsr installation; reinstall clipsr") from None
    if entry.size is not None and st.st_size != entry.size:
        raise ModelError(f"the built-in model file {path} is damaged ({st.st_size} bytes, "
                         f"expected {entry.size}); reinstall clipsr")
    key = (str(path), st.st_size, st.st_mtime_ns, entry.sha256)
    if key not in _package_verified:  # built-in files are small: hash once per process
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ModelError(f"the built-in model file {path} is damaged (sha256 {actual}, "
                             f"expected {entry.sha256}); reinstall clipsr")
        _package_verified[key] = True
    return path


@dataclass(frozen=True)
class VerifyResult:
    entry: ModelEntry
    path: Path
    status: Literal["ok", "missing", "mismatch"]
    actual: str | None = None
    size: int | None = None


def verify(entry: ModelEntry) -> VerifyResult:
    """Re-hash the installed file of ``entry``. A mismatch invalidates the remembered
    verification, so that the file is never loaded until it is fetched again."""
    path = installed_path(entry)
    if not path.is_file():
        return VerifyResult(entry, path, "missing")
    actual, size = sha256_file(path), path.stat().st_size
    ok = actual == entry.sha256 and (entry.size is None or size == entry.size)
    if entry.source != "package":
        if ok:
            _write_marker(path, actual)
        else:
            _marker_path(path).unlink(missing_ok=True)
    return VerifyResult(entry, path, "ok" if ok else "mismatch", actual, size)


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


def offline_error(entry: ModelEntry) -> DownloadError:
    """A missing file while offline: the command to run, and the URLs for a manual download."""
    reason = offline_reason() or "offline"
    return DownloadError(
        f"model {entry.name!r} is not installed and clipsr is offline ({reason}); run "
        f"'clipsr download {entry.name}' with network access, or download "
        f"{' or '.join(entry.urls)} by hand and run "
        f"'clipsr download {entry.name} --from FILE'")


def ensure(entry: ModelEntry, *, offline: bool | None = None, force: bool = False,
           policy: RetryPolicy | None = None) -> Path:
    """The verified local file of ``entry``, downloading it first when missing (or ``force``).

    Raises ``DownloadError`` (offline and missing, every mirror failed, hash mismatch, the
    installed file is damaged) or ``ModelError`` (a built-in file is missing or damaged).
    """
    path = installed_path(entry)
    if entry.source == "package":
        return _check_package(entry, path)
    if not force and _check_installed(entry, path):
        return path
    urls = candidate_urls(entry)
    if is_offline() if offline is None else offline:
        urls = [u for u in urls if u.startswith("file://")]  # local disks are not "network"
        if not urls:
            raise offline_error(entry)
    return _download(entry, path, urls, force=force, policy=policy or POLICY)


def install_from_file(entry: ModelEntry, src: str | os.PathLike) -> Path:
    """Install a file fetched by hand, after checking its size and sha256 (works offline)."""
    src = Path(src).expanduser()
    if entry.source == "package":
        raise DownloadError(f"{entry.name!r} ships with clipsr; there is nothing to install")
    if not src.is_file():
        raise InputError(f"--from: file not found: {src}")
    path = installed_path(entry)
    size = src.stat().st_size
    if entry.size is not None and size != entry.size:
        raise DownloadError(f"{src} is not {entry.name!r}: {size} bytes, expected {entry.size}; "
                            "nothing was installed")
    with _locked(entry, path, POLICY):
        part = path.with_name(path.name + ".part")
        try:
            h = hashlib.sha256()
            with open(src, "rb") as fi, open(part, "wb") as fo:
                while block := fi.read(POLICY.chunk):
                    h.update(block)
                    fo.write(block)
                fo.flush()
                os.fsync(fo.fileno())
            actual = h.hexdigest()
            if actual != entry.sha256:
                raise DownloadError(f"{src} does not match {entry.name!r}: expected sha256 "
                                    f"{entry.sha256}, got {actual}; nothing was installed")
            _install(part, path, actual)
        finally:
            part.unlink(missing_ok=True)
            _rmdir_if_empty(path.parent)
    return path


# --------------------------------------------------------------------------------------------
# internals


@contextmanager
def _locked(entry: ModelEntry, path: Path, policy: RetryPolicy) -> Iterator[None]:
    from filelock import FileLock, Timeout

    locks = cache_dir() / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the clipsr cache in {cache_dir()} ({e}); set "
                            "CLIPSR_HOME to a writable directory") from None
    lock = FileLock(str(locks / f"{entry.sha256[:16]}-{entry.file}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        info(f"waiting for another clipsr process to finish downloading {entry.name}…")
        try:
            lock.acquire(timeout=policy.lock_timeout)
        except Timeout:
            raise DownloadError(f"another clipsr process has been downloading {entry.name} for "
                                f"{policy.lock_timeout:.0f}s; if none is running, delete "
                                f"{lock.lock_file}") from None
    try:
        yield
    finally:
        lock.release()


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def _install(part: Path, path: Path, sha256: str) -> None:
    os.replace(part, path)
    try:  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
    _write_marker(path, sha256)


def _download(entry: ModelEntry, path: Path, urls: list[str], *, force: bool,
              policy: RetryPolicy) -> Path:
    with _locked(entry, path, policy):
        if not force and _check_installed(entry, path):
            return path  # another process finished it while we waited
        part = path.with_name(path.name + ".part")
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
            with _Bar(entry) as bar:
                for i, url in enumerate(urls):
                    info(f"downloading {entry.name} from {url}")
                    try:
                        _fetch_url(url, part, entry, policy, bar)
                    except _Permanent as e:
                        failures.append(f"{url}: {e}")
                        if i + 1 < len(urls):
                            warn(f"{url}: {e}; trying the next mirror")
                        continue
                    except _Mismatch as e:
                        part.unlink(missing_ok=True)
                        mismatch = (url, e)
                        failures.append(f"{url}: wrong file ({e})")
                        if i + 1 < len(urls):
                            warn(f"{url}: the file does not match its sha256; trying the next "
                                 "mirror")
                        continue
                    _install(part, path, entry.sha256)
                    return path
        finally:
            if not part.exists():
                _rmdir_if_empty(path.parent)
    if mismatch is not None:
        url, e = mismatch
        raise DownloadError(f"{entry.name}: the file from {url} does not match its sha256: "
                            f"expected {entry.sha256}, got {e.actual} ({e.size} bytes); it "
                            "was deleted. The registry entry or the mirror is wrong: report it, "
                            "or use another mirror (CLIPSR_MIRROR)")
    raise DownloadError(f"cannot download {entry.name}: {'; '.join(failures)}; check the "
                        "network, set CLIPSR_MIRROR to a mirror, or download the file by hand "
                        f"and run 'clipsr download {entry.name} --from FILE'")


def _fetch_url(url: str, part: Path, entry: ModelEntry, policy: RetryPolicy, bar: "_Bar") -> None:
    """Bring ``part`` to the complete, verified file from ``url`` (resuming what is there)."""
    attempt, restarted = 0, False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if entry.size is not None and have > entry.size:
            part.unlink()
            have = 0
        resumed = have > 0
        try:
            _transfer(url, part, have, entry, policy, bar)
        except _Transient as e:
            now = part.stat().st_size if part.exists() else 0
            attempt = 1 if now > have else attempt + 1  # progress resets the count
            if attempt >= policy.attempts:
                raise _Permanent(f"{e} (gave up after {attempt} tries)") from None
            delay = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
            info(f"{url}: {e}; retrying in {delay:.1f}s")
            time.sleep(delay)
            continue
        size = part.stat().st_size
        actual = sha256_file(part, policy.chunk)
        if actual == entry.sha256 and (entry.size is None or size == entry.size):
            return
        if resumed and not restarted:  # the kept partial may be stale: start over once
            restarted = True
            part.unlink()
            info(f"{entry.name}: resumed file does not verify; downloading it again from the "
                 "start")
            continue
        raise _Mismatch(actual, size)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _transfer(url: str, part: Path, have: int, entry: ModelEntry, policy: RetryPolicy,
              bar: "_Bar") -> None:
    """One try: append the rest of the file to ``part``. Raises ``_Transient`` when the body
    ends early, ``_Permanent`` when this URL cannot serve the file."""
    if url.startswith("file://"):
        _transfer_file(url, part, have, policy, bar)
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
    except (http.client.HTTPException, socket.timeout, OSError) as e:
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
        bar.start(total, have)
        _copy(resp, part, mode, have, total, entry, policy, bar)


def _transfer_file(url: str, part: Path, have: int, policy: RetryPolicy, bar: "_Bar") -> None:
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
        bar.start(total, have)
        _copy(f, part, "ab" if have else "wb", have, total, None, policy, bar)


def _copy(src, part: Path, mode: str, have: int, total: int | None, entry: ModelEntry | None,
          policy: RetryPolicy, bar: "_Bar") -> None:
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
            bar.advance(len(block))
            if limit is not None and got > limit:
                total = None  # more than the registered size: the final check rejects it
                break
        out.flush()
        os.fsync(out.fileno())
    if total is not None and got < total:
        raise _Transient(f"connection closed after {got} of {total} bytes")


class _Bar:
    """A Rich progress bar on stderr (bytes, speed, ETA); nothing when ``--quiet``."""

    def __init__(self, entry: ModelEntry):
        self.entry = entry
        self.progress = None
        self.task = None

    def __enter__(self) -> "_Bar":
        if not state.quiet:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            from clipsr_cli.cli.console import err_console

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     TimeRemainingColumn(), console=err_console)
            self.progress.start()
        return self

    def start(self, total: int | None, completed: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(self.entry.file, total=total, completed=completed)
        else:
            self.progress.reset(self.task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


__all__ = ["RetryPolicy", "POLICY", "ensure", "install_from_file", "verify", "VerifyResult",
           "install_status", "candidate_urls", "offline_error", "sha256_file"]
