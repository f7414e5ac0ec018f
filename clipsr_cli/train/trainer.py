"""The training loop: ``train(config)`` → a run directory with an exported EMA checkpoint.

RUN_DIR contents (rank 0 writes them):
  config.toml        the resolved configuration (re-usable with ``--config``)
  metrics.jsonl      one JSON object per log / validation event
  checkpoint.pt      resume state (torch.save of tensors and plain containers only; read back with
                     ``torch.load(weights_only=True)``), written atomically
  model.safetensors  the EMA generator as a clipsr checkpoint (``load_checkpoint`` / ``upscale -m``)
  summary.json       how the run ended
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.model.checkpoint import atomic_write_bytes, read_checkpoint, save_checkpoint
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.cli.console import err_console, info, state as console_state, warn
from clipsr_cli.errors import ClipsrError, DataError, DeviceError, TrainingError
from clipsr_cli.train import ddp
from clipsr_cli.train.config import TrainConfig, from_toml_text, incompatibilities, to_toml
from clipsr_cli.train.data import BadImages, MemorySampler, StreamSampler, decode_all, load_val
from clipsr_cli.train.losses import build_perceptual, pixel_loss

CHECKPOINT = "checkpoint.pt"
EXPORT = "model.safetensors"
STATE_VERSION = 1


@dataclass
class TrainResult:
    run_dir: Path
    export: Path
    step: int
    """Optimisation steps done in total."""
    stopped: str
    """'done' (all steps), 'time' (time limit) or 'interrupted'."""
    seconds: float
    """Wall time of the training loop in this process (excludes start-up)."""
    steps_per_s: float
    val: dict | None
    """Last validation of the EMA model (val_psnr, val_ssim, bicubic_psnr, bicubic_ssim)."""


# -- device / precision ---------------------------------------------------------------------------
def resolve_device(spec: str, dist: ddp.DistInfo) -> torch.device:
    """The engine's device resolution (one place), plus what training needs on top: an explicit
    CUDA index (``cuda`` → the current device; under torchrun, ``cuda:LOCAL_RANK``) and no MPS."""
    from clipsr_cli.infer.engine import resolve_device as engine_device

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
    """The autocast dtype (None: fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision in ("auto", "bf16"):
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
            if precision == "bf16":
                raise DeviceError("this GPU does not support bf16; use --precision fp16 or fp32")
            return torch.float16
        return torch.float16
    if precision == "fp16":
        raise DeviceError("fp16 training needs CUDA; use bf16 or fp32 on the CPU")
    return torch.bfloat16


# -- model construction ---------------------------------------------------------------------------
def model_config(cfg: TrainConfig, clip) -> ModelConfig:
    m = cfg.model
    kw = dict(scale=cfg.data.scale, encoder_widths=tuple(m.encoder_widths), stage_blocks=m.stage_blocks,
              body_blocks=m.body_blocks, up_widths=tuple(m.up_widths), fu_fusion=m.fu_fusion)
    if clip is None:
        return ModelConfig(**kw)
    return ModelConfig(**kw, clip=str(clip.spec), text_dim=clip.text_dim, clip_width=clip.visual_width,
                       clip_image_size=clip.image_size,
                       prompt_tokens=min(m.prompt_tokens, clip.visual_layers))


def _load_clip(spec: str, device: torch.device, warn_=warn):
    """Load a frozen CLIP; its warnings (random weights) go to the console."""
    import warnings

    from clipsr_cli.model.clip import load_clip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = load_clip(spec, device)
    for w in caught:
        warn_(str(w.message))
    return clip


class _GeneratorStep(nn.Module):
    """condition + forward as one ``forward`` (what DDP wraps). CLIP runs in fp32 on the CPU."""

    def __init__(self, model: nn.Module, amp: torch.dtype | None, device: torch.device, channels_last: bool):
        super().__init__()
        self.model = model
        self.amp, self.device_type, self.channels_last = amp, device.type, channels_last

    def forward(self, lr: torch.Tensor, emb: torch.Tensor | None, null_mask: torch.Tensor | None):
        m = self.model
        cond_amp = self.amp is not None and self.device_type == "cuda"
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=cond_amp):
            cond = m.condition(lr, emb, null_mask=null_mask)
        x = lr.contiguous(memory_format=torch.channels_last) if self.channels_last else lr
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            return m(x, cond), cond


class TextCache:
    """CLIP sentence embeddings per distinct caption, computed once (in chunks) on the device."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    def prefill(self, captions) -> None:
        """Encode every distinct caption up front, in sorted order and fixed chunks, so that an
        embedding never depends on which captions happened to be batched with it (exact resume)."""
        self._encode(sorted({c for c in captions if c} - set(self.cache)))

    def _encode(self, missing: list[str]) -> None:
        for i in range(0, len(missing), 256):
            chunk = missing[i:i + 256]
            emb = self.model.text_embedding(chunk)
            for c, e in zip(chunk, emb):
                self.cache[c] = e

    def __call__(self, captions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) embeddings (zeros where no caption) and a (B,) bool mask of missing captions."""
        self._encode(sorted({c for c in captions if c and c not in self.cache}))
        d = self.model.config.text_dim
        dev = self.model.null_text.device
        rows = [self.cache[c] if c else torch.zeros(d, device=dev) for c in captions]
        none = torch.tensor([not c for c in captions], device=dev)
        return torch.stack(rows), none


class EMA:
    def __init__(self, model: nn.Module, ema_model: nn.Module, decay: float):
        self.decay = decay
        self.ema = ema_model
        self.ema.load_state_dict(model.state_dict())
        self.ema.requires_grad_(False).eval()
        self.src = [p for p in model.state_dict(keep_vars=True).values()]
        self.dst = [p for p in self.ema.state_dict(keep_vars=True).values()]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        fl_s = [s.detach() for s in self.src if s.is_floating_point()]
        fl_d = [t for t in self.dst if t.is_floating_point()]
        torch._foreach_lerp_(fl_d, fl_s, 1 - d)
        for s, t in zip(self.src, self.dst):
            if not s.is_floating_point():
                t.copy_(s)


def lr_factor(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio; progress by steps (or the time limit)."""
    o, total = cfg.optim, cfg.run.steps
    warm = min(o.warmup_steps, total // 10)
    if step < warm:
        return (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    if cfg.run.time_limit and o.anneal_to_time_limit:
        p = max(p, time_frac)
    p = min(1.0, p)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


# -- datasets ---------------------------------------------------------------------------------------
def open_source(path: str, fmt: str, split: str):
    if not path:
        raise DataError("no training data given; pass --data PATH")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset not found: {p}")
    from clipsr_cli.data.datasets import open_dataset

    return open_dataset(p, fmt, split=split)


# -- checkpoint state -------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_state(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist; start without --resume")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file: unpickling errors of several kinds
        raise TrainingError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "the checkpoint is damaged; start a new run (--init "
                            f"{run_dir / EXPORT} keeps the exported weights)") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        raise TrainingError(f"{path} is not a clipsr training checkpoint of version {STATE_VERSION}")
    return st


def saved_config(run_dir: Path) -> TrainConfig:
    """The configuration a run was started with (for --resume)."""
    p = run_dir / "config.toml"
    if not p.is_file():
        raise TrainingError(f"nothing to resume in {run_dir}: no config.toml; start without --resume")
    return from_toml_text(p.read_text(), source=str(p))


# -- the loop ---------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, show_progress: bool = True,
          on_step: Callable[[int, dict], None] | None = None, source=None,
          val_source=None) -> TrainResult:
    """Train a CLIP-SR generator as ``cfg`` says; returns where the export is.

    ``on_step(step, losses)`` is called after every optimisation step (tests use it to
    interrupt a run). ``source`` / ``val_source``: image sources (``len``, ``load(i) -> (PIL
    image, captions)``) used instead of ``cfg.data.path`` / ``cfg.data.val``. KeyboardInterrupt / SIGTERM stop cleanly: the state is checkpointed and
    the EMA exported, then KeyboardInterrupt is re-raised.
    """
    dist = ddp.env_info()
    device = resolve_device(cfg.run.device, dist)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp.init(dist, device)
    try:
        return _train(cfg, dist, device, resume=resume, show_progress=show_progress, on_step=on_step,
                      source=source, val_source=val_source)
    finally:
        ddp.shutdown()


class _Stop(Exception):
    pass


def _train(cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device, *, resume: bool,
           show_progress: bool, on_step, source=None, val_source=None) -> TrainResult:
    t_start = time.monotonic()
    main = dist.main
    say = info if main else (lambda m: None)
    warn_ = warn if main else (lambda m: None)
    if not cfg.run.out:
        raise TrainingError("no run directory given; pass --out RUN_DIR")
    run_dir = Path(cfg.run.out).expanduser()
    state = None
    if resume:
        state = load_state(run_dir)
        saved = from_toml_text(state["config"], source=str(run_dir / CHECKPOINT))
        bad = incompatibilities(saved, cfg)
        if bad:
            raise TrainingError(f"cannot resume {run_dir}: the configuration differs in "
                                f"{', '.join(bad)}; resume with the saved settings "
                                f"({run_dir / 'config.toml'}) or start a new run with --init")
        if state["step"] >= cfg.run.steps:
            raise TrainingError(f"{run_dir} already finished {state['step']} of {cfg.run.steps} steps; "
                                "pass a larger --steps to continue")
    elif (run_dir / CHECKPOINT).exists():
        raise TrainingError(f"{run_dir} already holds a training run; pass --resume to continue it "
                            "or choose another --out")
    if main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(to_toml(cfg))
        except OSError as e:
            raise TrainingError(f"cannot write to run directory {run_dir}: {e.strerror}") from None

    torch.manual_seed(cfg.run.seed)
    amp = resolve_amp(cfg.run.precision, device)
    # -- model
    clip = _load_clip(cfg.run.clip, device, warn_) if cfg.text_conditioned else None
    mcfg = model_config(cfg, clip)
    from clipsr_cli.model.network import build_model

    model = build_model(mcfg, clip).to(device)
    if cfg.run.init and state is None:
        icfg, istate, _ = read_checkpoint(cfg.run.init)
        if icfg != mcfg:
            raise TrainingError(f"--init {cfg.run.init}: its model ({_describe(icfg)}) differs from the "
                                f"configured one ({_describe(mcfg)}); set [model], --scale and --clip "
                                "to match it")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in istate.items()})
        say(f"initialised from {cfg.run.init}")
    ema_model = build_model(mcfg, clip).to(device)
    ema = EMA(model, ema_model, cfg.optim.ema_decay)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    step_module = _GeneratorStep(model, amp, device, cfg.run.channels_last)
    gen = step_module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        gen = DDP(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                  broadcast_buffers=False,
                  # the prompt path exists but is unused when F_U fusion is switched off
                  find_unused_parameters=mcfg.text_conditioned and not mcfg.fu_fusion)
    if cfg.run.compile and device.type == "cuda":
        gen = torch.compile(gen)
    params = [p for p in model.parameters() if p.requires_grad]
    decay_p = [p for p in params if p.ndim > 1]
    other_p = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay_p, "weight_decay": cfg.optim.weight_decay},
                             {"params": other_p, "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=cfg.optim.betas,
                            fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    # -- losses
    pix = pixel_loss(cfg.loss.pixel)
    perc, perc_name = (None, "none")
    if cfg.loss.perceptual_weight > 0:
        perc, perc_name = build_perceptual(cfg.loss.perceptual, clip, warn_)
        if perc is not None:
            perc.to(device)
    D = d_opt = None
    if cfg.loss.adversarial:
        from clipsr_cli.train.discriminator import ClipDiscriminator

        d_clip = clip if clip is not None else _load_clip(cfg.loss.d_clip, device, warn_)
        D = ClipDiscriminator(d_clip, layers=cfg.loss.d_layers, width=cfg.loss.d_width,
                              text_dim=mcfg.text_dim).to(device)
        if dist.enabled:  # identical start on every rank
            for p in D.parameters():
                torch.distributed.broadcast(p.data, 0)
        d_opt = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas)
    text = TextCache(model) if mcfg.text_conditioned else None

    # -- data
    d = cfg.data
    hp = d.patch_size * d.scale
    bad = BadImages(d.max_bad_fraction, warn=warn_)
    if source is None:
        source = open_source(d.path, d.format, d.split)
    if len(source) == 0:
        raise DataError(f"the training dataset {d.path} is empty")
    in_memory = d.in_memory == "yes" or (d.in_memory == "auto" and len(source) <= d.in_memory_max_images)
    seed = cfg.run.seed * 1000 + dist.rank
    common = dict(scale=d.scale, patch=d.patch_size, batch=d.batch_size, device=device, seed=seed,
                  hflip=d.hflip, vflip=d.vflip, rot90=d.rot90, caption_dropout=d.caption_dropout,
                  extra_degradation=d.degradation == "extra")
    if in_memory:
        t0 = time.monotonic()
        images, captions = decode_all(source, min_side=hp, resize_shorter=d.resize_shorter, bad=bad,
                                      threads=max(1, min(d.workers, os.cpu_count() or 1)))
        if not images:
            if bad.small:
                raise DataError(f"all {bad.small} images are smaller than the {hp}x{hp} HR patch "
                                f"(patch {d.patch_size} x scale {d.scale}); use a smaller --patch-size"
                                + (" or data.resize_shorter" if not d.resize_shorter else ""))
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
        warn_("the training images have no captions: the text path will only learn the null caption")
    val = []
    if (d.val or val_source is not None) and main:
        vsrc = val_source if val_source is not None else open_source(d.val, d.val_format, d.val_split)
        val = load_val(vsrc, scale=d.scale, multiple=mcfg.pad_multiple, max_images=d.val_images,
                       max_size=d.val_max_size, device=device, warn=warn_)
        if not val:
            warn_(f"no usable validation images in {d.val}")

    # -- resume
    step = 0
    elapsed_before = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        opt.load_state_dict(state["opt"])
        if D is not None:
            D.load_state_dict(state["d"])
            d_opt.load_state_dict(state["d_opt"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        samplers = state["sampler"]
        if len(samplers) == dist.world:
            sampler.load_state_dict(samplers[dist.rank])
            _set_rng_state(state["rng"][dist.rank], device)
        else:
            warn_(f"resuming with {dist.world} process(es) instead of {len(samplers)}: the sampling "
                  "sequence restarts (training continues, not bit-identically)")
            sampler.gen.manual_seed(seed + 7919 * int(state["step"]))
        step = int(state["step"])
        elapsed_before = float(state.get("elapsed", 0.0))
        bad.unreadable, bad.small, bad.seen = (int(x) for x in state.get("bad", (0, 0, 0)))
        say(f"resumed {run_dir} at step {step}")

    metrics_path = run_dir / "metrics.jsonl"
    if main:
        _truncate_metrics(metrics_path, step)
    mlog = open(metrics_path, "a") if main else None
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {_describe(mcfg)}, {n_params / 1e6:.2f} M parameters; preset {cfg.preset}; "
        f"{'AMP ' + str(amp).replace('torch.', '') if amp else 'fp32'} on {device}"
        + (f" x {dist.world} processes" if dist.enabled else "")
        + (f"; perceptual: {perc_name}" if cfg.loss.perceptual_weight > 0 and cfg.loss.perceptual != 'none' else ""))

    # -- signals: SIGTERM (preemption) stops like Ctrl-C
    stop_flag = {"sig": False}
    old_term = None
    if hasattr(signal, "SIGTERM"):
        try:
            old_term = signal.signal(signal.SIGTERM, lambda *a: stop_flag.__setitem__("sig", True))
        except ValueError:  # not the main thread
            old_term = None

    saved_step = {"step": step if state is not None else None}

    def save(step_now: int, elapsed_now: float, *, gather: bool = True) -> bool:
        """Write checkpoint.pt and the EMA export; ENOSPC keeps the previous files (False)."""
        samp = [_to_cpu(sampler.state_dict())]
        rng = [_rng_state(device)]
        if dist.enabled and gather:
            samp = ddp.all_gather_object(samp[0], dist)
            rng = ddp.all_gather_object(_to_cpu(rng[0]), dist)
        if not main:
            return True
        st = {"version": STATE_VERSION, "step": step_now, "elapsed": elapsed_now, "config": to_toml(cfg),
              "model": _to_cpu(model.state_dict()), "ema": _to_cpu(ema_model.state_dict()),
              "ema_updates": ema.updates, "opt": _to_cpu(opt.state_dict()),
              "sampler": samp, "rng": [_to_cpu(r) for r in rng],
              "bad": [bad.unreadable, bad.small, bad.seen]}
        if D is not None:
            st["d"] = _to_cpu(D.state_dict())
            st["d_opt"] = _to_cpu(d_opt.state_dict())
        if scaler.is_enabled():
            st["scaler"] = scaler.state_dict()
        buf = io.BytesIO()
        torch.save(st, buf)
        try:
            atomic_write_bytes(run_dir / CHECKPOINT, buf.getvalue())
            save_checkpoint(run_dir / EXPORT, ema_model, mcfg, training=_training_meta(
                cfg, step_now, last_val, perc_name, dist.world))
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                warn(f"disk full while writing the checkpoint at step {step_now}: kept the previous "
                     f"checkpoint in {run_dir}; free some space")
                return False
            raise TrainingError(f"cannot write the checkpoint in {run_dir}: {e.strerror}") from None
        saved_step["step"] = step_now
        return True

    last_val: dict | None = None
    log_acc: dict[str, float] = {}
    log_n = 0
    stopped = "done"
    loop_t0 = time.monotonic()
    steps_at_start = step
    progress = _Progress(cfg.run.steps, step, enabled=show_progress and main and not console_state.quiet)
    time_limit = cfg.run.time_limit
    check_every = 1 if device.type == "cpu" else cfg.run.log_every
    last_good_step = step
    losses = None
    try:
        with progress:
            while step < cfg.run.steps:
                elapsed = elapsed_before + (time.monotonic() - loop_t0)
                if time_limit or dist.enabled:
                    # one clock for all ranks: same schedule, same stop decision
                    flag = 1e9 if stop_flag["sig"] else elapsed
                    flag = ddp.broadcast_float(flag, dist, device) if dist.enabled else flag
                    if flag >= 1e9:
                        raise KeyboardInterrupt
                    elapsed = flag
                    if time_limit and elapsed >= time_limit:
                        stopped = "time"
                        break
                elif stop_flag["sig"]:
                    raise KeyboardInterrupt
                f = lr_factor(step, cfg, elapsed / time_limit if time_limit else 0.0)
                for g in opt.param_groups:
                    g["lr"] = cfg.optim.lr * f
                batch = sampler.next_batch()
                losses = _step(cfg, batch, gen, model, text, pix, perc, D, d_opt, opt, scaler, dist)
                ema.update()
                step += 1
                for k, v in losses.items():
                    log_acc[k] = log_acc.get(k, 0.0) + v
                log_n += 1
                if step % check_every == 0 or step == cfg.run.steps:
                    _check_finite(losses, step, run_dir, last_good_step)
                    last_good_step = step
                if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                    rec = {k: float(v) / log_n for k, v in log_acc.items()}
                    _check_finite(rec, step, run_dir, last_good_step)
                    dt = time.monotonic() - loop_t0
                    rec.update(step=step, lr=cfg.optim.lr * f, time=round(elapsed, 3),
                               steps_per_s=round((step - steps_at_start) / max(dt, 1e-9), 4))
                    if mlog:
                        mlog.write(json.dumps(rec) + "\n")
                        mlog.flush()
                    progress.update(step, rec.get("loss", 0.0))
                    log_acc, log_n = {}, 0
                else:
                    progress.update(step, None)
                if main and val and (step % cfg.run.val_every == 0):
                    last_val = _validate(ema_model, val, mcfg, amp, device)
                    _log_val(mlog, step, last_val)
                    progress.note(_val_line(step, last_val))
                if step % cfg.run.checkpoint_every == 0 and step < cfg.run.steps:
                    save(step, elapsed_before + time.monotonic() - loop_t0)
                if on_step is not None:
                    on_step(step, {k: float(v) for k, v in losses.items()})
    except KeyboardInterrupt:
        elapsed = elapsed_before + time.monotonic() - loop_t0
        if main:
            err_console.print(f"interrupted at step {step}: writing the checkpoint…", highlight=False)
        if _losses_finite(losses):
            save(step, elapsed, gather=False)
        _restore_sigterm(old_term)
        if mlog:
            mlog.close()
        raise
    except ClipsrError:
        _restore_sigterm(old_term)
        if mlog:
            mlog.close()
        raise
    _restore_sigterm(old_term)
    elapsed = elapsed_before + time.monotonic() - loop_t0
    if main and val and (last_val is None or last_val.get("step") != step):
        last_val = _validate(ema_model, val, mcfg, amp, device)
        _log_val(mlog, step, last_val)
        progress.note(_val_line(step, last_val))
    if not save(step, elapsed) and main:
        kept = (f"keeps the checkpoint of step {saved_step['step']}" if saved_step["step"] is not None
                else "has no checkpoint")
        raise TrainingError(f"disk full: the final checkpoint could not be written; {run_dir} {kept}; "
                            "free some space and continue with --resume")
    # every rank must end with the same weights: compare hashes (cheap, and catches DDP bugs)
    hashes = ddp.all_gather_object(_weights_hash(model, D), dist)
    dt = time.monotonic() - loop_t0
    sps = (step - steps_at_start) / max(dt, 1e-9)
    if main:
        summary = {"stopped": stopped, "step": step, "steps": cfg.run.steps, "seconds": round(dt, 3),
                   "total_seconds": round(time.monotonic() - t_start, 3), "steps_per_s": round(sps, 4),
                   "world_size": dist.world, "rank_weight_hashes": hashes, "val": last_val,
                   "unreadable_images": bad.unreadable, "small_images": bad.small,
                   "perceptual": perc_name, "export": str(run_dir / EXPORT)}
        atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        if mlog:
            mlog.close()
        msg = {"done": "finished", "time": "time limit reached"}[stopped]
        say(f"{msg} at step {step} ({sps:.2f} steps/s); exported the EMA weights to {run_dir / EXPORT}"
            + (f"; unreadable images skipped: {bad.unreadable}" if bad.unreadable else ""))
    if len(set(hashes)) > 1:
        raise TrainingError(f"the {dist.world} processes ended with different weights; this is a bug")
    return TrainResult(run_dir, run_dir / EXPORT, step, stopped, dt, sps, last_val)


def _step(cfg, batch, gen, model, text, pix, perc, D, d_opt, opt, scaler, dist) -> dict[str, torch.Tensor]:
    """One optimisation step of G (and D). Returns the losses as 0-d tensors."""
    L = cfg.loss
    emb = none = None
    null_mask = None
    if text is not None:
        emb, none = text(batch.captions)
        null_mask = batch.drop | none
    sr, cond = gen(batch.lr, emb, null_mask)
    sr = sr.float()
    out: dict[str, torch.Tensor] = {}
    t_d = None
    if D is not None and text is not None:
        null = model.null_text.detach()[None].expand_as(emb)
        t_d = F.normalize(torch.where(none[:, None], null, emb), dim=-1)
    if D is not None:
        from clipsr_cli.train.discriminator import d_loss

        d_opt.zero_grad(set_to_none=True)
        ld, dstats = d_loss(D, batch.hr, sr.detach().clamp(0, 1), t_d, gp_weight=L.gp_weight,
                            gp_power=L.gp_power)
        ld.backward()
        if dist.enabled:
            _allreduce_grads(D.parameters(), dist.world)
        d_opt.step()
        out["d_loss"] = ld.detach()
        out.update(dstats)
    loss = L.pixel_weight * pix(sr, batch.hr)
    out["pixel"] = loss.detach()
    if perc is not None:
        lp = perc(sr, batch.hr)
        out["perceptual"] = lp.detach()
        loss = loss + cfg.loss.perceptual_weight * lp
    if D is not None:
        from clipsr_cli.train.discriminator import g_adv_loss

        D.requires_grad_(False)
        la, gstats = g_adv_loss(D, sr, t_d, clip_weight=L.clip_weight)
        D.requires_grad_(True)
        out["g_adv_total"] = la.detach()
        out.update(gstats)
        loss = loss + L.adversarial_weight * la
    out["loss"] = loss.detach()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.optim.grad_clip > 0:
        scaler.unscale_(opt)
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        out["grad_norm"] = gn.detach().float()
    scaler.step(opt)
    scaler.update()
    return out


def _allreduce_grads(params, world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n


def _losses_finite(losses) -> bool:
    if not losses:
        return True
    return all(math.isfinite(float(v)) for v in losses.values())


def _check_finite(losses: dict, step: int, run_dir: Path, last_good: int) -> None:
    for k, v in losses.items():
        if not math.isfinite(float(v)):
            have = (run_dir / CHECKPOINT).exists()
            keep = (f"the last good checkpoint ({run_dir / CHECKPOINT}) is kept" if have else
                    "no checkpoint was written yet")
            raise TrainingError(f"the {k} loss became {float(v)} at step {step} (last finite check at "
                                f"step {last_good}); {keep}. Lower --lr, use --precision fp32, or "
                                "check the data")


def _validate(ema_model, val, mcfg, amp, device) -> dict:
    """Y-PSNR / SSIM (border = scale) of the EMA model and of bicubic on the validation images."""
    from clipsr_cli.data.metrics import psnr, ssim
    from clipsr_cli.data.degrade import imresize

    s = mcfg.scale
    rows = {"val_psnr": [], "val_ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    with torch.inference_mode():
        for v in val:
            emb = ema_model.text_embedding([v.caption]) if mcfg.text_conditioned else None
            cond = ema_model.condition(v.lr, emb)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                sr = ema_model(v.lr, cond)
            sr = sr.float().clamp(0, 1)
            bic = imresize(v.lr, float(s)).clamp(0, 1)
            rows["val_psnr"].append(float(psnr(sr, v.hr, border=s).mean()))
            rows["val_ssim"].append(float(ssim(sr, v.hr, border=s).mean()))
            rows["bicubic_psnr"].append(float(psnr(bic, v.hr, border=s).mean()))
            rows["bicubic_ssim"].append(float(ssim(bic, v.hr, border=s).mean()))
    return {k: round(sum(x) / len(x), 4) for k, x in rows.items()}


def _log_val(mlog, step: int, val: dict) -> None:
    val["step"] = step
    if mlog:
        mlog.write(json.dumps({"event": "val", **val}) + "\n")
        mlog.flush()


def _val_line(step: int, v: dict) -> str:
    return (f"step {step}: val PSNR {v['val_psnr']:.2f} dB (bicubic {v['bicubic_psnr']:.2f}), "
            f"SSIM {v['val_ssim']:.4f} (bicubic {v['bicubic_ssim']:.4f})")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(l + "\n" for l in keep) if step else "")


def _weights_hash(*modules: nn.Module | None) -> str:
    """sha256 (16 hex digits) of the weights of the generator (and discriminator)."""
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            continue
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _describe(m: ModelConfig) -> str:
    return (f"x{m.scale}, encoder {list(m.encoder_widths)}, body {m.body_blocks}, up "
            f"{list(m.up_widths[:m.num_up])}, clip {m.clip or 'none'}")


def _training_meta(cfg: TrainConfig, step: int, val: dict | None, perc: str, world: int) -> dict:
    return {"preset": cfg.preset, "step": step, "steps": cfg.run.steps, "data": cfg.data.path,
            "format": cfg.data.format, "patch_size": cfg.data.patch_size,
            "batch_size": cfg.data.batch_size * world, "lr": cfg.optim.lr, "ema_decay": cfg.optim.ema_decay,
            "caption_dropout": cfg.data.caption_dropout, "perceptual": perc, "val": val,
            "weights": "ema"}


def _restore_sigterm(old) -> None:
    if old is not None:
        try:
            signal.signal(signal.SIGTERM, old)
        except ValueError:
            pass


class _Progress:
    """Rich progress bar on stderr (rank 0), or nothing."""

    def __init__(self, total: int, start: int, *, enabled: bool):
        self.enabled = enabled
        self.total, self.start = total, start
        self._p = None
        self._last_loss = float("nan")

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                               TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                               transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, completed=self.start,
                                          loss="", speed="")
            self._t0 = time.monotonic()
        return self

    def update(self, step: int, loss: float | None) -> None:
        if not self._p:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"loss {loss:.4f}"
            dt = time.monotonic() - self._t0
            fields["speed"] = f"{(step - self.start) / max(dt, 1e-9):.2f} it/s"
        self._p.update(self._task, completed=step, **fields)

    def note(self, line: str) -> None:
        if self._p:
            self._p.console.print(line, highlight=False)
        else:
            info(line)

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)
        return False
