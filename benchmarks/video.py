"""Frames per second of ``clipsr video`` (a benchmark, not a test).

    python benchmarks/video.py                          # 480p (854×480) ×4, 12 frames, CPU fp32
    python benchmarks/video.py --frames 48 --device cuda --precision bf16 --batch-size 8
    python benchmarks/video.py --height 720 --width 1280 -m clipsr-lite-x4

Makes a synthetic clip with PyAV (moving shapes over gradients with fine texture and film-like
noise, libx264 at 24 fps, keyframe every 12 frames, a 440 Hz AAC tone) and runs
:func:`clipsr_cli.tasks.video.upscale_video` on it, the same path as ``clipsr video``: decode,
the engine, the encoder (libx264, CRF 18, preset medium), the join with the audio copied.
Prints one JSON line: frames, the whole run's wall time, the frames per second of the upscaling
loop (decode + network + encode, from the progress callback: model loading and the join
excluded), the CPU seconds per frame of the process (all threads; less sensitive than wall time
to other work on a shared machine), and the machine with its load average before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_clip(path: Path, *, width: int, height: int, frames: int, fps: int = 24) -> Path:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 9.0)],
                    axis=-1)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.gop_size = 12
        v.codec_context.time_base = Fraction(1, fps)
        v.codec_context.options = {"crf": "20", "preset": "veryfast"}
        a = c.add_stream("aac", rate=48000, layout="stereo")
        for i in range(frames):
            img = base.copy()
            cx, cy = (i * 9) % width, height // 2 + int(height / 4 * np.sin(i / 5))
            img[max(0, cy - 40):cy + 40, max(0, cx - 60):cx + 60] = (0.9, 0.3, 0.1)
            img += rng.normal(0, 0.02, img.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(
                (np.clip(img, 0, 1) * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        sr, s, total = 48000, 0, int(48000 * frames / fps)
        while s < total:
            k = min(1024, total - s)
            x = (0.2 * np.sin(2 * np.pi * 440 * np.arange(s, s + k) / sr)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = sr, s
            for p in a.encode(af):
                c.mux(p)
            s += k
        for p in a.encode(None):
            c.mux(p)
    return path


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("-m", "--model", default=None, help="default: the built-in ×4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32",
                    help="fp32 on CPUs without native bf16 (bf16 is emulated there, and slow)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--segment-seconds", type=float, default=4.0)
    args = ap.parse_args()

    import torch

    from clipsr_cli.tasks.video import upscale_video

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        clip = make_clip(Path(d) / "clip.mp4", width=args.width, height=args.height,
                         frames=args.frames)
        seen: dict = {}

        def progress(p) -> None:
            if "t0" not in seen:  # before the first frame
                seen["t0"], seen["c0"] = time.perf_counter(), time.process_time()
            seen["t1"], seen["c1"] = time.perf_counter(), time.process_time()

        t = time.perf_counter()
        r = upscale_video(input=clip, output=Path(d) / "out.mp4", model=args.model,
                          scale=None if args.model else 4, device=args.device,
                          precision=args.precision, batch_size=args.batch_size,
                          segment_seconds=args.segment_seconds, progress=progress)
        wall = time.perf_counter() - t
        loop = seen["t1"] - seen["t0"]
        cpu = seen["c1"] - seen["c0"]  # CPU seconds of this process (all threads)
        out_mb = (Path(d) / "out.mp4").stat().st_size / 2**20
    print(json.dumps({
        "input": f"{args.width}x{args.height}", "frames": r.frames,
        "output": f"{r.settings.width}x{r.settings.height}", "model": r.settings.model,
        "device": args.device, "precision": args.precision, "batch_size": args.batch_size,
        "codec": f"{r.settings.codec} crf {r.settings.crf} {r.settings.preset}",
        "fps": round(r.frames_made / loop, 4), "seconds_per_frame": round(loop / r.frames_made, 2),
        "cpu_seconds_per_frame": round(cpu / r.frames_made, 2),
        "wall_seconds": round(wall, 1), "output_MiB": round(out_mb, 2),
        "machine": f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "load_average_before": round(load, 2)}))


if __name__ == "__main__":
    main()
