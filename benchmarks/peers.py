"""Peer benchmark at equal budget (a benchmark, not a test).

    python benchmarks/peers.py --quick                  # minutes: ×4, 60 s of training per model
    python benchmarks/peers.py --scales 4 8 16 --budget 1800 --threads 2

Trains clipsr's image path and its peers — SPAN (48 channels; NTIRE 2024 efficient-SR winner) and
SRVGGNetCompact (Real-ESRGAN's realesr-general-x4v3 architecture: 64 features, 32 convs), both
from spandrel's architecture code — with **the same** data, degradation (clipsr's ``degrade``:
MATLAB bicubic, 8-bit), loss (L1), optimiser (AdamW, warm-up + cosine over the budget), patch
size, batch size, bf16 autocast and **wall-clock budget**, one after the other in this process,
and reports for each: the validation Y-PSNR gain over bicubic (clipsr's protocol: Y of BT.601,
border = scale; LR by MATLAB bicubic, and with ``--resizers`` also PIL bicubic and Lanczos), the
speed in ms per output megapixel on this device (bf16 and fp32, 256² input, median of 3 after a
warm-up) and the parameter count.

Budgets are wall-clock, so the numbers depend on the machine and on its load: run it on an idle
machine and read the header it prints (device, threads, load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsr_cli.data.degrade import crop_to_multiple, degrade, imresize
from clipsr_cli.data.metrics import psnr
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.network import build_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "photos"
EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


# -- models ------------------------------------------------------------------------------------
def _recipe_model(scale: int) -> ModelConfig:
    import tomllib

    with open(ROOT / "recipes" / f"lite-x{scale}.toml", "rb") as f:
        section = tomllib.load(f).get("model", {})
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return ModelConfig(scale=scale, **fields)


class _ClipsrImagePath(torch.nn.Module):
    """clipsr's generator without text (what the built-in models are), padded to its multiple."""

    def __init__(self, scale: int):
        super().__init__()
        self.net = build_model(_recipe_model(scale))
        self.multiple = self.net.config.pad_multiple

    def forward(self, x):
        return self.net(x)


def build(name: str, scale: int) -> torch.nn.Module:
    if name == "clipsr":
        return _ClipsrImagePath(scale)
    if name == "span48":
        from spandrel.architectures.SPAN import SPAN

        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=scale)
    if name == "compact":
        from spandrel.architectures.Compact import Compact as SRVGGNetCompact

        return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=scale,
                               act_type="prelu")
    raise SystemExit(f"unknown model {name!r}; use clipsr, span48 or compact")


def _spandrel_classes_are_public() -> None:
    # spandrel re-exports the architectures from each package's __init__ (checked at start-up)
    from spandrel.architectures.Compact import Compact  # noqa: F401
    from spandrel.architectures.SPAN import SPAN  # noqa: F401


def _run(model, x):
    m = getattr(model, "multiple", 1)
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    s = model_scale(model)
    return model(x)[..., : h * s, : w * s]


def model_scale(model) -> int:
    return getattr(model, "_bench_scale")


# -- data --------------------------------------------------------------------------------------
def load_folder(folders: list[Path], min_side: int) -> list[torch.Tensor]:
    out = []
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() not in EXTS:
                continue
            with Image.open(p) as im:
                im = im.convert("RGB")
                if min(im.size) < min_side:
                    continue
                out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous())
    if not out:
        raise SystemExit(f"no usable images in {', '.join(map(str, folders))}")
    return out


def sample_batch(images: list[torch.Tensor], batch: int, hr_patch: int, rng: random.Random):
    crops = []
    for _ in range(batch):
        img = images[rng.randrange(len(images))]
        _, h, w = img.shape
        y, x = rng.randrange(h - hr_patch + 1), rng.randrange(w - hr_patch + 1)
        c = img[:, y:y + hr_patch, x:x + hr_patch]
        if rng.random() < 0.5:
            c = c.flip(-1)
        if rng.random() < 0.5:
            c = c.flip(-2)
        if rng.random() < 0.5:
            c = c.transpose(-1, -2)
        crops.append(c)
    return torch.stack(crops).float().div_(255)


# -- training ----------------------------------------------------------------------------------
def train(model, images, *, scale: int, budget: float, patch: int, batch: int, lr: float,
          seed: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model.train()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warm = 0.05
    t0, steps, losses = time.perf_counter(), 0, []
    while True:
        frac = (time.perf_counter() - t0) / budget
        if frac >= 1:
            break
        f = frac / warm if frac < warm else 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))
        for g in opt.param_groups:
            g["lr"] = lr * max(f, 0.01)
        hr = sample_batch(images, batch, patch * scale, rng)
        lr_img = degrade(hr, scale).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            sr = _run(model, lr_img)
        loss = F.l1_loss(sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(float(loss))
    model.eval()
    tail = losses[-50:] or [float("nan")]
    return {"steps": steps, "final_l1": statistics.fmean(tail)}


# -- evaluation --------------------------------------------------------------------------------
def _lr_by(hr: torch.Tensor, scale: int, resizer: str) -> torch.Tensor:
    if resizer == "matlab":
        return degrade(hr, scale)
    arr = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(arr)
    flt = {"pil-bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}[resizer]
    small = im.resize((im.width // scale, im.height // scale), flt)
    return torch.from_numpy(np.array(small)).permute(2, 0, 1)[None].float() / 255


@torch.inference_mode()
def evaluate(model, val: list[torch.Tensor], scale: int, resizers: list[str],
             dtype: torch.dtype) -> dict:
    out = {}
    for rz in resizers:
        gains, worst = [], math.inf
        for img in val:
            hr = crop_to_multiple(img[None].float() / 255, scale)
            lr = _lr_by(hr, scale, rz).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                sr = _run(model, lr).float().clamp(0, 1)
            sr = (sr * 255).round() / 255
            bic = (imresize(lr, scale).clamp(0, 1) * 255).round() / 255
            g = psnr(sr, hr, border=scale) - psnr(bic, hr, border=scale)
            gains.append(float(g))
            worst = min(worst, float(g))
        out[rz] = {"gain_db": statistics.fmean(gains), "worst_db": worst,
                   "improved": sum(g > 0 for g in gains), "images": len(gains)}
    return out


@torch.inference_mode()
def speed(model, scale: int, dtype: torch.dtype, size: int = 256, runs: int = 3) -> float:
    x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)

    def once():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            _run(model, x)

    once()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        once()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000 / (size * size * scale * scale / 1e6)


# -- main --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="×4 only, 60 s per model, 2 val images")
    ap.add_argument("--scales", type=int, nargs="+", default=[4])
    ap.add_argument("--models", nargs="+", default=["clipsr", "span48", "compact"])
    ap.add_argument("--budget", type=float, default=600, help="training seconds per model")
    ap.add_argument("--data", type=Path, nargs="+",
                    default=[SHARED / "train", SHARED / "train2"])
    ap.add_argument("--val", type=Path, default=SHARED / "val")
    ap.add_argument("--val-images", type=int, default=0, help="use only the first N (0: all)")
    ap.add_argument("--patch", type=int, default=48, help="LR patch side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--resizers", nargs="+", default=["matlab"],
                    choices=["matlab", "pil-bicubic", "lanczos"])
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                    help="autocast for training and evaluation")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.scales, args.budget, args.val_images = [4], 60.0, args.val_images or 2
    torch.set_num_threads(args.threads)
    _spandrel_classes_are_public()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# peers.py on {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"{args.threads} threads, torch {torch.__version__}, load average {load:.2f}; "
          f"budget {args.budget:g} s per model, patch {args.patch}, batch {args.batch}, "
          f"{args.precision} autocast", file=sys.stderr)
    val = load_folder([args.val], 16)
    if args.val_images:
        val = val[: args.val_images]
    rows = []
    for s in args.scales:
        images = load_folder(args.data, args.patch * s)
        print(f"# ×{s}: {len(images)} training images, {len(val)} validation images",
              file=sys.stderr)
        for name in args.models:
            model = build(name, s)
            model._bench_scale = s
            params = sum(p.numel() for p in model.parameters())
            tr = train(model, images, scale=s, budget=args.budget, patch=args.patch,
                       batch=args.batch, lr=args.lr, seed=0, dtype=dtype)
            ev = evaluate(model, val, s, args.resizers, dtype)
            row = {"model": name, "scale": s, "params": params, **tr, "val": ev,
                   "ms_per_mp_bf16": speed(model, s, torch.bfloat16),
                   "ms_per_mp_fp32": speed(model, s, torch.float32)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    head = "| model | scale | params | steps | " + " | ".join(
        f"gain ({r})" for r in args.resizers) + " | improved | ms/MP bf16 | ms/MP fp32 |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for r in rows:
        gains = " | ".join(f"{r['val'][z]['gain_db']:+.2f} dB" for z in args.resizers)
        imp = f"{r['val'][args.resizers[0]]['improved']}/{r['val'][args.resizers[0]]['images']}"
        print(f"| {r['model']} | ×{r['scale']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {gains} | "
              f"{imp} | {r['ms_per_mp_bf16']:.0f} | {r['ms_per_mp_fp32']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
