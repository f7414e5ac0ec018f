"""Training configuration: frozen dataclasses read from TOML, with presets and flag overrides.

Precedence (lowest first): built-in defaults < preset (``psnr`` / ``gan``) < the TOML file given
with ``--config`` < command-line flags. On ``--resume`` the run's saved ``config.toml`` replaces
the defaults and the preset; model-shaping settings may then not change.

TOML layout (every key optional; unknown keys are rejected with the file and section named)::

    preset = "psnr"            # or "gan"
    [model]  ...  [data]  ...  [optim]  ...  [loss]  ...  [run]  ...

The fields of each section are the dataclasses below, one comment per field.
"""

from __future__ import annotations

import dataclasses
import math
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from clipsr_cli.model.config import SCALES
from clipsr_cli.errors import InputError

PRESETS = ("psnr", "gan")
DEFAULT_CLIP = "ViT-B-32:openai"


class ConfigError(InputError):
    """A training configuration (file or flags) is invalid."""


@dataclass(frozen=True)
class ModelSection:
    """Generator size (see ``clipsr_cli.model.config.ModelConfig``). scale and CLIP come from [data]/[run]."""

    encoder_widths: tuple[int, ...] = (64, 96, 128)
    """Channels of each LR pyramid level (level i at LR/2^i)."""
    stage_blocks: int = 1
    """TIFBlocks in each coarse refinement stage."""
    body_blocks: int = 4
    """TIFBlocks at LR resolution."""
    up_widths: tuple[int, ...] = (32, 16, 16, 16)
    """Channels after each x2 upsampling stage (the first log2(scale) are used)."""
    prompt_tokens: int = 8
    """Prompt tokens injected into CLIP's visual transformer (capped at its depth)."""
    fu_fusion: bool = True
    """Fuse CLIP's text-aware visual features F_U into the generator."""


@dataclass(frozen=True)
class DataSection:
    """What to train on and how training pairs are made."""

    path: str = ""
    """Dataset root (a folder of images, a manifest, or a birds/celeba/coco layout)."""
    format: str = "auto"
    """Dataset layout: auto, folder, manifest, birds, celeba or coco."""
    split: str = "train"
    """Split of ``path`` to train on (layouts with splits)."""
    val: str = ""
    """Validation dataset (empty: no validation)."""
    val_format: str = "auto"
    """Layout of ``val``."""
    val_split: str = "test"
    """Split of ``val`` (layouts with splits; plain folders ignore it)."""
    val_images: int = 8
    """Validate on at most this many images of ``val``."""
    val_max_size: int = 512
    """Centre-crop validation HR images to at most this side (keeps validation fast)."""
    scale: int = 4
    """Upscaling factor: 2, 4, 8 or 16."""
    patch_size: int = 48
    """Side of the LR training patch (the HR crop is patch_size x scale)."""
    batch_size: int = 16
    """Patches per optimisation step (per process under torchrun)."""
    in_memory: Literal["auto", "yes", "no"] = "auto"
    """Decode every image once into (device) memory; auto: yes up to ``in_memory_max_images``."""
    in_memory_max_images: int = 10000
    """Above this many images ``auto`` streams from disk with DataLoader workers."""
    workers: int = 4
    """DataLoader worker processes for streamed datasets (0: load in the main process); also the
    decoding threads of in-memory datasets."""
    resize_shorter: int = 0
    """Resize each HR image so its shorter side is this (0: keep; CLIP-SR used 304 for 256 crops)."""
    hflip: bool = True
    """Random horizontal flips (turn off if captions say left/right)."""
    vflip: bool = False
    """Random vertical flips (change what captions describe: off by default)."""
    rot90: bool = False
    """Random 90-degree rotations (change what captions describe: off by default)."""
    caption_dropout: float = 0.1
    """Probability of training a sample without its caption (so the model works without text)."""
    degradation: Literal["bicubic", "extra"] = "bicubic"
    """LR = antialiased bicubic downscale quantised to 8 bits; ``extra`` adds blur/noise/JPEG-like
    degradations (DegradeOptions defaults)."""
    max_bad_fraction: float = 0.05
    """Stop with an error when more than this fraction of the images cannot be read."""


@dataclass(frozen=True)
class OptimSection:
    """Optimisers, schedule and EMA."""

    lr: float = 2e-4
    """Peak learning rate of the generator (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the generator."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas of the generator."""
    warmup_steps: int = 200
    """Linear warm-up steps (capped at a tenth of the run)."""
    min_lr_ratio: float = 0.01
    """The cosine decay ends at lr x this."""
    grad_clip: float = 1.0
    """Clip the generator's gradient norm to this (0: off)."""
    ema_decay: float = 0.999
    """EMA decay of the exported generator weights (with a warm-up: min(decay, (1+n)/(10+n)))."""
    d_lr: float = 4e-4
    """Discriminator learning rate (gan preset)."""
    d_betas: tuple[float, float] = (0.0, 0.9)
    """Discriminator Adam betas (gan preset)."""
    anneal_to_time_limit: bool = True
    """With a time limit, finish the cosine decay by the time limit or the last step, whichever
    comes first (makes time-limited runs end annealed; not bit-reproducible)."""


@dataclass(frozen=True)
class LossSection:
    """Loss terms and weights."""

    pixel: Literal["l1", "charbonnier"] = "l1"
    """Reconstruction loss."""
    pixel_weight: float = 1.0
    """Weight of the reconstruction loss."""
    perceptual: Literal["auto", "vgg16", "clip", "none"] = "none"
    """Perceptual network: vgg16 (torchvision weights already in the torch hub cache), clip (the
    training CLIP's visual tokens), auto (vgg16 if cached, else clip, else none)."""
    perceptual_weight: float = 1.0
    """Weight of the perceptual loss."""
    adversarial: bool = False
    """Train with the CLIP-based text-conditional discriminator (gan preset)."""
    adversarial_weight: float = 0.01
    """lambda of the generator's adversarial bracket 0.01 * (-D(fake,t) - clip_weight * cos)."""
    clip_weight: float = 4.0
    """Weight of the CLIP text-image similarity inside the adversarial bracket."""
    gp_weight: float = 2.0
    """MA-GP weight: gp_weight * mean(||grad D(real, t)||^gp_power)."""
    gp_power: float = 6.0
    """MA-GP exponent."""
    d_layers: tuple[int, ...] = (1, 4, 8)
    """CLIP ViT blocks whose patch tokens the discriminator reads (clamped to CLIP's depth)."""
    d_width: int = 512
    """Channels of the discriminator's feature blocks."""
    d_clip: str = DEFAULT_CLIP
    """CLIP of the discriminator when the generator is image-only (else the generator's)."""


@dataclass(frozen=True)
class RunSection:
    """Where, how long, and on what."""

    out: str = ""
    """Run directory: config.toml, metrics.jsonl, checkpoint.pt, model.safetensors."""
    steps: int = 20000
    """Optimisation steps."""
    seed: int = 0
    """Seed of initialisation and sampling."""
    clip: str = DEFAULT_CLIP
    """CLIP of the generator: none (image-only), ARCH, or ARCH:WEIGHTS."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N (torchrun picks cuda:LOCAL_RANK)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype of the generator (auto: bf16 on CUDA if supported and on CPU, else fp16)."""
    channels_last: bool = True
    """channels_last memory format for the generator (faster convs with bf16)."""
    log_every: int = 50
    """Log the training losses every N steps."""
    val_every: int = 1000
    """Validate the EMA model every N steps (and at the end)."""
    checkpoint_every: int = 1000
    """Write the resume checkpoint and the EMA export every N steps (and on exit)."""
    time_limit: float = 0.0
    """Stop cleanly (checkpoint + export) after this many seconds of training (0: none); counts
    across resumes, like ``steps``."""
    init: str = ""
    """Start the generator from this clipsr checkpoint (its architecture is used)."""
    compile: bool = False
    """torch.compile the generator (CUDA)."""


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "psnr"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)

    @property
    def text_conditioned(self) -> bool:
        return self.run.clip.strip().lower() != "none"

    def replace(self, **sections: Any) -> "TrainConfig":
        return dataclasses.replace(self, **sections)


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
            "loss": LossSection, "run": RunSection}

PRESET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "psnr": {},
    "gan": {
        "optim": {"lr": 1e-4, "betas": (0.0, 0.9), "warmup_steps": 0, "min_lr_ratio": 1.0,
                  "weight_decay": 0.0},
        "loss": {"perceptual": "auto", "adversarial": True},
        "data": {"caption_dropout": 0.1},
    },
}


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
        raise ConfigError(f"{source}: unknown key(s) {unknown} in [{name}]; known: {sorted(hints)}")
    changes = {k: _coerce(v, hints[k], f"{source}: [{name}] {k}") for k, v in values.items()}
    return dataclasses.replace(section, **changes)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, dict[str, Any]], *, source: str) -> TrainConfig:
    """Apply ``{"section": {"key": value}}`` on top of ``cfg`` (type-checked)."""
    changes = {}
    for name, values in overrides.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]; known: {sorted(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
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


def resolve_config(*, file: str | Path | None = None, preset: str | None = None,
                   flags: dict[str, dict[str, Any]] | None = None,
                   base: TrainConfig | None = None) -> TrainConfig:
    """Build a ``TrainConfig``: (base or preset defaults) < file < flags, then validate."""
    file_preset, file_over = (None, {})
    if file is not None:
        file_preset, file_over = split_file(read_toml(file), source=str(file))
    if base is None:
        cfg = preset_config(preset or file_preset or "psnr")
    else:
        cfg = base
        if preset and preset != base.preset:
            raise ConfigError(f"cannot switch preset from {base.preset!r} to {preset!r} on resume; "
                              "start a new run with --init instead")
    if file is not None:
        file_over = _anchor_paths(file_over, Path(file).expanduser().resolve().parent)
    cfg = apply_overrides(cfg, file_over, source=str(file))
    cfg = apply_overrides(cfg, {k: {kk: vv for kk, vv in v.items() if vv is not None}
                                for k, v in (flags or {}).items()}, source="command line")
    cfg = _absolute_paths(cfg)
    validate(cfg)
    return cfg


_PATH_KEYS = (("data", "path"), ("data", "val"), ("run", "out"), ("run", "init"))


def _anchor_paths(over: dict[str, dict[str, Any]], base: Path) -> dict[str, dict[str, Any]]:
    """Relative paths written in a config file are relative to that file's folder."""
    over = {k: dict(v) if isinstance(v, dict) else v for k, v in over.items()}
    for sec, key in _PATH_KEYS:
        v = over.get(sec, {}).get(key) if isinstance(over.get(sec), dict) else None
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
            over[sec][key] = os.path.normpath(str(base / Path(v).expanduser()))
    return over


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Store absolute paths (flags are relative to the working directory), so that the saved
    config.toml resumes from anywhere."""
    changes: dict[str, dict[str, Any]] = {}
    for sec, key in _PATH_KEYS:
        v = getattr(getattr(cfg, sec), key)
        if v:
            a = str(Path(v).expanduser().absolute())
            if a != v:
                changes.setdefault(sec, {})[key] = a
    return apply_overrides(cfg, changes, source="paths") if changes else cfg


def validate(cfg: TrainConfig) -> None:
    d, o, r, l, m = cfg.data, cfg.optim, cfg.run, cfg.loss, cfg.model

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    if d.scale not in SCALES:
        bad(f"scale must be one of {list(SCALES)}, got {d.scale}")
    mult = 2 ** (len(m.encoder_widths) - 1)
    if d.patch_size <= 0 or d.patch_size % mult:
        bad(f"patch size {d.patch_size} must be a positive multiple of {mult} "
            f"(the model has {len(m.encoder_widths)} pyramid levels)")
    if d.batch_size <= 0:
        bad("batch size must be positive")
    if not 0 <= d.caption_dropout <= 1:
        bad("caption_dropout must be in [0, 1]")
    if not 0 <= d.max_bad_fraction <= 1:
        bad("max_bad_fraction must be in [0, 1]")
    if d.workers < 0:
        bad("workers must be >= 0")
    if r.steps <= 0:
        bad("steps must be positive")
    if r.time_limit < 0:
        bad("time limit must be >= 0")
    if min(r.log_every, r.val_every, r.checkpoint_every) <= 0:
        bad("log_every, val_every and checkpoint_every must be positive")
    if not (o.lr > 0 and math.isfinite(o.lr)) or not (o.d_lr > 0):
        bad("learning rates must be positive")
    if not 0 <= o.ema_decay < 1:
        bad("ema_decay must be in [0, 1)")
    if not 0 < o.min_lr_ratio <= 1:
        bad("min_lr_ratio must be in (0, 1]")
    if len(m.up_widths) < {2: 1, 4: 2, 8: 3, 16: 4}.get(d.scale, 0):
        bad(f"model.up_widths needs log2(scale) = {int(math.log2(d.scale))} entries")
    if not m.encoder_widths or min(m.encoder_widths + m.up_widths) <= 0:
        bad("model widths must be positive")
    if l.adversarial and not l.d_layers:
        bad("loss.d_layers must not be empty")


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--set section.key=VALUE`` items (VALUE in TOML syntax; bare words are strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise ConfigError(f"--set {item!r}: use SECTION.KEY=VALUE, e.g. model.body_blocks=8")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(sec, {})[name] = value
    return out


def init_overrides(model_cfg) -> dict[str, dict[str, Any]]:
    """Settings taken from an ``--init`` checkpoint's ``ModelConfig``: architecture, scale, CLIP."""
    return {"model": {"encoder_widths": tuple(model_cfg.encoder_widths),
                      "stage_blocks": model_cfg.stage_blocks, "body_blocks": model_cfg.body_blocks,
                      "up_widths": tuple(model_cfg.up_widths), "prompt_tokens": model_cfg.prompt_tokens,
                      "fu_fusion": model_cfg.fu_fusion},
            "data": {"scale": model_cfg.scale},
            "run": {"clip": model_cfg.clip or "none"}}


def config_from_cli(*, config: str | None, preset: str | None, resume: bool,
                    flags: dict[str, dict[str, Any]], sets: list[str] | None = None) -> TrainConfig:
    """What ``clipsr train`` runs: base (preset, or the run's saved config on --resume, plus the
    architecture of an --init checkpoint) < --config file < --set items < flags."""
    flags = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in flags.items()}
    over = parse_set(sets)
    for sec, vals in flags.items():
        over.setdefault(sec, {}).update(vals)
    base = None
    if resume:
        out = over.get("run", {}).get("out")
        if not out:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        from clipsr_cli.train.trainer import saved_config

        base = saved_config(Path(out).expanduser())
    else:
        init = over.get("run", {}).get("init")
        if init is None and config is not None:
            file_over = _anchor_paths(split_file(read_toml(config), source=str(config))[1],
                                      Path(config).expanduser().resolve().parent)
            init = file_over.get("run", {}).get("init")
        if init:
            from clipsr_cli.model.checkpoint import read_checkpoint

            mcfg, _, _ = read_checkpoint(init)
            file_preset = split_file(read_toml(config), source=str(config))[0] if config else None
            base = apply_overrides(preset_config(preset or file_preset or "psnr"),
                                   init_overrides(mcfg), source=f"--init {init}")
    return resolve_config(file=config, preset=preset, flags=over, base=base)


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
    preset, over = split_file(data, source=source)
    return apply_overrides(TrainConfig(preset=preset or "psnr"), over, source=source)


# settings that shape the saved state: they may not change on --resume
def incompatibilities(saved: TrainConfig, new: TrainConfig) -> list[str]:
    out = []
    if saved.model != new.model:
        out.append("[model]")
    for sec, key in (("data", "scale"), ("run", "clip"), ("loss", "adversarial"),
                     ("loss", "d_layers"), ("loss", "d_width"), ("loss", "d_clip"),
                     ("data", "batch_size"), ("run", "seed")):
        a, b = getattr(getattr(saved, sec), key), getattr(getattr(new, sec), key)
        if a != b:
            out.append(f"{sec}.{key} ({a!r} -> {b!r})")
    return out


__all__ = ["TrainConfig", "ModelSection", "DataSection", "OptimSection", "LossSection",
           "RunSection", "ConfigError", "resolve_config", "to_toml", "from_toml_text",
           "incompatibilities", "config_from_cli", "parse_set", "PRESETS", "DEFAULT_CLIP"]
