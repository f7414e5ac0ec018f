"""Which degradation strength suits which input: the data behind ``--degradation auto``.

    python benchmarks/denoise_sweep.py --degraded runs/general-x4/model.safetensors
    python benchmarks/denoise_sweep.py            # the registered partner of clipsr-lite-x4

For each LR condition (clean, JPEG at several qualities, Gaussian noise at several σ; made into
the file a user would have, ``clipsr_cli.data.lr_file``) and each fixed strength t (``--denoise``),
the mean Y-PSNR gain over bicubic on the HR photos of ``--data`` (default: shared/data/photos/val),
scored by ``clipsr_cli.tasks.evaluate.evaluate`` (the ``clipsr eval`` protocol), plus what
``auto`` picks and scores. The thresholds of ``clipsr_cli/infer/degradation.py`` are read off this
table. Tuning numbers: they come from the validation photos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "photos" / "val"
CONDITIONS = ["clean", "jpeg:95", "jpeg:90", "jpeg:85", "jpeg:75", "jpeg:50", "jpeg:30",
              "noise:2", "noise:3", "noise:5", "noise:10"]
STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clean", default="clipsr-lite-x4", help="the clean model (name or file)")
    ap.add_argument("--degraded", default=None,
                    help="degradation-aware weights (.safetensors); default: the registry's "
                         "degradation_model of --clean")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--strengths", default=",".join(map(str, STRENGTHS)))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clipsr_cli.infer.degradation import Degradation, partner_weights
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.model.checkpoint import load_checkpoint, read_checkpoint
    from clipsr_cli.hub.resolve import Registered, resolve, resolve_model
    from clipsr_cli.tasks.evaluate import evaluate

    clean_path = Path(args.clean) if Path(args.clean).is_file() else resolve_model(args.clean)
    net = load_checkpoint(clean_path)
    if args.degraded:
        cfg, state, _ = read_checkpoint(args.degraded)
        degraded = {k: v.float() for k, v in state.items()}
    else:
        ref = resolve(args.clean)
        degraded = partner_weights(ref.entry if isinstance(ref, Registered) else None, net,
                                   Degradation())
        if degraded is None:
            ap.error(f"{args.clean} has no registered degradation_model; pass --degraded")
    up = Upscaler(net, device="cpu", precision="fp32", name=args.clean, degraded_state=degraded)
    conditions = [c for c in args.conditions.split(",") if c]
    strengths = [float(t) for t in args.strengths.split(",") if t]
    rows = {}
    t0 = time.perf_counter()
    for cond in conditions:
        row = {}
        for t in strengths + ["auto"]:
            up.degradation = Degradation() if t == "auto" else Degradation(denoise=t)
            rep = evaluate(upscaler=up, data=args.data, degrade=cond)
            gains = [i.gain for i in rep.images]
            row[str(t)] = {"mean": sum(gains) / len(gains), "min": min(gains),
                           "flagged": sum(i.invented_texture for i in rep.images)}
            if t == "auto":
                row["auto"]["denoise"] = [i.denoise for i in rep.images]
        rows[cond] = row
        cells = "  ".join(f"{k:>5}: {v['mean']:+.2f} ({v['min']:+.2f})" for k, v in row.items())
        print(f"{cond:>8}  {cells}  auto t={row['auto']['denoise']}", flush=True)
    print(f"# {len(conditions)} conditions x {len(strengths) + 1} settings in "
          f"{time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; mean gain (min gain) in dB",
          file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "data": args.data,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
