"""The model registry: named weight files (clipsr generators and CLIP backbones) and their cache.

Registry files are TOML, one ``[[model]]`` table per entry (schema: ``ModelEntry``; the built-in
file is ``clipsr_cli/models.toml``). Three are merged, later entries winning with a warning:

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
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Literal, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject: tomli on < 3.11)
    import tomli as tomllib

from clipsr_cli.errors import ModelError, log
from clipsr_cli.hub.weightfiles import suffixes_of
from clipsr_cli.io.files import read_text_regular
from clipsr_cli.model.config import SCALES

BUILTIN_REGISTRY = Path(__file__).parent.parent / "models.toml"

Kind = Literal["generator", "clip", "spandrel", "pipeline"]
Source = Literal["url", "package"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("https://", "http://", "file://")


# --------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class ModelEntry:
    """One registered weight file. Field names are the TOML keys (``origin`` excepted)."""

    name: str
    """Unique name used on the command line (``clipsr download NAME``, ``-m NAME``): letters,
    digits and ``. _ + -``; no ``/`` or ``:`` so that it never looks like a path or a CLIP spec."""
    kind: Kind
    """``"generator"`` (a clipsr checkpoint), ``"clip"`` (a CLIP backbone for open_clip) or
    ``"spandrel"`` (a third-party SR checkpoint run through spandrel: Real-ESRGAN, SwinIR, …) or
    ``"pipeline"`` (no file of its own: ``stages`` run one after the other)."""
    description: str
    """One line for ``clipsr models``."""
    license: str
    """License of the weights (SPDX id or a short phrase)."""
    file: str = ""
    """File name (no directories). Generators must be ``.safetensors``; spandrel entries
    ``.safetensors``, ``.pth``, ``.pt`` or ``.ckpt`` (read with ``weights_only``, never unpickled).
    Pipelines have none."""
    sha256: str = ""
    """Lower-case hex sha256 of the file; authoritative, checked after every download."""
    size: int | None = None
    """Size in bytes, checked on every use; optional (then the size seen at verification is
    remembered and checked), because some upstream sizes could not be verified."""
    urls: tuple[str, ...] = ()
    """Mirrors, tried in order (``https://``, ``http://`` or ``file://``); required for
    ``source = "url"``, forbidden for ``source = "package"``."""
    source: Source = "url"
    """``"url"``: downloaded into the cache; ``"package"``: shipped in ``clipsr_cli/weights/``."""
    scale: int | None = None
    """Generators: the upscaling factor (2, 4, 8 or 16); spandrel entries: 2 … 16."""
    text_guided: bool | None = None
    """Generators: whether the model takes a caption (then ``clip`` is required)."""
    clip: str | None = None
    """Text-guided generators: the CLIP backbone spec they need, ``ARCH:WEIGHTS``."""
    degradation_model: str | None = None
    """Generators: a registered generator of the same architecture trained on degraded inputs
    (JPEG, noise, blur); ``--degradation``/``--denoise`` run between the two weight sets."""
    arch: str | None = None
    """CLIP entries: the open_clip architecture name (``ViT-B-32``)."""
    weights: str | None = None
    """CLIP entries: the weights tag this file provides (``openai``); ``ARCH:WEIGHTS`` then
    resolves to this entry."""
    stages: tuple[str, ...] = ()
    """Pipelines: what runs, in order: registered model names, or ``"bicubic:N"`` (a MATLAB-style
    bicubic ×N resize, N = 2, 3 or 4). The scales multiply to ``scale``, checked when loaded."""
    origin: str = field(default="", compare=False)
    """The registry file this entry came from (not a TOML key)."""

    @property
    def clip_spec(self) -> str | None:
        """``ARCH:WEIGHTS`` of a CLIP entry."""
        return f"{self.arch}:{self.weights}" if self.kind == "clip" else None

    @property
    def usable(self) -> bool:
        """Whether clipsr can run with it: CLIP-SR needs a ViT, so a ResNet CLIP is not."""
        return not (self.kind == "clip" and (self.arch or "").upper().startswith("RN"))


_FIELDS = {f.name: f for f in fields(ModelEntry) if f.name != "origin"}
_REQUIRED = ("name", "kind", "description", "license", "file", "sha256")
_PIPELINE_REQUIRED = ("name", "kind", "description", "license", "scale", "stages")
_RESIZE_RE = re.compile(r"^bicubic:([234])$")
_TOP_LEVEL = {"model"}


def _parse_entry(raw: Any, *, origin: str, index: int) -> ModelEntry:
    where_ = f"{origin}: model entry #{index + 1}"
    if not isinstance(raw, dict):
        raise ModelError(f"{where_} must be a table ([[model]]); fix the registry file")
    name = raw.get("name")
    if isinstance(name, str):
        where_ = f"{origin}: model {name!r}"

    def bad(msg: str) -> ModelError:
        return ModelError(f"{where_}: {msg}; fix the registry file")

    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise bad(f"unknown keys {unknown} (allowed: {sorted(_FIELDS)})")
    if raw.get("kind") == "pipeline":
        return _parse_pipeline(raw, bad, origin)
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise bad(f"missing keys {missing}")
    for key in ("name", "kind", "description", "license", "file", "sha256", "source", "clip",
                "arch", "weights"):
        if key in raw and not isinstance(raw[key], str):
            raise bad(f"{key!r} must be a string")
    if not _NAME_RE.match(name):
        raise bad("'name' may only contain letters, digits and . _ + - (no '/' or ':')")
    kind, source = raw["kind"], raw.get("source", "url")
    if kind not in ("generator", "clip", "spandrel"):
        raise bad(f"'kind' must be 'generator', 'clip', 'spandrel' or 'pipeline', not {kind!r}")
    if source not in ("url", "package"):
        raise bad(f"'source' must be 'url' or 'package', not {source!r}")
    file = raw["file"]
    if not file or file in (".", "..") or any(c in file for c in "/\\\0"):
        raise bad("'file' must be a plain file name, without directories or NUL bytes")
    sha = raw["sha256"]
    if not _SHA_RE.match(sha):
        raise bad("'sha256' must be 64 lower-case hex digits")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise bad("'size' must be a positive integer (bytes)")
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise bad("'urls' must be a list of strings")
    for u in urls:
        if not u.startswith(_URL_SCHEMES):
            raise bad(f"URL {u!r} must start with https://, http:// or file://")
    if source == "url" and not urls:
        raise bad("'urls' needs at least one URL (or set source = \"package\")")
    if source == "package" and urls:
        raise bad("a source = \"package\" entry ships inside clipsr and takes no 'urls'")
    scale, text_guided = raw.get("scale"), raw.get("text_guided")
    if kind == "generator":
        if not file.endswith(suffixes_of(kind)):
            raise bad("a generator file must be .safetensors (clipsr never unpickles weights)")
        if scale not in SCALES or isinstance(scale, bool):
            raise bad(f"'scale' must be one of {list(SCALES)}")
        if not isinstance(text_guided, bool):
            raise bad("'text_guided' (true/false) is required for a generator")
        if text_guided and not raw.get("clip"):
            raise bad("a text-guided generator needs 'clip' (e.g. \"ViT-B-32:openai\")")
        if not text_guided and raw.get("clip"):
            raise bad("'clip' is only for text-guided generators")
        for key in ("arch", "weights"):
            if key in raw:
                raise bad(f"{key!r} is only for CLIP entries")
        partner = raw.get("degradation_model")
        if partner is not None and (not isinstance(partner, str) or not _NAME_RE.match(partner)
                                    or partner == name):
            raise bad("'degradation_model' must name another registered generator")
    elif "degradation_model" in raw:
        raise bad("'degradation_model' is only for generator entries")
    elif kind == "spandrel":
        if not file.endswith(suffixes_of(kind)):
            raise bad(f"a spandrel file must be {' or '.join(suffixes_of(kind))}")
        if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 16:
            raise bad("'scale' must be an integer from 2 to 16")
        if text_guided:
            raise bad("a spandrel model is image-only: 'text_guided' must be false or absent")
        for key in ("clip", "arch", "weights"):
            if key in raw:
                raise bad(f"{key!r} is not for spandrel entries")
        text_guided = False
    else:
        for key in ("scale", "text_guided", "clip"):
            if key in raw:
                raise bad(f"{key!r} is only for generator entries")
        for key in ("arch", "weights"):
            if not raw.get(key):
                raise bad(f"a CLIP entry needs {key!r}")
        if not file.endswith(suffixes_of(kind)):
            raise bad(f"a CLIP file must be {' or '.join(suffixes_of(kind))} (.pt: OpenAI "
                      "TorchScript)")
    return ModelEntry(name=name, kind=kind, description=raw["description"],
                      license=raw["license"], file=file, sha256=sha, size=size, urls=tuple(urls),
                      source=source, scale=scale, text_guided=text_guided, clip=raw.get("clip"),
                      degradation_model=raw.get("degradation_model"),
                      arch=raw.get("arch"), weights=raw.get("weights"), origin=origin)


def _parse_pipeline(raw: dict, bad, origin: str) -> ModelEntry:
    missing = [k for k in _PIPELINE_REQUIRED if k not in raw]
    if missing:
        raise bad(f"missing keys {missing}")
    for key in ("file", "sha256", "size", "urls", "source", "clip", "arch", "weights",
                "degradation_model"):
        if key in raw:
            raise bad(f"{key!r} is not for pipeline entries (a pipeline has no file of its own)")
    for key in ("name", "description", "license"):
        if not isinstance(raw[key], str):
            raise bad(f"{key!r} must be a string")
    if not _NAME_RE.match(raw["name"]):
        raise bad("'name' may only contain letters, digits and . _ + - (no '/' or ':')")
    scale = raw["scale"]
    if scale not in SCALES or isinstance(scale, bool):
        raise bad(f"'scale' must be one of {list(SCALES)}")
    stages = raw["stages"]
    if (not isinstance(stages, list) or not stages
            or not all(isinstance(s, str) and s for s in stages)):
        raise bad("'stages' must be a non-empty list of model names or \"bicubic:N\"")
    if raw.get("text_guided"):
        raise bad("a pipeline is image-only: 'text_guided' must be false or absent")
    if _RESIZE_RE.match(stages[0]):
        raise bad("a pipeline starts with a model, not a resize")
    if raw["name"] in stages:
        raise bad("a pipeline cannot contain itself")
    return ModelEntry(name=raw["name"], kind="pipeline", description=raw["description"],
                      license=raw["license"], scale=scale, text_guided=False,
                      stages=tuple(stages), origin=origin)


def resize_factor(stage: str) -> int | None:
    """N for a ``"bicubic:N"`` pipeline stage, else None (a model name)."""
    m = _RESIZE_RE.match(stage)
    return int(m.group(1)) if m else None


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
    entries = tuple(_parse_entry(r, origin=str(path), index=i) for i, r in enumerate(raw))
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

    def clip_entry(self, arch: str, weights: str) -> ModelEntry | None:
        """The CLIP entry for ``(arch, weights)``, e.g. ``("ViT-B-32", "openai")``; the last
        registered wins."""
        for e in reversed(self.entries):
            if e.kind == "clip" and e.arch == arch and e.weights == weights:
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
    if entry is None or entry.kind not in ("generator", "pipeline") or entry.scale != scale:
        raise ModelError(f"no built-in model for scale {scale}x in this clipsr; pass a "
                         "registered name (see 'clipsr models') or a .safetensors file as "
                         "`model`")
    return name


__all__ = [
    "ModelEntry", "Registry", "load_registry", "parse_registry_file", "registry_files",
    "cache_dir", "user_registry_path", "default_model", "resize_factor", "BUILTIN_REGISTRY",
]
