"""Training configuration: frozen dataclasses read from TOML, with presets and overrides.

Precedence (lowest first): built-in defaults < preset (``psnr`` / ``gan``) < the TOML file
(``config``) < ``sets`` items (``SECTION.KEY=VALUE``) < flags. With ``resume=True`` the run's saved
``config.toml`` replaces the defaults and the preset; model-shaping settings may then not change.

TOML layout (every key optional; unknown keys are rejected with the file and section named)::

    preset = "psnr"            # or "gan"
    [model]  ...  [data]  ...  [optim]  ...  [loss]  ...  [run]  ...

The sections are the dataclasses of :mod:`clipsr_cli.train.schema` (``[model]`` = the fields of
``ModelConfig``); reading and writing TOML is :mod:`clipsr_cli.train.settings`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clipsr_cli.data.datasets import FORMATS
from clipsr_cli.errors import UsageError
from clipsr_cli.model.config import SCALES
from clipsr_cli.train.schema import (DEFAULT_CLIP, PRESETS, SECTIONS, ConfigError,
                                     ConfigUsageError, DataSection,
                                     LossSection, ModelSection, OptimSection, RunSection,
                                     TrainConfig, incompatibilities, model_section)
from clipsr_cli.train.settings import (PATH_KEYS, FileSettings, apply_overrides, from_toml_text,
                                       preset_config, read_file, to_toml, tomllib)


def resolve_config(*, file: str | Path | FileSettings | None = None, preset: str | None = None,
                   flags: dict[str, dict[str, Any]] | None = None,
                   base: TrainConfig | None = None) -> TrainConfig:
    """Build a ``TrainConfig``: (base or preset defaults) < file < flags, then validate."""
    fs = read_file(file) if file is not None and not isinstance(file, FileSettings) else file
    if preset is not None and preset not in PRESETS:
        raise ConfigUsageError(f"unknown preset {preset!r}; use one of {list(PRESETS)}",
                               param="preset")
    if base is None:
        cfg = preset_config(preset or (fs.preset if fs else None) or "psnr")
    else:
        cfg = base
        if preset and preset != base.preset:
            raise ConfigUsageError(f"cannot switch preset from {base.preset!r} to {preset!r} on "
                                   "resume; start a new run with `init` instead", param="preset")
    if fs is not None:
        cfg = apply_overrides(cfg, fs.sections, source=fs.source)
    given = _given(flags or {})
    try:
        cfg = apply_overrides(cfg, given, source="command line")
    except ConfigError as e:  # a flag or a `sets` item: a usage error
        raise ConfigUsageError(str(e), key=e.key) from None
    cfg = _absolute_paths(cfg)
    try:
        validate(cfg)
    except ConfigError as e:
        if e.key is not None and e.key[1] in given.get(e.key[0], {}):
            raise ConfigUsageError(str(e), key=e.key) from None
        raise
    return cfg


def _given(flags: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Flags without the ones not given (None)."""
    return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in flags.items()}


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Store absolute paths (flags are relative to the working directory), so that the saved
    config.toml resumes from anywhere."""
    changes: dict[str, dict[str, Any]] = {}
    for sec, key in PATH_KEYS:
        v = getattr(getattr(cfg, sec), key)
        if v:
            a = str(Path(v).expanduser().absolute())
            if a != v:
                changes.setdefault(sec, {})[key] = a
    return apply_overrides(cfg, changes, source="paths") if changes else cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` (its ``key``: the setting at fault) for a value that cannot work."""
    d, o, r, l, m = cfg.data, cfg.optim, cfg.run, cfg.loss, cfg.model

    def bad(msg: str, sec: str, key: str) -> None:
        raise ConfigError(msg, key=(sec, key))

    if d.scale not in SCALES:
        bad(f"`scale` must be one of {list(SCALES)}, got {d.scale}", "data", "scale")
    mult = 2 ** (len(m.encoder_widths) - 1)
    if d.patch_size <= 0 or d.patch_size % mult:
        bad(f"`patch_size={d.patch_size}` must be a positive multiple of {mult} "
            f"(the model has {len(m.encoder_widths)} pyramid levels)", "data", "patch_size")
    for key in ("format", "val_format"):
        if getattr(d, key).lower() not in FORMATS + ("cub",):
            bad(f"unknown dataset format {getattr(d, key)!r}; use one of {', '.join(FORMATS)}",
                "data", key)
    if d.batch_size <= 0:
        bad("`batch_size` must be positive", "data", "batch_size")
    if not 0 <= d.caption_dropout <= 1:
        bad("data.caption_dropout must be in [0, 1]", "data", "caption_dropout")
    if not 0 <= d.max_bad_fraction <= 1:
        bad("data.max_bad_fraction must be in [0, 1]", "data", "max_bad_fraction")
    if d.workers < 0:
        bad("`workers` must be >= 0", "data", "workers")
    if r.steps <= 0:
        bad("`steps` must be positive", "run", "steps")
    if r.time_limit < 0:
        bad("`time_limit` must be >= 0", "run", "time_limit")
    for key in ("log_every", "val_every", "checkpoint_every"):
        if getattr(r, key) <= 0:
            bad("`log_every`, `val_every` and `checkpoint_every` must be positive", "run", key)
    if not (o.lr > 0 and math.isfinite(o.lr)):
        bad("learning rates (`lr`, optim.d_lr) must be positive", "optim", "lr")
    if not (o.d_lr > 0 and math.isfinite(o.d_lr)):
        bad("learning rates (`lr`, optim.d_lr) must be positive", "optim", "d_lr")
    if not 0 <= o.ema_decay < 1:
        bad("optim.ema_decay must be in [0, 1)", "optim", "ema_decay")
    if not 0 < o.min_lr_ratio <= 1:
        bad("optim.min_lr_ratio must be in (0, 1]", "optim", "min_lr_ratio")
    if len(m.up_widths) < {2: 1, 4: 2, 8: 3, 16: 4}.get(d.scale, 0):
        bad(f"model.up_widths needs log2(scale) = {int(math.log2(d.scale))} entries",
            "model", "up_widths")
    if not m.encoder_widths or min(m.encoder_widths + m.up_widths) <= 0:
        bad("model widths must be positive", "model", "encoder_widths")
    if l.adversarial and not l.d_layers:
        bad("loss.d_layers must not be empty", "loss", "d_layers")
    if l.d_layers and min(l.d_layers) < 1:
        bad("loss.d_layers counts ViT blocks from 1 (the authors' [1, 4, 8] is [2, 5, 9])",
            "loss", "d_layers")


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``SECTION.KEY=VALUE`` items (VALUE in TOML syntax; bare words are strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise UsageError(f"`sets` item {item!r}: use SECTION.KEY=VALUE, e.g. "
                             "model.body_blocks=8", param="sets")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(sec, {})[name] = value
    return out


def init_overrides(model_cfg) -> dict[str, dict[str, Any]]:
    """Settings taken from an ``init`` checkpoint's ``ModelConfig``: architecture, scale, CLIP."""
    return {"model": model_section(model_cfg), "data": {"scale": model_cfg.scale},
            "run": {"clip": model_cfg.clip or "none"}}


def config_from_cli(*, config: str | None, preset: str | None, resume: bool,
                    flags: dict[str, dict[str, Any]], sets: list[str] | None = None) -> TrainConfig:
    """What ``clipsr train`` runs: base (preset, or the run's saved config with ``resume=True``,
    plus the architecture of an ``init`` checkpoint) < ``config`` file < ``sets`` items < flags.
    The file is read once."""
    over = parse_set(sets)
    for sec, vals in _given(flags).items():
        over.setdefault(sec, {}).update(vals)
    fs = read_file(config) if config is not None else None
    base = None
    if resume:
        out = over.get("run", {}).get("out")
        if not out:
            raise UsageError("`resume=True` needs `out='RUN_DIR'` (the run to continue)", param="out")
        from clipsr_cli.train.rundir import saved_config  # torch: not before flags are checked

        base = saved_config(Path(out).expanduser())
    else:
        init = over.get("run", {}).get("init")
        file_run = fs.sections.get("run") if fs is not None else None
        if init is None and isinstance(file_run, dict):
            init = file_run.get("init")
        if init:
            from clipsr_cli.model.checkpoint import read_checkpoint

            mcfg, _, _ = read_checkpoint(init)
            base = apply_overrides(preset_config(preset or (fs.preset if fs else None) or "psnr"),
                                   init_overrides(mcfg), source=f"init checkpoint {init}")
    return resolve_config(file=fs, preset=preset, flags=over, base=base)


__all__ = ["TrainConfig", "ModelSection", "DataSection", "OptimSection", "LossSection",
           "RunSection", "ConfigError", "ConfigUsageError", "resolve_config", "to_toml", "from_toml_text",
           "incompatibilities", "config_from_cli", "parse_set", "validate", "PRESETS",
           "DEFAULT_CLIP", "SECTIONS"]
