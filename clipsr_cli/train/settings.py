"""Training settings as TOML: type-checked reading, presets, and writing.

A file is read once into :class:`FileSettings` (its preset and its section tables, relative paths
already anchored at the file's folder); :func:`apply_overrides` lays tables over a config.
"""

from __future__ import annotations

import dataclasses
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from clipsr_cli.train.schema import PRESET_OVERRIDES, PRESETS, SECTIONS, ConfigError, TrainConfig

#: settings that hold paths (relative ones in a file are relative to the file)
PATH_KEYS = (("data", "path"), ("data", "val"), ("run", "out"), ("run", "init"))


# -- coercion --------------------------------------------------------------------------------------
def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = get_origin(typ)
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        args = get_args(typ)
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, item, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, args))
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {typ}")  # pragma: no cover


def _apply(section, values: dict[str, Any], *, source: str, name: str):
    cls = type(section)
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [{name}]; known: {sorted(hints)}",
                          key=(name, unknown[0]))
    changes = {}
    for k, v in values.items():
        try:
            changes[k] = _coerce(v, hints[k], f"{source}: [{name}] {k}")
        except ConfigError as e:
            raise ConfigError(str(e), key=(name, k)) from None
    return dataclasses.replace(section, **changes)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, dict[str, Any]], *, source: str) -> TrainConfig:
    """Apply ``{"section": {"key": value}}`` on top of ``cfg`` (type-checked)."""
    changes = {}
    for name, values in overrides.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]; known: {sorted(SECTIONS)}",
                              key=(name, ""))
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table", key=(name, ""))
        changes[name] = _apply(changes.get(name, getattr(cfg, name)), values, source=source, name=name)
    return dataclasses.replace(cfg, **changes)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None


def split_file(data: dict[str, Any], *, source: str) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Split a parsed TOML file into (preset, section overrides); unknown top-level keys fail."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"{source}: preset must be one of {list(PRESETS)}, got {preset!r}")
    for k, v in data.items():
        if k not in SECTIONS:
            raise ConfigError(f"{source}: unknown top-level key {k!r}; known: preset, "
                              f"{', '.join('[' + s + ']' for s in SECTIONS)}")
    return preset, data


def preset_config(preset: str) -> TrainConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; use one of {list(PRESETS)}")
    return apply_overrides(TrainConfig(preset=preset), PRESET_OVERRIDES[preset],
                           source=f"preset {preset}")


@dataclass(frozen=True)
class FileSettings:
    """One ``--config`` file, read once."""

    source: str
    preset: str | None
    sections: dict[str, dict[str, Any]]


def read_file(path: str | Path) -> FileSettings:
    """Read a TOML config file (relative paths in it become relative to its folder)."""
    preset, over = split_file(read_toml(path), source=str(path))
    over = anchor_paths(over, Path(path).expanduser().resolve().parent)
    return FileSettings(str(path), preset, over)


def anchor_paths(over: dict[str, dict[str, Any]], base: Path) -> dict[str, dict[str, Any]]:
    """Relative paths written in a config file are relative to that file's folder."""
    over = {k: dict(v) if isinstance(v, dict) else v for k, v in over.items()}
    for sec, key in PATH_KEYS:
        v = over.get(sec, {}).get(key) if isinstance(over.get(sec), dict) else None
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
            over[sec][key] = os.path.normpath(str(base / Path(v).expanduser()))
    return over


# -- writing ---------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)  # pragma: no cover


def to_toml(cfg: TrainConfig) -> str:
    """The resolved configuration as TOML (re-readable with ``--config``)."""
    lines = ["# resolved clipsr training configuration", f"preset = {_toml_value(cfg.preset)}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(getattr(cfg, name)):
            lines.append(f"{f.name} = {_toml_value(getattr(getattr(cfg, name), f.name))}")
    return "\n".join(lines) + "\n"


def from_toml_text(text: str, *, source: str) -> TrainConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML (nested too deeply)") from None
    preset, over = split_file(data, source=source)
    return apply_overrides(TrainConfig(preset=preset or "psnr"), over, source=source)


__all__ = ["apply_overrides", "read_toml", "split_file", "preset_config", "FileSettings", "read_file",
           "anchor_paths", "to_toml", "from_toml_text", "PATH_KEYS", "tomllib"]
