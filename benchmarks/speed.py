"""Speed and memory benchmark (a benchmark, not a test).

    python benchmarks/speed.py                     # built-in models, 512×512 input, this device
    python benchmarks/speed.py --big               # + a 2000×1500 photo ×8 through `clipsr upscale`
    python benchmarks/speed.py -m run/model.safetensors --size 256

For each model: milliseconds per output megapixel (median of --runs runs after a warm-up) and
peak RSS (or peak VRAM on CUDA), each model measured in its own subprocess so that peak memory
is its own; beside PIL bicubic and an RRDBNet of Real-ESRGAN x4plus size (23 blocks, 64
channels, random weights, architecture from spandrel) measured in the same run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_MODELS = ["clipsr-lite-x4", "clipsr-lite-x8", "clipsr-lite-x16"]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, runs: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure_one(kind: str, model: str | None, size: int, runs: int, device: str,
                precision: str) -> dict:
    import torch

    torch.manual_seed(0)
    lr = torch.rand(1, 3, size, size)
    if kind == "bicubic":
        from PIL import Image

        img = Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
        scale = 4
        sec = _time(lambda: img.resize((size * scale, size * scale), Image.BICUBIC), runs)
        extra = {}
    elif kind == "rrdbnet":
        import importlib

        # spandrel keeps the architecture in a private module; it is only used here, for timing
        RRDBNet = importlib.import_module("spandrel.architectures.ESRGAN.__arch.RRDB").RRDBNet

        from clipsr_cli.infer.engine import resolve_device, resolve_precision

        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
        net = RRDBNet(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).eval().to(dev)
        if dev.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        scale = 4
        x = lr.to(dev)

        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype,
                                                        enabled=dtype != torch.float32):
                net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, max(1, runs // 2))
        extra = {"precision": str(dtype).removeprefix("torch.")}
    else:
        from clipsr_cli.infer.engine import Upscaler

        up = Upscaler.load(model, device=device, precision=precision)
        scale = up.scale

        def run():
            up.upscale_array(lr)
            if up.device.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, runs)
        extra = {"precision": str(up.settings.dtype).removeprefix("torch."),
                 "params": up.info.parameters}
        if up.device.type == "cuda":
            extra["peak_vram_mib"] = torch.cuda.max_memory_allocated() / 2**20
    mp = (size * scale) ** 2 / 1e6
    return {"kind": kind, "model": model, "scale": scale, "size": size, "sec": sec,
            "ms_per_mp": sec * 1000 / mp, "peak_rss_mib": _peak_rss_mib(), **extra}


def _sub(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def big_run(model: str, device: str) -> dict:
    """2000×1500 ×8 through the real CLI in a subprocess; its peak RSS from the kernel."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        # a smooth-ish synthetic photo (noise compresses badly and slows PNG encoding)
        small = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
        Image.fromarray(small).resize((2000, 1500), Image.BICUBIC).save(f"{d}/big.png")
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "clipsr_cli", "upscale", f"{d}/big.png", "-s", "8", "-o",
               f"{d}/out.png", "--device", device, "-q"]
        if model:
            cmd += ["-m", model]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sec = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"big run failed: {proc.stderr.strip()}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        Image.MAX_IMAGE_PIXELS = None  # our own 192-megapixel output
        w, h = Image.open(f"{d}/out.png").size
    return {"output": f"{w}×{h}", "megapixels": w * h / 1e6, "sec": sec, "peak_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="model name or checkpoint (repeatable)")
    ap.add_argument("--size", type=int, default=512, help="input side in pixels")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-rrdbnet", action="store_true")
    ap.add_argument("--big", action="store_true", help="also the 2000×1500 ×8 memory run")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.one:
        kind, model = a.one
        print(json.dumps(measure_one(kind, None if model == "-" else model, a.size, a.runs,
                                     a.device, a.precision)))
        return
    common = ["--size", str(a.size), "--runs", str(a.runs), "--device", a.device,
              "--precision", a.precision]
    models = a.model or DEFAULT_MODELS
    rows = [_sub(["bicubic", "-", *common])]
    if not a.no_rrdbnet:
        rows.append(_sub(["rrdbnet", "-", *common]))
    for m in models:
        rows.append(_sub(["clipsr", m, *common]))
    import torch

    dev = "cuda: " + torch.cuda.get_device_name() if a.device != "cpu" and torch.cuda.is_available() \
        else f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"device: {dev}; torch {torch.__version__}; input {a.size}×{a.size}; "
          f"median of {a.runs} after a warm-up")
    ref = {r["kind"]: r for r in rows}
    print(f"{'model':<30}{'scale':>6}{'ms/MP':>10}{'peak MiB':>10}{'vs RRDBNet':>14}"
          f"{'vs bicubic':>14}  precision")
    for r in rows:
        name = r["model"] or {"bicubic": "PIL bicubic", "rrdbnet": "RRDBNet 23×64 (x4plus size)"}[r["kind"]]
        vs_rrdb = (f"{ref['rrdbnet']['ms_per_mp'] / r['ms_per_mp']:.1f}× faster"
                   if "rrdbnet" in ref and r["kind"] != "rrdbnet" else "")
        vs_bic = f"{r['ms_per_mp'] / ref['bicubic']['ms_per_mp']:.0f}× slower" if r["kind"] != "bicubic" else ""
        mem = r.get("peak_vram_mib", r["peak_rss_mib"])
        print(f"{name:<30}{r['scale']:>6}{r['ms_per_mp']:>10.1f}{mem:>10.0f}{vs_rrdb:>14}"
              f"{vs_bic:>14}  {r.get('precision', '')}")
    result = {"device": dev, "rows": rows}
    if a.big:
        big_model = next((m for m in models if m.endswith("x8")), None)
        big = big_run(big_model, a.device)
        result["big"] = big
        print(f"2000×1500 ×8 → {big['output']} ({big['megapixels']:.0f} MP): {big['sec']:.1f} s, "
              f"peak RSS {big['peak_rss_mib'] / 1024:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
