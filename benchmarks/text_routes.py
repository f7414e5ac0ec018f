"""Which text route carries the caption? Per-route cuts and wrong-caption swaps (issue #21).

    python benchmarks/text_routes.py --scales 8 16 --seeds 0 1 2 --out routes.jsonl
    python benchmarks/text_routes.py --table routes.jsonl      # the markdown of docs/text-path.md

Trains tiny text models on the stripes task of ``tests/synthetic.py`` (the HR texture is named
only by the caption; the LR images of the three textures are identical) with the settings the
tests use (``SHARED_TRAINING``: 200 steps, batch 8, fp32, one thread, ``clipsr-tiny:random``),
at ×8 (96-px images, LR 12, LR patches of 8 px) and ×16 (192-px images, LR 12; the same tiny
network with a fourth ×2 stage; LR patches of 4 px, so that the HR crops are 64 px at both scales
and CLIP's window is the 4-px patch), and measures the mean Y-PSNR (border = scale) on 12 unseen images with:

* ``true``, ``wrong`` (the next kind's caption), ``none`` (the null text) for every route;
* per route (``tif``: the TIFBlocks' γ, β; ``prompt``: the prompt tokens in CLIP's ViT;
  ``film``: the F_U read-out's FiLM): the true caption everywhere except that route, which gets
  the null text (``cut``) or the wrong caption (``wrong``): ``CLIPSR.condition(text_tif=…,
  text_prompt=…, text_film=…)``;
* ``fu_cut``: F_U removed altogether.

Each run appends one JSON line to ``--out`` (runs already there are skipped, so an interrupted
sweep resumes). A benchmark, not a test: it takes ~30-60 s per model on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    # name: ([model] changes, [data] changes)
    "full": ({}, {}),  # the default: TIFBlocks + prompt tokens (fu_film off)
    "prompt_only": ({"tif_text": False, "fu_film": False}, {}),
    "full_film": ({"fu_film": True}, {}),  # + the direct FiLM by t
    "tif_only": ({"fu_fusion": False}, {}),
}


def train_variant(out: Path, scale: int, seed: int, model_changes: dict, data_changes: dict,
                  steps: int):
    from clipsr_cli.model.checkpoint import load_checkpoint
    from clipsr_cli.train.trainer import train
    from tests.synthetic import (SHARED_TRAINING, make_stripes_dataset, one_thread,
                                 stripes_train_config)

    kw = dict(SHARED_TRAINING, steps=steps)
    cfg = stripes_train_config(out, text=True, batch_size=kw.pop("batch_size"), seed=seed, **kw)
    model = dict(model_changes)
    data = dict(data_changes)
    if scale == 16:  # a fourth x2 stage; LR patches of 4 px keep the HR crops at 64 px, as at x8
        model.setdefault("up_widths", (16, 16, 16, 16))
        data.setdefault("patch_size", 4)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, **model),
        data=dataclasses.replace(cfg.data, scale=scale, **data))
    with one_thread():
        return load_checkpoint(train(cfg, source=make_stripes_dataset(size=12 * scale,
                                                                      seed=seed)).export)


def measure(model, scale: int) -> dict[str, float]:
    import torch

    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr
    from tests.synthetic import KINDS, make_stripes_dataset, one_thread

    source = make_stripes_dataset(12, size=12 * scale, seed=123)
    cfg = model.config
    routes = [r for r, on in (("tif", cfg.tif_text), ("prompt", cfg.fu_fusion),
                              ("film", cfg.fu_fusion and cfg.fu_film)) if on]
    cases: dict[str, dict] = {"true": {}, "wrong": {"all": "wrong"}, "none": {"all": "null"}}
    for r in routes:
        cases[f"{r}_cut"] = {r: "null"}
        cases[f"{r}_wrong"] = {r: "wrong"}
    if cfg.fu_fusion:
        cases["fu_cut"] = {"fu": None}
    sums = {k: [] for k in cases}
    with torch.inference_mode(), one_thread():
        null = model.text_embedding([None])
        for i in range(len(source)):
            hr = source.tensor(i)
            lr = degrade(hr, scale)
            kind = source.kinds[i]
            emb = {"true": model.text_embedding([kind]), "null": null,
                   "wrong": model.text_embedding([KINDS[(KINDS.index(kind) + 1) % len(KINDS)]])}
            for name, case in cases.items():
                base = emb[case.get("all", "true")]
                own = {f"text_{r}": emb[case[r]] for r in routes if r in case}
                cond = model.condition(lr, base, **own)
                if "fu" in case:
                    cond = dataclasses.replace(cond, fu=None)
                sr = model(lr, cond).clamp(0, 1)
                sums[name].append(float(psnr(sr, hr, border=scale).mean()))
    return {k: statistics.fmean(v) for k, v in sums.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="extra model./data. changes for every variant, e.g. data.route_dropout=0.3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--tag", default="", help="a label stored with each run")
    ap.add_argument("--out", type=Path, default=Path("text_routes.jsonl"))
    ap.add_argument("--table", type=Path, help="print the markdown table of a results file")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(l) for l in args.table.read_text().splitlines() if l.strip()]))
        return 0
    extra_model, extra_data = {}, {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        v = json.loads(value)
        (extra_model if section == "model" else extra_data)[name] = tuple(v) if isinstance(v, list) else v
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["tag"], r["variant"], r["scale"], r["seed"]))
    for scale in args.scales:
        for variant in args.variants:
            for seed in args.seeds:
                if (args.tag, variant, scale, seed) in done:
                    continue
                mc, dc = VARIANTS[variant]
                mc, dc = {**mc, **extra_model}, {**dc, **extra_data}
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    model = train_variant(Path(tmp), scale, seed, mc, dc, args.steps)
                train_s = time.perf_counter() - t0
                res = measure(model, scale)
                row = {"tag": args.tag, "variant": variant, "scale": scale, "seed": seed,
                       "steps": args.steps, "model": {k: v for k, v in mc.items()},
                       "data": dc, "train_s": round(train_s, 1),
                       **{k: round(v, 2) for k, v in res.items()}}
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


COLUMNS = ["true", "wrong", "none", "fu_cut", "tif_cut", "tif_wrong", "prompt_cut",
           "prompt_wrong", "film_cut", "film_wrong"]


def table(rows: list[dict]) -> str:
    if len({r["tag"] for r in rows}) == 1:  # one sweep: no need to label it
        rows = [dict(r, tag="") for r in rows]
    cols = [c for c in COLUMNS if any(c in r for r in rows)]  # no film columns without fu_film
    head = "| model | ×s | seed | " + " | ".join(c.replace("_", " ") for c in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 3)]
    for r in sorted(rows, key=lambda r: (r["tag"], list(VARIANTS).index(r["variant"]),
                                         r["scale"], r["seed"])):
        name = r["variant"] + (f" ({r['tag']})" if r["tag"] else "")
        cells = [f"{r[c]:.1f}" if c in r else "—" for c in cols]
        lines.append(f"| {name} | ×{r['scale']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "What a route's wrong caption or null text costs (true − that column), min … max "
              "over the seeds:", "",
              "| model | ×s | seeds | true − wrong | " + " | ".join(
                  f"true − {c.replace('_', ' ')}" for c in cols[3:]) + " |",
              "|" + " --- |" * (len(cols) + 1)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["tag"], r["variant"], r["scale"]), []).append(r)
    for (tag, variant, scale), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], list(VARIANTS).index(kv[0][1]), kv[0][2])):
        cells = []
        for c in ["wrong"] + cols[3:]:
            d = [r["true"] - r[c] for r in rs if c in r]
            cells.append(f"{min(d):.1f} … {max(d):.1f}" if d else "—")
        name = variant + (f" ({tag})" if tag else "")
        seeds = ", ".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {name} | ×{scale} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
