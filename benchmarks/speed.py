"""Speed and memory benchmark (a benchmark, not a test).

    python benchmarks/speed.py                     # built-in models, 256×256 input, this device
    python benchmarks/speed.py --big               # + a 2000×1500 photo ×8 through `clipsr upscale`
    python benchmarks/speed.py -m run/model.safetensors --size 128
    python benchmarks/speed.py --runtimes ort openvino   # + both networks through CPU runtimes

In one run, on this device: milliseconds per output megapixel (median of --runs runs after a
warm-up) and peak RSS (VmHWM; peak VRAM on CUDA) of each built-in model with default settings,
untiled (``tile=0``) and with ``tile='auto'``; the ×4 model again on a --x4-size input (the second
stage of the ×16 pipeline on a --size photo, where auto-tiling really tiles); beside SPAN-48
(spandrel's ``SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4)``, random weights,
deployed: its re-parameterised convolutions fused once, channels-last) in fp32 and in bf16
autocast on the CPU (fp16 on CUDA), and PIL bicubic. Each clipsr row is compared with SPAN-48 at
the precision the clipsr row ran in ("vs SPAN-48"): on a CPU without native bf16 (no AVX512-BF16
/ AMX) the default precision is fp32 and bf16 is emulated, ~10× slower for both networks.

``--runtimes ort openvino`` (needs ``pip install onnxruntime openvino onnxscript``): the first
model's network (the ×4 default path's network, whole image, no engine tiling) and SPAN-48 are
exported once to ONNX (opset 18, dynamic height and width) and each is timed through ONNX Runtime
(CPU provider, all graph optimisations) and OpenVINO (CPU, f32 precision hint, latency), with the
same thread count as torch, the largest difference from torch's fp32 output printed.

Every measurement runs in its own subprocess, so peak memory is its own. The machine and its
load average are printed with the table: measure on an idle machine.
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

DEFAULT_MODELS = ["default:4", "default:8", "default:16"]  # what `clipsr upscale -s S` runs


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


def span_net():
    """SPAN-48 ×4 with fixed random weights, deployed (re-parameterised convs fused once; the
    spandrel module would otherwise re-fuse them on every call)."""
    import torch
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4).eval()
    for m in net.modules():
        if hasattr(m, "update_params"):
            m.update_params()
            m.update_params = lambda: None
    return net


def _load(model: str, **kw):
    """A clipsr engine: ``default:S`` is what `clipsr upscale -s S` runs, else a name or file."""
    from clipsr_cli.infer.options import EngineOptions
    from clipsr_cli.tasks.upscale import load_upscaler

    if model.startswith("default:"):
        return load_upscaler(model=None, scale=int(model.split(":")[1]), options=EngineOptions(**kw))
    return load_upscaler(model=model, scale=None, options=EngineOptions(**kw))


def _network(which: str):
    """``span`` or a clipsr model's network as a plain ``lr -> sr`` module (fp32, CPU)."""
    import torch

    if which == "span":
        return span_net()
    class Net(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, lr):
            return self.model(lr)

    up = _load(which, device="cpu", precision="fp32", tile=0)
    if up.info.text_conditioned or not hasattr(up, "model") or up.scale != 4:
        raise SystemExit(f"{which}: only an image-only ×4 network is exported")
    net = Net(up.model).eval()
    net.name = up.name
    return net


def export_onnx(which: str, path: str) -> None:
    """``which`` (``span`` or a clipsr model) to ONNX at ``path``, dynamic height and width."""
    import torch

    net = _network(which)
    dim = {2: torch.export.Dim("h", min=16, max=8192), 3: torch.export.Dim("w", min=16, max=8192)}
    torch.onnx.export(net, (torch.rand(1, 3, 64, 64),), path, dynamo=True, input_names=["lr"],
                      output_names=["sr"], dynamic_shapes=(dim,), opset_version=18)


def measure_runtime(runtime: str, which: str, onnx_path: str, size: int, runs: int) -> dict:
    """``which`` through ``runtime`` (``ort`` or ``openvino``) on a size² input."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size)
    net = _network(which)
    with torch.inference_mode():
        ref = net(x).numpy()
    xn = x.numpy()
    if runtime == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        name, version = sess.get_inputs()[0].name, ort.__version__

        def run():
            return sess.run(None, {name: xn})[0]
    else:
        import openvino as ov

        core = ov.Core()
        cm = core.compile_model(core.read_model(onnx_path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        req, version = cm.create_infer_request(), ov.__version__

        def run():
            return req.infer({0: xn})[cm.output(0)]
    diff = float(np.abs(run() - ref).max())
    sec = _time(run, runs)
    mp = (size * 4) ** 2 / 1e6
    return {"kind": runtime, "model": which, "name": getattr(net, "name", None), "scale": 4, "size": size, "sec": sec,
            "ms_per_mp": sec * 1000 / mp, "peak_rss_mib": _peak_rss_mib(),
            "precision": "float32", "max_diff_vs_torch": diff, "runtime_version": version}


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
        from clipsr_cli.infer.devices import resolve_device

        dev = resolve_device(device)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        net = span_net().to(dev)
        x = lr.to(dev)
        if dev.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        scale = 4

        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype,
                                                        enabled=dtype != torch.float32):
                net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, runs)
        extra = {"precision": str(dtype).removeprefix("torch."),
                 "params": sum(p.numel() for p in net.parameters())}
    else:
        up = _load(model, device=device, precision=precision, tile=tile)
        scale = up.scale

        def run():
            up.upscale_array(lr)
            if up.device.type == "cuda":
                torch.cuda.synchronize()

        sec = _time(run, runs)
        extra = {"precision": str(up.settings.dtype).removeprefix("torch."), "name": up.name,
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


def _span_precisions(device: str) -> list[str]:
    from clipsr_cli.infer.devices import resolve_device

    return ["fp32", "bf16"] if resolve_device(device).type == "cpu" else ["fp16"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", action="append",
                    help="model name, checkpoint or default:S (repeatable; default: default:4, "
                         "default:8, default:16)")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--x4-size", type=int, default=1024,
                    help="also the first model on this input side (0: not)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-span", action="store_true")
    ap.add_argument("--runtimes", nargs="*", default=[], choices=["ort", "openvino"],
                    help="also the first model's network and SPAN-48 through these CPU runtimes")
    ap.add_argument("--onnx-dir", help="keep the exported ONNX files here (default: a temp dir)")
    ap.add_argument("--big", action="store_true", help="also the 2000×1500 ×8 memory run")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "MODEL", "TILE"), help=argparse.SUPPRESS)
    ap.add_argument("--rt", nargs=3, metavar=("RUNTIME", "NET", "ONNX"), help=argparse.SUPPRESS)
    ap.add_argument("--export", nargs=2, metavar=("NET", "ONNX"), help=argparse.SUPPRESS)
    ap.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.cli:
        return _run_cli(a.cli[0], a.cli[1:])
    if a.export:
        return export_onnx(*a.export)
    if a.rt:
        print(json.dumps(measure_runtime(a.rt[0], a.rt[1], a.rt[2], a.size, a.runs)))
        return
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
        for prec in _span_precisions(a.device):
            rows.append(_sub(["span", "-", "-", "--size", str(a.size), "--runs", str(a.runs),
                              "--device", a.device, "--precision", prec]))
    jobs = [(m, a.size) for m in models] + ([(models[0], a.x4_size)] if a.x4_size else [])
    for m, size in jobs:
        for tile in ("0", "auto"):
            rows.append(_sub(["clipsr", m, tile, "--size", str(size), *common]))
    if a.runtimes:
        with tempfile.TemporaryDirectory() as tmp:
            d = a.onnx_dir or tmp
            os.makedirs(d, exist_ok=True)
            nets = {"span": "span", models[0]: models[0].replace(":", "-")}
            for which, stem in nets.items():
                path = os.path.join(d, f"{stem}.onnx")
                if not os.path.exists(path):
                    ex = subprocess.run([sys.executable, __file__, "--export", which, path],
                                        capture_output=True, text=True)
                    if ex.returncode:
                        raise SystemExit(f"ONNX export of {which} failed:\n{ex.stderr[-3000:]}")
                for rt in a.runtimes:
                    rows.append(_sub_rt([rt, which, path], ["--size", str(a.size), *common]))
    load1 = os.getloadavg()
    _print_table(rows, a, load0, load1)
    result = {"machine": _machine(a.device), "loadavg": [load0, load1],
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "rows": rows}
    if a.big:
        big_model = next((m for m in models if m.endswith("x8") or m == "default:8"), None)
        big = big_run(None if big_model == "default:8" else big_model, a.device)
        result["big"] = big
        print(f"2000×1500 ×8 → {big['output']} ({big['megapixels']:.0f} MP): {big['sec']:.1f} s, "
              f"peak RSS {big['peak_rss_mib'] / 1024:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


def _sub_rt(rt: list[str], args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rt", *rt, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_table(rows: list[dict], a, load0, load1) -> None:
    """One row per measurement; clipsr rows against SPAN-48 at the same precision (torch), runtime
    rows against SPAN-48 through the same runtime."""
    print(f"machine: {_machine(a.device)}; python {platform.python_version()}; "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after (1 min)")
    print(f"median of {a.runs} after a warm-up; ms per output megapixel")
    span = {(r["kind"], r["precision"]): r for r in rows
            if r["kind"] == "span" or (r["kind"] in ("ort", "openvino") and r["model"] == "span")}
    print(f"{'model':<26}{'input':>8}{'scale':>6}{'tile':>6}{'ms/MP':>9}{'peak MiB':>10}"
          f"{'auto/untiled':>14}{'vs SPAN-48':>12}  precision / runtime")
    untiled = {}
    for r in rows:
        kind = r["kind"]
        if kind in ("ort", "openvino"):
            name = ("SPAN-48 (random)" if r["model"] == "span" else r.get("name") or r["model"]) \
                + f" [{kind}]"
        else:
            name = r.get("name") or r["model"] or {"bicubic": "PIL bicubic",
                                                   "span": "SPAN-48 (random)"}[kind]
        key = (r["model"], r["size"])
        ratio = ""
        if r.get("tile") == "0":
            untiled[key] = r["ms_per_mp"]
        elif r.get("tile") == "auto" and key in untiled:
            ratio = f"{r['ms_per_mp'] / untiled[key]:.2f}×"
        ref = None
        if kind == "clipsr":
            ref = span.get(("span", r["precision"]))
        elif kind in ("ort", "openvino") and r["model"] != "span":
            ref = span.get((kind, r["precision"]))
        vs_span = f"{r['ms_per_mp'] / ref['ms_per_mp']:.2f}×" if ref else ""
        how = r.get("precision", "")
        if kind in ("ort", "openvino"):
            how += f" {kind} {r['runtime_version']}, max |Δ| vs torch {r['max_diff_vs_torch']:.1e}"
        mem = r.get("peak_vram_mib", r["peak_rss_mib"])
        print(f"{name:<26}{str(r['size']) + '²':>8}{r['scale']:>6}{r.get('tile', '-'):>6}"
              f"{r['ms_per_mp']:>9.1f}{mem:>10.0f}{ratio:>14}{vs_span:>12}  {how}")


if __name__ == "__main__":
    main()
