"""Registry entries: one frozen dataclass per kind, each parsing its own ``[[model]]`` table.

``kind = "generator"`` → :class:`GeneratorEntry` (a clipsr checkpoint), ``"spandrel"`` →
:class:`SpandrelEntry` (a third-party SR checkpoint run through spandrel), ``"clip"`` →
:class:`ClipEntry` (a CLIP backbone for open_clip), ``"pipeline"`` → :class:`PipelineEntry` (no
file of its own: stages run one after the other). The three with a file share
:class:`FileEntry`; all share :class:`ModelEntry`. Callers branch on the class, never on the
``kind`` string (kept as a class attribute: the TOML tag, shown by ``clipsr models``).

Field names are the TOML keys (``origin`` excepted). :func:`parse_entry` reads one table; which
files and where they live is :mod:`clipsr_cli.hub.registry` and :mod:`clipsr_cli.hub.store`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Literal

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.weightfiles import kind_reads, suffixes_of
from clipsr_cli.model.config import SCALES

__all__ = ["ModelEntry", "FileEntry", "GeneratorEntry", "SpandrelEntry", "ClipEntry",
           "PipelineEntry", "UPSCALERS", "ENTRY_TYPES", "TOML_KEYS", "parse_entry",
           "resize_factor"]

Source = Literal["url", "package"]
_Bad = Callable[[str], ModelError]  # a message → the error naming the file and entry

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("https://", "http://", "file://")
_RESIZE_RE = re.compile(r"^bicubic:([234])$")
_BAD_NAME = "'name' may only contain letters, digits and . _ + - (no '/' or ':')"


def resize_factor(stage: str) -> int | None:
    """N for a ``"bicubic:N"`` pipeline stage, else None (a model name)."""
    m = _RESIZE_RE.match(stage)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """What every entry has."""

    kind: ClassVar[str]
    """The TOML ``kind`` of this class (for messages and listings; branch on the class)."""
    name: str
    """Unique name used on the command line (``clipsr download NAME``, ``-m NAME``): letters,
    digits and ``. _ + -``; no ``/`` or ``:`` so that it never looks like a path or a CLIP spec."""
    description: str
    """One line for ``clipsr models``."""
    license: str
    """License of the weights (SPDX id or a short phrase)."""
    origin: str = field(default="", compare=False)
    """The registry file this entry came from (not a TOML key)."""

    @property
    def usable(self) -> bool:
        """Whether clipsr can run with it (see :attr:`ClipEntry.usable`)."""
        return True


@dataclass(frozen=True, kw_only=True)
class FileEntry(ModelEntry):
    """An entry with one weights file, verified by sha256."""

    file: str
    """File name (no directories); which endings each kind may name is
    :func:`clipsr_cli.hub.weightfiles.suffixes_of`."""
    sha256: str
    """Lower-case hex sha256 of the file; authoritative, checked after every download."""
    size: int | None = None
    """Size in bytes, checked on every use; optional (then the size seen at verification is
    remembered and checked), because some upstream sizes could not be verified."""
    urls: tuple[str, ...] = ()
    """Mirrors, tried in order (``https://``, ``http://`` or ``file://``); required for
    ``source = "url"``, forbidden for ``source = "package"``."""
    source: Source = "url"
    """``"url"``: downloaded into the cache; ``"package"``: shipped in ``clipsr_cli/weights/``."""

    _REQUIRED: ClassVar[tuple[str, ...]] = ("name", "kind", "description", "license", "file",
                                            "sha256")
    _STRINGS: ClassVar[tuple[str, ...]] = ("name", "kind", "description", "license", "file",
                                           "sha256", "source", "clip", "arch", "weights")

    @classmethod
    def parse(cls, raw: dict, bad: _Bad, origin: str) -> "FileEntry":
        """The entry of a table with a file: the checks every file entry shares, then those of
        its kind (:meth:`_own`)."""
        missing = [k for k in cls._REQUIRED if k not in raw]
        if missing:
            raise bad(f"missing keys {missing}")
        for key in cls._STRINGS:
            if key in raw and not isinstance(raw[key], str):
                raise bad(f"{key!r} must be a string")
        if not _NAME_RE.match(raw["name"]):
            raise bad(_BAD_NAME)
        kind, source = raw["kind"], raw.get("source", "url")
        sub = _FILE_KINDS.get(kind)
        if sub is None:
            raise bad(f"'kind' must be 'generator', 'clip', 'spandrel' or 'pipeline', not {kind!r}")
        if source not in ("url", "package"):
            raise bad(f"'source' must be 'url' or 'package', not {source!r}")
        file = raw["file"]
        if not file or file in (".", "..") or any(c in file for c in "/\\\0"):
            raise bad("'file' must be a plain file name, without directories or NUL bytes")
        if not _SHA_RE.match(raw["sha256"]):
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
        return sub(name=raw["name"], description=raw["description"], license=raw["license"],
                   file=file, sha256=raw["sha256"], size=size, urls=tuple(urls), source=source,
                   origin=origin, **sub._own(raw, bad))

    @classmethod
    def _own(cls, raw: dict, bad: _Bad) -> dict[str, Any]:
        """The fields only this kind has, checked (``bad`` for what is wrong)."""
        raise NotImplementedError

    @classmethod
    def _reads(cls, raw: dict) -> bool:
        """Whether this kind reads a file of ``raw``'s name (by its ending)."""
        return kind_reads(cls.kind, raw["file"])


@dataclass(frozen=True, kw_only=True)
class GeneratorEntry(FileEntry):
    """A clipsr checkpoint (``.safetensors``: clipsr never unpickles weights)."""

    kind: ClassVar[str] = "generator"
    scale: int
    """The upscaling factor (2, 4, 8 or 16)."""
    text_guided: bool
    """Whether the model takes a caption (then ``clip`` is required)."""
    clip: str | None = None
    """Text-guided generators: the CLIP backbone spec they need, ``ARCH:WEIGHTS``."""
    degradation_model: str | None = None
    """A registered generator of the same architecture trained on degraded inputs (JPEG, noise,
    blur); ``--degradation``/``--denoise`` run between the two weight sets."""

    @classmethod
    def _own(cls, raw: dict, bad: _Bad) -> dict[str, Any]:
        if not cls._reads(raw):
            raise bad("a generator file must be .safetensors (clipsr never unpickles weights)")
        scale, text_guided = raw.get("scale"), raw.get("text_guided")
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
                                    or partner == raw["name"]):
            raise bad("'degradation_model' must name another registered generator")
        return dict(scale=scale, text_guided=text_guided, clip=raw.get("clip"),
                    degradation_model=partner)


@dataclass(frozen=True, kw_only=True)
class SpandrelEntry(FileEntry):
    """A third-party SR checkpoint run through spandrel (Real-ESRGAN, SwinIR, …): image-only;
    a ``.pth``/``.pt``/``.ckpt`` file is read with ``weights_only``, never unpickled."""

    kind: ClassVar[str] = "spandrel"
    scale: int
    """The upscaling factor, 2 … 16."""

    @property
    def text_guided(self) -> bool:
        return False

    @classmethod
    def _own(cls, raw: dict, bad: _Bad) -> dict[str, Any]:
        _no_partner(raw, bad)
        if not cls._reads(raw):
            raise bad(f"a spandrel file must be {' or '.join(suffixes_of(cls.kind))}")
        scale = raw.get("scale")
        if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 16:
            raise bad("'scale' must be an integer from 2 to 16")
        if raw.get("text_guided"):
            raise bad("a spandrel model is image-only: 'text_guided' must be false or absent")
        for key in ("clip", "arch", "weights"):
            if key in raw:
                raise bad(f"{key!r} is not for spandrel entries")
        return dict(scale=scale)


@dataclass(frozen=True, kw_only=True)
class ClipEntry(FileEntry):
    """A CLIP backbone for open_clip (``.pt``: OpenAI's TorchScript archive, or safetensors)."""

    kind: ClassVar[str] = "clip"
    arch: str
    """The open_clip architecture name (``ViT-B-32``)."""
    weights: str
    """The weights tag this file provides (``openai``); ``ARCH:WEIGHTS`` then resolves to this
    entry."""

    @property
    def scale(self) -> None:
        return None  # no upscaling model

    @property
    def text_guided(self) -> None:
        return None

    @property
    def clip_spec(self) -> str:
        """``ARCH:WEIGHTS``."""
        return f"{self.arch}:{self.weights}"

    @property
    def usable(self) -> bool:
        """CLIP-SR needs a ViT, so a ResNet CLIP is not usable."""
        return not self.arch.upper().startswith("RN")

    @classmethod
    def _own(cls, raw: dict, bad: _Bad) -> dict[str, Any]:
        _no_partner(raw, bad)
        for key in ("scale", "text_guided", "clip"):
            if key in raw:
                raise bad(f"{key!r} is only for generator entries")
        for key in ("arch", "weights"):
            if not raw.get(key):
                raise bad(f"a CLIP entry needs {key!r}")
        if not cls._reads(raw):
            raise bad(f"a CLIP file must be {' or '.join(suffixes_of(cls.kind))} (.pt: OpenAI "
                      "TorchScript)")
        return dict(arch=raw["arch"], weights=raw["weights"])


def _no_partner(raw: dict, bad: _Bad) -> None:
    if "degradation_model" in raw:
        raise bad("'degradation_model' is only for generator entries")


@dataclass(frozen=True, kw_only=True)
class PipelineEntry(ModelEntry):
    """No file of its own: ``stages`` run one after the other (image-only)."""

    kind: ClassVar[str] = "pipeline"
    scale: int
    """2, 4, 8 or 16: what the stages' scales multiply to (checked when loaded)."""
    stages: tuple[str, ...]
    """What runs, in order: registered model names, or ``"bicubic:N"`` (a MATLAB-style bicubic
    ×N resize, N = 2, 3 or 4)."""

    _REQUIRED: ClassVar[tuple[str, ...]] = ("name", "kind", "description", "license", "scale",
                                            "stages")

    @property
    def text_guided(self) -> bool:
        return False

    @classmethod
    def parse(cls, raw: dict, bad: _Bad, origin: str) -> "PipelineEntry":
        missing = [k for k in cls._REQUIRED if k not in raw]
        if missing:
            raise bad(f"missing keys {missing}")
        for key in ("file", "sha256", "size", "urls", "source", "clip", "arch", "weights",
                    "degradation_model"):
            if key in raw:
                raise bad(f"{key!r} is not for pipeline entries (a pipeline has no file of its "
                          "own)")
        for key in ("name", "description", "license"):
            if not isinstance(raw[key], str):
                raise bad(f"{key!r} must be a string")
        if not _NAME_RE.match(raw["name"]):
            raise bad(_BAD_NAME)
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
        return cls(name=raw["name"], description=raw["description"], license=raw["license"],
                   scale=scale, stages=tuple(stages), origin=origin)


#: The registered models that upscale on their own (a pipeline's stages are these).
UPSCALERS = (GeneratorEntry, SpandrelEntry)
ENTRY_TYPES = (GeneratorEntry, SpandrelEntry, ClipEntry, PipelineEntry)
_FILE_KINDS = {c.kind: c for c in (GeneratorEntry, ClipEntry, SpandrelEntry)}
#: Every key a ``[[model]]`` table may have, whatever its kind.
TOML_KEYS = frozenset({"kind"} | {f.name for c in ENTRY_TYPES for f in fields(c)} - {"origin"})


def parse_entry(raw: Any, *, origin: str, index: int) -> ModelEntry:
    """The entry of one ``[[model]]`` table (``index``: its place in the file ``origin``), of
    the class its ``kind`` names; ``ModelError`` naming the file and entry on any problem."""
    where_ = f"{origin}: model entry #{index + 1}"
    if not isinstance(raw, dict):
        raise ModelError(f"{where_} must be a table ([[model]]); fix the registry file")
    name = raw.get("name")
    if isinstance(name, str):
        where_ = f"{origin}: model {name!r}"

    def bad(msg: str) -> ModelError:
        return ModelError(f"{where_}: {msg}; fix the registry file")

    unknown = sorted(set(raw) - TOML_KEYS)
    if unknown:
        raise bad(f"unknown keys {unknown} (allowed: {sorted(TOML_KEYS)})")
    if raw.get("kind") == "pipeline":
        return PipelineEntry.parse(raw, bad, origin)
    return FileEntry.parse(raw, bad, origin)
