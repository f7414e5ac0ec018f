"""The training configuration's schema: frozen section dataclasses, presets, and the error.

``[model]`` is the generator's hyper-parameters: its keys, types and defaults are the fields of
:class:`~clipsr_cli.model.config.ModelConfig`, less those set elsewhere
(:data:`MODEL_KEYS_ELSEWHERE`); a test keeps the two in step, so a new ``ModelConfig`` field
must become a ``[model]`` key (and ``--set model.KEY=VALUE``) or be listed as set elsewhere. Reading, writing and merging are in
:mod:`clipsr_cli.train.settings` and :mod:`clipsr_cli.train.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from clipsr_cli.errors import InputError, UsageError
from clipsr_cli.model.config import ModelConfig

PRESETS = ("psnr", "gan")
DEFAULT_CLIP = "ViT-B-32:openai"


class ConfigError(InputError):
    """A training configuration (file or flags) is invalid; ``key``: the (section, key) at fault."""

    def __init__(self, message: str, *, key: tuple[str, str] | None = None):
        super().__init__(message)
        self.key = key


class ConfigUsageError(ConfigError, UsageError):
    """A setting given on the command line (a flag, a ``sets`` item) can never work (exit 2)."""

    def __init__(self, message: str, *, key: tuple[str, str] | None = None, param: str | None = None):
        super().__init__(message, key=key)
        self.param = param or (key[1] if key else None)


#: ``ModelConfig`` fields that are not ``[model]`` keys, and where each comes from.
MODEL_KEYS_ELSEWHERE = {"scale": "data.scale", "clip": "run.clip", "text_dim": "the CLIP",
                        "clip_width": "the CLIP", "clip_image_size": "the CLIP",
                        "clip_view": "data.patch_size"}  # a training patch is one CLIP window


@dataclass(frozen=True)
class ModelSection:
    """Generator size: the fields of ``ModelConfig`` (same names, order, types, defaults) except
    scale ([data]), the CLIP ([run]) and the CLIP's dimensions (:data:`MODEL_KEYS_ELSEWHERE`).

    Written out so type checkers see it; ``tests/test_train_config.py`` keeps it in step with
    ``ModelConfig``: a new ``ModelConfig`` field is a new field here (or an entry of
    :data:`MODEL_KEYS_ELSEWHERE`), else that test fails.
    """

    encoder_widths: tuple[int, ...] = (64, 96, 128)
    """Channels of each pyramid level; level 0 is at LR resolution, level i at LR/2^i."""
    stage_blocks: int = 1
    """TIFBlocks in each coarse refinement stage (levels >= 1)."""
    body_blocks: int = 4
    """TIFBlocks at LR resolution (the last refinement stage)."""
    up_widths: tuple[int, ...] = (32, 16, 16, 16)
    """Channels after each x2 upsampling stage; the first log2(scale) entries are used."""
    prompt_tokens: int = 8
    """K: prompt tokens predicted from the text (capped at the CLIP's depth)."""
    fu_fusion: bool = True
    """Text path 1: fuse CLIP's text-aware visual features F_U into the generator."""
    fu_film: bool = False
    """Inside F_U: also modulate the read-out directly by the text (off: the paper's route)."""
    tif_text: bool = True
    """Text path 2: the text sets the gamma, beta of every TIFBlock."""
    negative_slope: float = 0.2
    """LeakyReLU slope."""


def model_section(mcfg: ModelConfig) -> dict[str, Any]:
    """The ``[model]`` settings of a ``ModelConfig`` (e.g. an ``init`` checkpoint's)."""
    return {f.name: getattr(mcfg, f.name) for f in dataclasses.fields(ModelSection)}


def model_config(cfg: "TrainConfig", clip=None) -> ModelConfig:
    """The generator's ``ModelConfig``: ``[model]``, the scale, ``clip_view`` = the LR patch side,
    and the CLIP's dimensions (``prompt_tokens`` capped at the CLIP's depth)."""
    kw = model_section(cfg.model)
    kw["clip_view"] = cfg.data.patch_size  # CLIP sees a patch as it sees images (model/view.py)
    if clip is None:
        return ModelConfig(**kw, scale=cfg.data.scale)
    kw["prompt_tokens"] = min(kw["prompt_tokens"], clip.visual_layers)
    return ModelConfig(**kw, scale=cfg.data.scale, clip=str(clip.spec), text_dim=clip.text_dim,
                       clip_width=clip.visual_width, clip_image_size=clip.image_size)


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
    degradation: Literal["bicubic", "extra", "practical"] = "bicubic"
    """LR = antialiased bicubic downscale quantised to 8 bits; ``extra`` adds mild blur/noise/JPEG
    (DegradeOptions.extra); ``practical`` the real-photo mixture of the degradation-aware built-in
    (data.degrade.PracticalMix: blur, noise up to 15, JPEG 30-95, random order, 10% clean)."""
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
    perceptual: Literal["vgg16", "clip", "none", "auto"] = "none"
    """Perceptual features: vgg16 (the paper's; torchvision's ImageNet weights must already be in
    the torch hub cache, else the run stops at start-up), clip (visual tokens of the training
    CLIP, or of ``d_clip`` for an image-only generator; a start-up warning says so) or none.
    auto (older configs): vgg16 if cached, else clip, with the warning."""
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
    d_layers: tuple[int, ...] = (2, 5, 9)
    """CLIP ViT blocks, counted from 1, after which the discriminator reads the patch tokens
    (the authors' ``[1, 4, 8]`` counted from 0; mapped proportionally onto shallower CLIPs)."""
    d_width: int = 512
    """Channels of the discriminator's feature blocks."""
    d_clip: str = DEFAULT_CLIP
    """CLIP of the discriminator and of the clip perceptual loss when the generator is
    image-only (else the generator's)."""


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
    """Autocast dtype of the generator (auto: inference's rule, bf16 on CUDA if supported, else
    fp16; on the CPU bf16 only where oneDNN has native bf16, else fp32)."""
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
        "loss": {"perceptual": "clip", "adversarial": True},
        "data": {"caption_dropout": 0.1},
    },
}


#: settings that shape the saved state: they may not change on resume
RESUME_FIXED = (("data", "scale"), ("run", "clip"), ("loss", "adversarial"), ("loss", "d_layers"),
                ("loss", "d_width"), ("loss", "d_clip"), ("data", "batch_size"), ("run", "seed"))


def incompatibilities(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """What differs between a run's saved config and the one it is resumed with, where it may not."""
    out = ["[model]"] if saved.model != new.model else []
    for sec, key in RESUME_FIXED:
        a, b = getattr(getattr(saved, sec), key), getattr(getattr(new, sec), key)
        if a != b:
            out.append(f"{sec}.{key} ({a!r} -> {b!r})")
    return out


__all__ = ["incompatibilities", "TrainConfig", "ModelSection", "DataSection", "OptimSection", "LossSection",
           "RunSection", "ConfigError", "ConfigUsageError", "SECTIONS", "PRESETS", "PRESET_OVERRIDES", "DEFAULT_CLIP",
           "MODEL_KEYS_ELSEWHERE", "model_section", "model_config"]
