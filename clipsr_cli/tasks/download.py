"""``download`` and ``models``: which registered files to fetch, verify, install or list, as
typed results the CLI renders. Torch-free (``clipsr download`` never loads torch).

The work below is :mod:`clipsr_cli.hub` (``registry``: the entries; ``store``: where files are
and whether they verify; ``fetch``: getting them). A pipeline has no file: it is fetched,
verified and sized as its stages.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

from clipsr_cli.errors import ClipsrError, DownloadError, log
from clipsr_cli.hub import fetch, store
from clipsr_cli.hub.entries import FileEntry, ModelEntry, PipelineEntry
from clipsr_cli.hub.registry import Registry, load_registry
from clipsr_cli.hub.store import VerifyResult

__all__ = ["Installed", "BarFactory", "ModelRow", "ModelList", "VerifyReport", "Fetched",
           "FetchFailed", "select", "files_of", "list_models", "install_from_file",
           "verify_models", "to_download", "download_models"]

#: What the ``installed`` column says.
Installed = Literal["built-in", "yes", "no", "damaged", "unverified"]
#: A progress bar for one file's download: a context giving the hub's ``progress=`` callback.
BarFactory = Callable[[], AbstractContextManager["fetch.Progress | None"]]


def select(names: Sequence[str]) -> tuple[Registry, list[ModelEntry]]:
    """The merged registry and the entries ``names`` name, in order (``ModelError`` with close
    matches for a misspelt name, before any work)."""
    reg = load_registry()
    return reg, [reg.get(n) for n in names]


def files_of(entries: Iterable[ModelEntry]) -> list[FileEntry]:
    """Entries with files: each pipeline replaced by its stages, duplicates dropped."""
    out: list[FileEntry] = []
    for e in entries:
        for f in (store.pipeline_stages(e) if isinstance(e, PipelineEntry) else [e]):
            if f not in out:
                out.append(f)
    return out


# -- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    """One row of ``clipsr models``: an entry, its file's size and whether it is installed."""

    entry: ModelEntry
    size: int | None
    """Bytes: the registered size, else the installed file's; None for a pipeline or unknown."""
    installed: Installed


@dataclass(frozen=True)
class ModelList:
    """The entries to list, and those left out because CLIP-SR cannot use them."""

    shown: tuple[ModelEntry, ...]
    hidden: tuple[str, ...]

    def rows(self) -> list[ModelRow]:
        """The shown entries with size and install status (reads the cache; no hashing)."""
        return [ModelRow(e, _size(e), _installed(e)) for e in self.shown]


def list_models(entries: Sequence[ModelEntry] | None = None, *, every: bool) -> ModelList:
    """``entries`` (default: every registered one) to list; without ``every`` an entry CLIP-SR
    cannot use (a ResNet CLIP) is left out and named in ``hidden``."""
    entries = list(load_registry()) if entries is None else list(entries)
    return ModelList(tuple(e for e in entries if e.usable or every),
                     tuple(e.name for e in entries if not e.usable and not every))


def _size(entry: ModelEntry) -> int | None:
    if not isinstance(entry, FileEntry):
        return None
    if entry.size is not None:
        return entry.size
    p = store.installed_path(entry)
    return p.stat().st_size if p.is_file() else None


def _installed(entry: ModelEntry) -> Installed:
    status = store.install_status(entry)
    if status == "installed":
        files = store.pipeline_stages(entry) if isinstance(entry, PipelineEntry) else [entry]
        return "built-in" if all(e.source == "package" for e in files) else "yes"
    return {"missing": "no", "damaged": "damaged", "unverified": "unverified"}[status]


# -- install by hand, verify ------------------------------------------------------------------------
def install_from_file(entry: ModelEntry, src: str | Path) -> Path:
    """Install ``src``, a file downloaded by hand, as ``entry``'s after checking its sha256."""
    if isinstance(entry, PipelineEntry):
        stages = ", ".join(e.name for e in store.pipeline_stages(entry))
        raise DownloadError(f"{entry.name!r} is a pipeline of other models and has no file of its "
                            f"own; install its stages ({stages}) one at a time")
    path = store.install_from_file(entry, src)
    log.info(f"installed {entry.name} (sha256 verified)")
    return path


@dataclass(frozen=True)
class VerifyReport:
    """The files re-hashed and how each fared."""

    results: tuple[VerifyResult, ...]

    @property
    def failed(self) -> list[str]:
        return [r.entry.name for r in self.results if r.status != "ok"]

    def check(self) -> None:
        """``DownloadError`` naming the files that failed (then they are never loaded)."""
        bad = self.failed
        if bad:
            raise DownloadError(f"{len(bad)} of {len(self.results)} model file(s) failed "
                                f"verification ({', '.join(bad)}); they will not be loaded: "
                                f"run 'clipsr download {' '.join(bad)} --force'")


def verify_models(reg: Registry, entries: Sequence[ModelEntry], *,
                  each: Callable[[VerifyResult], None] | None = None) -> VerifyReport:
    """Re-hash the files of ``entries`` (none: every installed file), calling ``each`` with
    every result as it comes; a mismatch is forgotten as verified (see :func:`store.verify`)."""
    checked = files_of(entries) or [e for e in reg if isinstance(e, FileEntry)
                                     and store.install_status(e) != "missing"]
    results = []
    for e in checked:
        results.append(store.verify(e))
        if each is not None:
            each(results[-1])
    if not checked:
        log.info("no installed models to verify")
    return VerifyReport(tuple(results))


# -- download -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    entry: FileEntry
    path: Path


@dataclass(frozen=True)
class FetchFailed:
    entry: FileEntry
    error: ClipsrError


def to_download(reg: Registry, entries: Sequence[ModelEntry], *, every: bool) -> list[FileEntry]:
    """The files to fetch: those of ``entries``, or with ``every`` those of every entry CLIP-SR
    can use (the others noted as skipped); empty when nothing was named."""
    if every:
        entries = []
        for e in reg:
            if e.usable:
                entries.append(e)
            else:
                log.info(f"skipping {e.name} (not usable by CLIP-SR); name it to download it")
    return files_of(entries)  # a pipeline is fetched as its stages


def download_models(files: Sequence[FileEntry], *, force: bool = False, offline: bool = False,
                    bar: BarFactory | None = None) -> Iterator[Fetched | FetchFailed]:
    """Fetch ``files`` (see :func:`to_download`) one by one, yielding each result as it comes.
    One file: its error is raised; several: a failure is yielded and the next one tried, and
    ``DownloadError`` counting the failures is raised at the end."""
    failed: list[str] = []
    for e in files:
        if not force and store.install_status(e) == "installed":
            log.info(f"{e.name} is already installed")
        try:
            with (bar or nullcontext)() as progress:
                path = fetch.ensure(e, force=force, offline=offline or None, progress=progress)
        except ClipsrError as err:
            if len(files) == 1:
                raise
            failed.append(e.name)
            yield FetchFailed(e, err)
            continue
        yield Fetched(e, path)
    if failed:
        raise DownloadError(f"{len(failed)} of {len(files)} downloads failed: "
                            f"{', '.join(failed)}")
