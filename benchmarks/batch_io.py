"""`clipsr batch` throughput with and without background I/O threads (a benchmark, not a test).

    python benchmarks/batch_io.py          # 32 generated 128×128 PNGs, ×4, on this device
    python benchmarks/batch_io.py -m run/model.safetensors --count 64 --size 256 --threads 0 2 4

Generates a folder of smooth synthetic photos (PNG, or --input-format jpeg), loads the model
once, then runs ``clipsr_cli.tasks.batch.run_batch`` over the folder for each --threads value into a
fresh output folder: 0 = read + decode, model, encode + write one after the other in one thread;
N = decoding and encoding on N background threads each, overlapping the model. Reports images/s
(median of --runs, interleaved, after one warm-up run; model loading not counted) and the
speed-up over 0 threads.

Without -m the model is the default architecture (``ModelConfig()``, image-only) with random
weights: the speed of a real checkpoint of that size, without needing one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def make_images(folder: Path, count: int, size: int, fmt: str) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)  # compresses like a photo
        img.save(folder / f"img{i:04d}.{'jpg' if fmt == 'jpeg' else 'png'}", quality=92)


def random_model(path: Path, scale: int) -> Path:
    import torch

    from clipsr_cli.model.network import build_model
    from clipsr_cli.model.checkpoint import save_checkpoint
    from clipsr_cli.model.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(scale=scale)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial weights (the identity-initialised tail would be all zeros)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_checkpoint(path, model, cfg)


def machine(device) -> str:
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch " \
          f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} ({cpu})"
    return f"cpu: {cpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", help="checkpoint or registered name (default: random weights)")
    ap.add_argument("-s", "--scale", type=int, default=4)
    ap.add_argument("--count", type=int, default=32, help="images in the folder")
    ap.add_argument("--size", type=int, default=128, help="input side in pixels")
    ap.add_argument("--input-format", choices=("png", "jpeg"), default="png")
    ap.add_argument("--format", default=None, help="output format (default: the input's)")
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from clipsr_cli.tasks.batch import run_batch
    from clipsr_cli.cli.console import configure
    from clipsr_cli.infer.engine import Upscaler

    configure(quiet=True)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        make_images(src, a.count, a.size, a.input_format)
        model = a.model or str(random_model(tmp / "random.safetensors", a.scale))
        up = Upscaler.load(model, scale=a.scale, device=a.device, precision=a.precision)

        calls = itertools.count()

        def once(threads: int) -> float:
            res = run_batch(inputs=[str(src)], output_dir=tmp / f"out{next(calls)}", upscaler=up,
                            io_threads=threads, format=a.format)
            if up.device.type == "cuda":
                torch.cuda.synchronize()
            if res.count("done") != a.count:
                raise SystemExit(f"only {res.count('done')} of {a.count} images done: "
                                 f"{[f.reason for f in res.failed][:3]}")
            return a.count / res.seconds

        once(a.threads[0])  # warm-up (allocator, cuDNN autotuning, page cache)
        rates: dict[int, list[float]] = {t: [] for t in a.threads}
        for _ in range(a.runs):  # interleaved, so that a drifting machine load hits all alike
            for t in rates:
                rates[t].append(once(t))
        rows = [{"io_threads": t, "images_per_s": statistics.median(r),
                 "runs": [round(x, 3) for x in r]} for t, r in rates.items()]
        dev = machine(up.device)

    base = rows[0]["images_per_s"]
    out_side = a.size * up.scale
    load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"
    print(f"device: {dev}; torch {torch.__version__}; precision "
          f"{str(up.settings.dtype).removeprefix('torch.')}; 1-min load average {load} (other "
          "processes competing for the cores inflate the gain of extra threads)")
    print(f"model: {a.model or 'random-weight ModelConfig() ×' + str(up.scale)}; {a.count} "
          f"{a.input_format.upper()} images {a.size}×{a.size} → {out_side}×{out_side} "
          f"{(a.format or a.input_format).upper()}; median of {a.runs} runs after a warm-up")
    print(f"{'io threads':>10}{'images/s':>12}{'vs 0 threads':>14}")
    for r in rows:
        print(f"{r['io_threads']:>10}{r['images_per_s']:>12.2f}{r['images_per_s'] / base:>13.2f}×")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": dev, "load_average": load,
                                            "args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
