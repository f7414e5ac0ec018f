"""Building a run: device and precision, the generator (+ EMA, optimiser, text cache), the losses
(+ discriminator), and the data (training sampler, validation images)."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from clipsr_cli.errors import DataError, DeviceError, TrainingError
from clipsr_cli.infer.devices import resolve_device as engine_device, resolve_precision
from clipsr_cli.model.checkpoint import read_checkpoint
from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.network import build_model
from clipsr_cli.train import ddp
from clipsr_cli.train.data import BadImages, MemorySampler, StreamSampler, decode_all, load_val
from clipsr_cli.train.discriminator import ClipDiscriminator
from clipsr_cli.train.losses import build_perceptual, pixel_loss
from clipsr_cli.train.schema import TrainConfig, model_config
from clipsr_cli.train.steps import EMA, Generator, GeneratorStep, Losses, TextCache, describe

Say = Callable[[str], None]


# -- device / precision ---------------------------------------------------------------------------
def resolve_device(spec: str, dist: ddp.DistInfo) -> torch.device:
    """The engine's device resolution, plus what training needs on top: an explicit CUDA index
    (``cuda`` → the current device; under torchrun, ``cuda:LOCAL_RANK``) and no MPS."""
    dev = engine_device(spec)
    if dev.type == "cuda":
        index = dist.local_rank if dist.enabled else (
            dev.index if dev.index is not None else torch.cuda.current_device())
        return torch.device("cuda", index)
    if dev.type != "cpu":
        if spec.strip().lower() == "auto":
            return torch.device("cpu")
        raise DeviceError(f"training supports cpu and cuda devices, not {spec!r}")
    return dev


def resolve_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """The generator's autocast dtype (None: fp32): the engine's ``resolve_precision``, the one
    rule for training and inference (``auto``: bf16 on the CPU only where oneDNN has native bf16,
    else fp32; bf16, or fp16 without it, on CUDA). An explicit bf16 needs a GPU that supports
    it; on the CPU it is allowed (emulated where not native: ~9x slower than fp32 in training
    on this project's CPU, docs/training.md)."""
    dtype = resolve_precision(precision, device)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16; use `precision='fp16'` or "
                          "`precision='fp32'`")
    return None if dtype == torch.float32 else dtype


def load_frozen_clip(spec: str, device: torch.device, warn: Say):
    """A frozen CLIP; its Python warnings (random weights) become ``warn`` messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = load_clip(spec, device)
    for w in caught:
        warn(str(w.message))
    return clip


# -- the generator ----------------------------------------------------------------------------------
def build_generator(cfg: TrainConfig, clip, device: torch.device, dist: ddp.DistInfo,
                    amp: torch.dtype | None, *, init: bool, say: Say) -> Generator:
    mcfg = model_config(cfg, clip)
    model = build_model(mcfg, clip).to(device)
    if init and cfg.run.init:
        icfg, istate, _ = read_checkpoint(cfg.run.init)
        if icfg != mcfg:
            raise TrainingError(f"`init='{cfg.run.init}'`: its model ({describe(icfg)}) differs from "
                                f"the configured one ({describe(mcfg)}); set [model], `scale` and "
                                "`clip` to match it")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in istate.items()})
        say(f"initialised from {cfg.run.init}")
    ema_model = build_model(mcfg, clip).to(device)
    ema = EMA(model, ema_model, cfg.optim.ema_decay)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    step: nn.Module = GeneratorStep(model, amp, device, cfg.run.channels_last)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step = DDP(step, device_ids=[device.index] if device.type == "cuda" else None,
                   broadcast_buffers=False,
                   # the prompt path exists but is unused when F_U fusion is switched off
                   find_unused_parameters=mcfg.text_conditioned and not mcfg.fu_fusion)
    if cfg.run.compile and device.type == "cuda":
        step = torch.compile(step)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1],
                              "weight_decay": cfg.optim.weight_decay},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=cfg.optim.betas, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    text = TextCache(model) if mcfg.text_conditioned else None
    return Generator(mcfg, model, ema_model, ema, step, opt, scaler, text)


# -- the losses ---------------------------------------------------------------------------------------
def build_losses(cfg: TrainConfig, clip, mcfg: ModelConfig, device: torch.device,
                 dist: ddp.DistInfo, *, warn: Say) -> Losses:
    frozen = {"clip": clip}

    def aux_clip():  # the generator's CLIP, else loss.d_clip (loaded once, when needed)
        if frozen["clip"] is None:
            frozen["clip"] = load_frozen_clip(cfg.loss.d_clip, device, warn)
        return frozen["clip"]

    perc, perc_name = (None, "none")
    if cfg.loss.perceptual_weight > 0:
        perc, perc_name = build_perceptual(cfg.loss.perceptual, aux_clip, warn)
        if perc is not None:
            perc.to(device)
    D = d_opt = None
    if cfg.loss.adversarial:
        D = ClipDiscriminator(aux_clip(), layers=cfg.loss.d_layers, width=cfg.loss.d_width,
                              text_dim=mcfg.text_dim).to(device)
        if dist.enabled:  # identical start on every rank
            for p in D.parameters():
                torch.distributed.broadcast(p.data, 0)
        d_opt = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas)
    return Losses(pixel_loss(cfg.loss.pixel), perc, perc_name, D, d_opt)


# -- the data -----------------------------------------------------------------------------------------
def open_source(path: str, fmt: str, split: str):
    if not path:
        raise DataError("no training data given; pass `data='PATH'`")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset not found: {p}")
    from clipsr_cli.data.datasets import open_dataset

    return open_dataset(p, fmt, split=split)


@dataclass
class Data:
    sampler: MemorySampler | StreamSampler
    bad: BadImages
    seed: int
    """The sampler's seed (per rank)."""
    val: list


def _too_small(small: list[int], fine: list[int], d, mcfg: ModelConfig) -> str:
    """Most images are smaller than the HR patch: say how many, and the patch that fits them."""
    hp, n = d.patch_size * d.scale, len(small) + len(fine)
    sides = sorted(small + fine)
    mult = 2 ** (len(mcfg.encoder_widths) - 1)  # the patch must be a multiple of this
    fit = sides[len(sides) // 10] // d.scale // mult * mult  # fits 90% of the images
    head = (f"{len(small)} of {n} images are smaller than the {hp}x{hp} HR patch "
            f"(`patch_size={d.patch_size}` x scale {d.scale}), so training would use only "
            f"{len(fine)}; ")
    if fit >= mult:
        return head + (f"use `patch_size={fit}` (the largest that fits 90% of them: "
                       f"{fit * d.scale} px HR patches)")
    return head + (f"they are too small to train ×{d.scale} with this model; use larger "
                   "images or a smaller `scale`")


def build_data(cfg: TrainConfig, mcfg: ModelConfig, text: TextCache | None, device: torch.device,
               dist: ddp.DistInfo, *, source=None, val_source=None, say: Say, warn: Say) -> Data:
    d = cfg.data
    hp = d.patch_size * d.scale
    bad = BadImages(d.max_bad_fraction, warn=warn)
    if source is None:
        source = open_source(d.path, d.format, d.split)
    if len(source) == 0:
        raise DataError(f"the training dataset {d.path} is empty")
    in_memory = d.in_memory == "yes" or (d.in_memory == "auto" and len(source) <= d.in_memory_max_images)
    seed = cfg.run.seed * 1000 + dist.rank
    common = dict(scale=d.scale, patch=d.patch_size, batch=d.batch_size, device=device, seed=seed,
                  hflip=d.hflip, vflip=d.vflip, rot90=d.rot90, caption_dropout=d.caption_dropout,
                  degradation=d.degradation)
    if in_memory:
        t0 = time.monotonic()
        images, captions = decode_all(source, min_side=hp, resize_shorter=d.resize_shorter, bad=bad,
                                      threads=max(1, min(d.workers, os.cpu_count() or 1)))
        if bad.small > len(images):  # most images: training would see only the few others
            raise DataError(_too_small(bad.small_sides, [min(im.shape[-2:]) for im in images],
                                       d, mcfg))
        if not images:
            raise DataError(f"no usable images in {d.path}")
        sampler = MemorySampler(images, captions, **common)
        mb = sum(im.numel() for im in images) / 2 ** 20
        say(f"data: {len(images)} images decoded into {device.type} memory ({mb:.0f} MiB) in "
            f"{time.monotonic() - t0:.1f}s" + (f"; skipped {bad.unreadable} unreadable, {bad.small} "
                                              "too small" if bad.unreadable or bad.small else ""))
        n_captioned = sum(1 for c in captions if c)
        if text is not None:
            t0 = time.monotonic()
            text.prefill(c for caps in captions for c in caps)
            say(f"text: {len(text.cache)} distinct captions encoded in {time.monotonic() - t0:.1f}s")
    else:
        sampler = StreamSampler(source, workers=d.workers, resize_shorter=d.resize_shorter, bad=bad,
                                **common)
        say(f"data: streaming {len(source)} images with {d.workers} worker(s)")
        n_captioned = -1
    if mcfg.text_conditioned and n_captioned == 0:
        warn("the training images have no captions: the text path will only learn the null caption")
    val = []
    if (d.val or val_source is not None) and dist.main:
        vsrc = val_source if val_source is not None else open_source(d.val, d.val_format, d.val_split)
        val = load_val(vsrc, scale=d.scale, multiple=mcfg.pad_multiple, max_images=d.val_images,
                       max_size=d.val_max_size, device=device, warn=warn)
        if not val:
            warn(f"no usable validation images in {d.val}")
    return Data(sampler, bad, seed, val)
