"""Speed and memory benchmark (a benchmark, not a test).

    python benchmarks/speed.py                     # built-in models, 256×256 input, this device
    python benchmarks/speed.py --big               # + a 2000×1500 photo ×8 through `clipsr upscale`
    python benchmarks/speed.py -m run/model.safetensors --size 128

In one run, on this device: milliseconds per output megapixel (median of --runs runs after a
warm-up) and peak RSS (VmHWM; peak VRAM on CUDA) of each built-in model with default settings,
untiled (``tile=0``) and with ``tile='auto'``; the ×4 model again on a --x4-size input (the second
stage of the ×16 pipeline on a --size photo, where auto-tiling really tiles); beside SPAN-48
(spandrel's ``SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4)``, random weights,
bf16 on the CPU, channels-last) and PIL bicubic. Every measurement runs in its own subprocess,
so peak memory is its own. The machine and its load average are printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_MODELS = ["clipsr-lite-x4", "clipsr-lite-x8", "clipsr-lite-x16"]


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM): ru_maxrss would include the forking parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

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
                precision: str, tile: str) -> dict:
    import torch

    torch.manual_seed(0)
    lr = torch.rand(1, 3, size, size)
    extra: dict = {}
    if kind == "bicubic":
        from PIL import Image

        img = Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
        scale = 4
        sec = _time(lambda: img.resize((size * scale, size * scale), Image.BICUBIC), runs)
    elif kind == "span":
        from spandrel.architectures.SPAN import SPAN

        from clipsr_cli.infer.devices import resolve_device

        dev = resolve_device(device)
        dtype = torch.bfloat16 if dev.type == "cpu" else torch.float16
        net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4).eval().to(dev)
        x = lr.to(dev)
        if dev.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        scale = 4

        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
                net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, runs)
        extra = {"precision": str(dtype).removeprefix("torch."),
                 "params": sum(p.numel() for p in net.parameters())}
    else:
        from clipsr_cli.infer.engine import Upscaler

        up = Upscaler.load(model, device=device, precision=precision, tile=tile)
        scale = up.scale

        def run():
            up.upscale_array(lr)
            if up.device.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, runs)
        extra = {"precision": str(up.settings.dtype).removeprefix("torch."),
                 "params": up.info.parameters, "tile": tile}
        if up.device.type == "cuda":
            extra["peak_vram_mib"] = torch.cuda.max_memory_allocated() / 2**20
    mp = (size * scale) ** 2 / 1e6
    return {"kind": kind, "model": model, "scale": scale, "size": size, "sec": sec,
            "ms_per_mp": sec * 1000 / mp, "peak_rss_mib": _peak_rss_mib(), **extra}


def _sub(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def big_run(model: str | None, device: str) -> dict:
    """2000×1500 ×8 through the real CLI in a subprocess that reports its own VmHWM."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        # a smooth-ish synthetic photo (noise compresses badly and slows PNG encoding)
        small = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
        Image.fromarray(small).resize((2000, 1500), Image.BICUBIC).save(f"{d}/big.png")
        t = time.perf_counter()
        args = ["upscale", f"{d}/big.png", "-s", "8", "-o", f"{d}/out.png", "--device", device, "-q"]
        if model:
            args += ["-m", model]
        proc = subprocess.run([sys.executable, __file__, "--cli", f"{d}/peak", *args],
                              capture_output=True, text=True)
        sec = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"big run failed: {proc.stderr.strip()}")
        with open(f"{d}/peak") as f:
            rss = float(f.read())
        Image.MAX_IMAGE_PIXELS = None  # our own 192-megapixel output
        w, h = Image.open(f"{d}/out.png").size
    return {"output": f"{w}×{h}", "megapixels": w * h / 1e6, "sec": sec, "peak_rss_mib": rss}


def _run_cli(peak_file: str, args: list[str]) -> None:
    import runpy

    sys.argv = ["clipsr", *args]
    try:
        runpy.run_module("clipsr_cli", run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    finally:
        with open(peak_file, "w") as f:
            f.write(str(_peak_rss_mib()))


def _machine(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return "cuda: " + torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="model name or checkpoint (repeatable)")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--x4-size", type=int, default=1024,
                    help="also the first model on this input side (0: not)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-span", action="store_true")
    ap.add_argument("--big", action="store_true", help="also the 2000×1500 ×8 memory run")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "MODEL", "TILE"), help=argparse.SUPPRESS)
    ap.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.cli:
        return _run_cli(a.cli[0], a.cli[1:])
    if a.one:
        kind, model, tile = a.one
        print(json.dumps(measure_one(kind, None if model == "-" else model, a.size, a.runs,
                                     a.device, a.precision, tile)))
        return
    common = ["--runs", str(a.runs), "--device", a.device, "--precision", a.precision]
    at = ["--size", str(a.size), *common]
    models = a.model or DEFAULT_MODELS
    load0 = os.getloadavg()
    rows = [_sub(["bicubic", "-", "-", *at])]
    if not a.no_span:
        rows.append(_sub(["span", "-", "-", *at]))
    jobs = [(m, a.size) for m in models] + ([(models[0], a.x4_size)] if a.x4_size else [])
    for m, size in jobs:
        for tile in ("0", "auto"):
            rows.append(_sub(["clipsr", m, tile, "--size", str(size), *common]))
    load1 = os.getloadavg()
    print(f"machine: {_machine(a.device)}; python {platform.python_version()}; "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after (1 min)")
    print(f"median of {a.runs} after a warm-up; ms per output megapixel")
    ref = {r["kind"]: r for r in rows}
    print(f"{'model':<24}{'input':>10}{'scale':>6}{'tile':>6}{'ms/MP':>9}{'peak MiB':>10}"
          f"{'auto/untiled':>14}{'vs SPAN-48':>12}  precision")
    untiled = {}
    for r in rows:
        name = r["model"] or {"bicubic": "PIL bicubic", "span": "SPAN-48 (random)"}[r["kind"]]
        key = (r["model"], r["size"])
        ratio = ""
        if r.get("tile") == "0":
            untiled[key] = r["ms_per_mp"]
        elif r.get("tile") == "auto" and key in untiled:
            ratio = f"{r['ms_per_mp'] / untiled[key]:.2f}×"
        vs_span = (f"{r['ms_per_mp'] / ref['span']['ms_per_mp']:.2f}×"
                   if "span" in ref and r["kind"] == "clipsr" else "")
        mem = r.get("peak_vram_mib", r["peak_rss_mib"])
        print(f"{name:<24}{str(r['size']) + '²':>10}{r['scale']:>6}{r.get('tile', '-'):>6}"
              f"{r['ms_per_mp']:>9.1f}{mem:>10.0f}{ratio:>14}{vs_span:>12}  "
              f"{r.get('precision', '')}")
    result = {"machine": _machine(a.device), "loadavg": [load0, load1], "rows": rows}
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
