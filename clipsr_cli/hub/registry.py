"""The model registry: named weight files (clipsr generators and CLIP backbones) and their cache.

Registry files are TOML, one ``[[model]]`` table per entry (schema: one frozen class per kind in
:mod:`clipsr_cli.hub.entries`, each parsing its own table; the built-in file is
``clipsr_cli/models.toml``). Three are merged, later entries winning with a warning:

1. the built-in ``models.toml`` shipped in the package,
2. the user's ``models.toml`` in the cache directory (``cache_dir()``),
3. the file named by ``$CLIPSR_REGISTRY``.

This module only reads registry files; where entries' files live and whether they verify is
``clipsr_cli.hub.store``, getting them there is ``clipsr_cli.hub.fetch``, and turning a name (or a
path) into a verified local file is ``clipsr_cli.hub.resolve``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject: tomli on < 3.11)
    import tomli as tomllib

from clipsr_cli.errors import ModelError, log
from clipsr_cli.hub.entries import (ClipEntry, GeneratorEntry, ModelEntry, PipelineEntry,
                                    parse_entry, resize_factor)
from clipsr_cli.io.files import read_text_regular

BUILTIN_REGISTRY = Path(__file__).parent.parent / "models.toml"
_TOP_LEVEL = {"model"}


def parse_registry_file(path: str | os.PathLike) -> tuple[ModelEntry, ...]:
    """Parse one registry file; raises ``ModelError`` naming the file (and entry) on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text_regular(path, max_bytes=16 << 20, what="registry file",
                                               error=ModelError))  # (16 MiB: a few KB)
    except FileNotFoundError:
        raise ModelError(f"registry file not found: {path}; fix the path or unset "
                         "CLIPSR_REGISTRY") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read registry file {path}: {e}") from None
    except (tomllib.TOMLDecodeError, RecursionError) as e:  # Recursion: arrays nested 1000s deep
        raise ModelError(f"{path}: not valid TOML ({e}); fix the registry file") from None
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ModelError(f"{path}: unknown top-level keys {unknown}; entries go in [[model]] "
                         "tables")
    raw = data.get("model", [])
    if not isinstance(raw, list):
        raise ModelError(f"{path}: 'model' must be an array of tables ([[model]])")
    entries = tuple(parse_entry(r, origin=str(path), index=i) for i, r in enumerate(raw))
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ModelError(f"{path}: model {e.name!r} is defined twice; keep one")
        seen.add(e.name)
    return entries


@dataclass(frozen=True)
class Registry:
    """The merged registry: entries by name, in file order."""

    entries: tuple[ModelEntry, ...]
    _by_name: Mapping[str, ModelEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({e.name: e for e in self.entries}))

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return self.find(name) is not None if isinstance(name, str) else False

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def find(self, name: str) -> ModelEntry | None:
        """The entry called ``name`` (or, for CLIP entries, ``ARCH:WEIGHTS``), or None."""
        if name in self._by_name:
            return self._by_name[name]
        arch, sep, weights = name.partition(":")
        return self.clip_entry(arch, weights) if sep else None

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; ``ModelError`` with close matches when there is none."""
        entry = self.find(name)
        if entry is None:
            raise ModelError(f"unknown model {name!r}{_suggest(name, self.names())}; run "
                             "'clipsr models' to list models, or pass a path to a .safetensors "
                             "checkpoint")
        return entry

    def clip_entry(self, arch: str, weights: str) -> ClipEntry | None:
        """The CLIP entry for ``(arch, weights)``, e.g. ``("ViT-B-32", "openai")``; the last
        registered wins."""
        for e in reversed(self.entries):
            if isinstance(e, ClipEntry) and e.arch == arch and e.weights == weights:
                return e
        return None


def _suggest(name: str, names: list[str]) -> str:
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = [repr(lowered[c]) for c in close]
    return f" (did you mean {' or '.join(quoted)}?)"


# --------------------------------------------------------------------------------------------
# locations and merging


def cache_dir() -> Path:
    """``$CLIPSR_HOME`` or ``platformdirs.user_data_dir("clipsr")`` (not created here)."""
    home = os.environ.get("CLIPSR_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("clipsr", appauthor=False))


def user_registry_path() -> Path:
    return cache_dir() / "models.toml"


def registry_files() -> list[Path]:
    """The registry files merged by ``load_registry``, in order (those that exist)."""
    files = [BUILTIN_REGISTRY]
    user = user_registry_path()
    if user.is_file():
        files.append(user)
    extra = os.environ.get("CLIPSR_REGISTRY")
    if extra:
        files.append(Path(extra).expanduser())  # missing -> error in parse_registry_file
    return files


_warned: set[tuple[str, str, str]] = set()  # overrides already reported (a memo, not a setting)


def load_registry() -> Registry:
    """Built-in entries, then the user's ``models.toml``, then ``$CLIPSR_REGISTRY``; a later
    entry with the same name replaces an earlier one (with a warning, once per process)."""
    merged: dict[str, ModelEntry] = {}
    for path in registry_files():
        for entry in parse_registry_file(path):
            old = merged.pop(entry.name, None)
            if old is not None and old != entry:
                key = (entry.name, old.origin, entry.origin)
                if key not in _warned:
                    _warned.add(key)
                    log.warning("model %r from %s is overridden by %s", entry.name, old.origin,
                                entry.origin)
            merged[entry.name] = entry  # re-inserted: order follows the latest definition
    return Registry(tuple(merged.values()))


def default_model(scale: int) -> str:
    """The name of the built-in model for ``scale`` (``clipsr-lite-x{scale}``)."""
    name = f"clipsr-lite-x{scale}"
    entry = load_registry().find(name)
    if not isinstance(entry, (GeneratorEntry, PipelineEntry)) or entry.scale != scale:
        raise ModelError(f"no built-in model for scale {scale}x in this clipsr; pass a "
                         "registered name (see 'clipsr models') or a .safetensors file as "
                         "`model`")
    return name


__all__ = [
    "ModelEntry", "Registry", "load_registry", "parse_registry_file", "registry_files",
    "cache_dir", "user_registry_path", "default_model", "resize_factor", "BUILTIN_REGISTRY",
]
