"""The local store of registered files: where each lives, whether it verifies, installing one.

Downloaded files live under ``cache_dir()/models/<sha256[:16]>/<file>`` (content-addressed: an
entry whose hash changes is simply "not installed" again); ``source = "package"`` entries ship
in ``clipsr_cli/weights/``. A file is handed out only after it was verified: its size is
checked on every use, its sha256 once and remembered in ``<file>.verified`` (sha256, size,
mtime), so later uses check only the size and the marker, not the whole hash.

Writers take a per-file lock (``<cache>/locks/``), write ``<file>.part`` beside the final path,
fsync and ``os.replace`` it into place, then write the marker: a reader never sees a partial
or unverified file. Getting bytes from the network is ``clipsr_cli.hub.fetch``.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from clipsr_cli.errors import DownloadError, InputError, ModelError, log
from clipsr_cli.hub.entries import (UPSCALERS, FileEntry, ModelEntry, PipelineEntry,
                                    resize_factor)
from clipsr_cli.hub.registry import cache_dir, load_registry
from clipsr_cli.io.atomic import atomic_write_bytes
from clipsr_cli.io.files import check_regular, open_regular

PACKAGE_WEIGHTS = Path(__file__).parent.parent / "weights"
"""Where entries with ``source = "package"`` ship their file (inside the wheel)."""

LOCK_TIMEOUT = 6 * 3600.0
"""Default seconds to wait for another process writing the same file."""

CHUNK = 1 << 20


def installed_path(entry: FileEntry) -> Path:
    """Where ``entry``'s file is (package) or goes (cache); it may not exist yet."""
    if entry.source == "package":
        return PACKAGE_WEIGHTS / entry.file
    return cache_dir() / "models" / entry.sha256[:16] / entry.file


def part_path(path: Path) -> Path:
    """The partial file a writer fills before it is moved to ``path``."""
    return path.with_name(path.name + ".part")


# --------------------------------------------------------------------------------------------
# verification


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
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


def _damaged(entry: FileEntry, path: Path, why: str) -> DownloadError:
    return DownloadError(f"the installed file of {entry.name!r} ({path}) fails verification "
                         f"({why}); it will not be loaded: run 'clipsr download {entry.name} "
                         "--force' to fetch it again")


Status = Literal["installed", "missing", "damaged", "unverified"]


def pipeline_stages(entry: PipelineEntry) -> list[FileEntry]:
    """The registered models a pipeline runs (its ``bicubic:N`` steps left out), in order;
    ``ModelError`` when a stage is unknown or is not an upscaling model."""
    reg, out = load_registry(), []
    for stage in entry.stages:
        if resize_factor(stage) is not None:
            continue
        e = reg.find(stage)
        if not isinstance(e, UPSCALERS):
            what = "unknown" if e is None else f"a {e.kind}, not an upscaling model"
            raise ModelError(f"pipeline {entry.name!r} ({entry.origin}): stage {stage!r} is "
                             f"{what}; fix the registry file")
        out.append(e)
    return out


def install_status(entry: ModelEntry) -> Status:
    """Cheap status for listings (no hashing): installed (size and marker agree), missing,
    damaged (wrong size), unverified (present but not yet hashed; checked on first use).
    A pipeline is as installed as the least installed of its stages."""
    if isinstance(entry, PipelineEntry):
        states = {install_status(e) for e in pipeline_stages(entry)}
        for s in ("damaged", "missing", "unverified"):
            if s in states:
                return s  # type: ignore[return-value]
        return "installed"
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


def check_installed(entry: FileEntry, path: Path) -> bool:
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


_package_verified: set[tuple[str, int, int, str]] = set()  # a memo: hashed once per process


def check_package(entry: FileEntry) -> Path:
    """The built-in (``source = "package"``) file of ``entry``, after checking it; a missing or
    damaged one raises ``ModelError`` (the installation is broken)."""
    path = installed_path(entry)
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
        _package_verified.add(key)
    return path


@dataclass(frozen=True)
class VerifyResult:
    entry: FileEntry
    path: Path
    status: Literal["ok", "missing", "mismatch"]
    actual: str | None = None
    size: int | None = None


def verify(entry: FileEntry) -> VerifyResult:
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
# writing


@contextmanager
def locked(entry: FileEntry, *, timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold ``entry``'s write lock (creating the cache directories); yields its final path.

    A second process (or thread) writing the same file waits up to ``timeout`` seconds, then
    ``DownloadError``.
    """
    from filelock import FileLock, Timeout

    path = installed_path(entry)
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
        log.info("waiting for another clipsr process to finish downloading %s…", entry.name)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise DownloadError(f"another clipsr process has been downloading {entry.name} for "
                                f"{timeout:.0f}s; if none is running, delete "
                                f"{lock.lock_file}") from None
    try:
        yield path
    finally:
        lock.release()


def rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def install(part: Path, path: Path, sha256: str) -> None:
    """Move the verified ``part`` to ``path`` durably and remember its verification (call it
    holding the lock)."""
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


def install_from_file(entry: FileEntry, src: str | os.PathLike, *,
                      lock_timeout: float = LOCK_TIMEOUT) -> Path:
    """Install a file fetched by hand, after checking its size and sha256 (works offline)."""
    src = Path(src).expanduser()
    if entry.source == "package":
        raise DownloadError(f"{entry.name!r} ships with clipsr; there is nothing to install")
    try:  # a device, FIFO or folder is refused with what it is (never read)
        size = check_regular(src, what="model file to install")
    except FileNotFoundError:
        raise InputError(f"`src`: file not found: {src}; check the path") from None
    except OSError as e:
        raise InputError(f"`src`: cannot read {src}: {e.strerror or e}; check its "
                         "permissions") from None
    if entry.size is not None and size != entry.size:
        raise DownloadError(f"{src} is not {entry.name!r}: {size} bytes, expected {entry.size}; "
                            "nothing was installed")
    with locked(entry, timeout=lock_timeout) as path:
        part = part_path(path)
        try:
            h = hashlib.sha256()
            with open_regular(src, what="model file to install") as fi, open(part, "wb") as fo:
                while block := fi.read(CHUNK):
                    h.update(block)
                    fo.write(block)
                fo.flush()
                os.fsync(fo.fileno())
            actual = h.hexdigest()
            if actual != entry.sha256:
                raise DownloadError(f"{src} does not match {entry.name!r}: expected sha256 "
                                    f"{entry.sha256}, got {actual}; nothing was installed")
            install(part, path, actual)
        finally:
            part.unlink(missing_ok=True)
            rmdir_if_empty(path.parent)
    return path


__all__ = ["PACKAGE_WEIGHTS", "installed_path", "sha256_file", "install_status", "Status",
           "check_installed", "check_package", "verify", "VerifyResult", "locked", "install",
           "install_from_file"]
