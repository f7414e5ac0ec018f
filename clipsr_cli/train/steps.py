"""The pieces of one training step: the generator step module, text embeddings, EMA, the
learning-rate schedule, the G/D optimisation step, finiteness checks and validation."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import TrainingError
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.train.data import Batch
from clipsr_cli.train.ddp import DistInfo
from clipsr_cli.train.discriminator import ClipDiscriminator, d_loss, g_adv_loss
from clipsr_cli.train.rundir import CHECKPOINT
from clipsr_cli.train.schema import TrainConfig


class GeneratorStep(nn.Module):
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


@dataclass
class Generator:
    """The generator being trained and what its step needs (built by ``setup.build_generator``)."""

    mcfg: ModelConfig
    model: nn.Module
    """The trained generator (its weights; ``step`` is what runs it)."""
    ema_model: nn.Module
    ema: EMA
    step: nn.Module
    """condition + forward: ``GeneratorStep``, wrapped by DDP / torch.compile where asked."""
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    text: TextCache | None


@dataclass
class Losses:
    """The loss terms (built by ``setup.build_losses``); ``D``, ``d_opt``: the gan preset's."""

    pixel: Callable
    perceptual: nn.Module | None
    perceptual_name: str
    D: ClipDiscriminator | None
    d_opt: torch.optim.Optimizer | None


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


def train_step(cfg: TrainConfig, batch: Batch, g: Generator, losses: Losses,
               dist: DistInfo) -> dict[str, torch.Tensor]:
    """One optimisation step of G (and D). Returns the losses as 0-d tensors."""
    L = cfg.loss
    gen, model, text, opt, scaler = g.step, g.model, g.text, g.opt, g.scaler
    pix, perc, D, d_opt = losses.pixel, losses.perceptual, losses.D, losses.d_opt
    emb = None
    null_mask = None  # (B,) rows trained without a caption: dropped, or the image has none
    if text is not None:
        emb, none = text(batch.captions)
        null_mask = batch.drop | none
    sr, cond = gen(batch.lr, emb, null_mask)
    sr = sr.float()
    out: dict[str, torch.Tensor] = {}
    t_d = keep = None
    if D is not None and text is not None:
        # the rows G saw without text are judged unconditionally too: D gets the null text for
        # their real and fake images alike, and the CLIP similarity term skips them
        null = model.null_text.detach()[None].expand_as(emb)
        t_d = F.normalize(torch.where(null_mask[:, None], null, emb), dim=-1)
        keep = ~null_mask
    if D is not None:
        d_opt.zero_grad(set_to_none=True)
        ld, dstats = d_loss(D, batch.hr, sr.detach().clamp(0, 1), t_d, gp_weight=L.gp_weight,
                            gp_power=L.gp_power, keep=keep)
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
        D.requires_grad_(False)
        la, gstats = g_adv_loss(D, sr, t_d, clip_weight=L.clip_weight, keep=keep)
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


def losses_finite(losses) -> bool:
    if not losses:
        return True
    return all(math.isfinite(float(v)) for v in losses.values())


def check_finite(losses: dict, step: int, run_dir: Path, last_good: int) -> None:
    for k, v in losses.items():
        if not math.isfinite(float(v)):
            have = (run_dir / CHECKPOINT).exists()
            keep = (f"the last good checkpoint ({run_dir / CHECKPOINT}) is kept" if have else
                    "no checkpoint was written yet")
            raise TrainingError(f"the {k} loss became {float(v)} at step {step} (last finite check at "
                                f"step {last_good}); {keep}. Lower `lr`, use `precision='fp32'`, "
                                "or check the data")


def validate(ema_model, val, mcfg, amp, device) -> dict:
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


def val_line(step: int, v: dict) -> str:
    return (f"step {step}: val PSNR {v['val_psnr']:.2f} dB (bicubic {v['bicubic_psnr']:.2f}), "
            f"SSIM {v['val_ssim']:.4f} (bicubic {v['bicubic_ssim']:.4f})")


def weights_hash(*modules: nn.Module | None) -> str:
    """sha256 (16 hex digits) of the weights of the generator (and discriminator)."""
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            continue
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def describe(m: ModelConfig) -> str:
    return (f"x{m.scale}, encoder {list(m.encoder_widths)}, body {m.body_blocks}, up "
            f"{list(m.up_widths[:m.num_up])}, clip {m.clip or 'none'}")
