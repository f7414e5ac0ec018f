"""The hostile-input matrix of issue #20: every case as a real ``clipsr`` child process under a
memory cap and a timeout; prints each case and ``held N / tried M``.

    python benchmarks/hostile.py [--jobs 2] [--timeout 120] [--cap-gib 3] [-k SUBSTRING]

A case *holds* when the child ends by itself within the timeout (no OOM kill, no hang) with the
documented exit status, its stderr's last line is one ``error:`` line (no traceback, no
allocator trace such as ``enforce fail``), and the files it must not touch are unchanged (and
the output it must not write is absent).

The cap is ``RLIMIT_DATA`` (heap and anonymous memory): ``RLIMIT_AS`` cannot be used for a torch
process, whose shared libraries alone map ~3.1 GiB of address space on this machine (VmSize
right after ``import torch``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    name: str
    args: list[str]
    codes: tuple[int, ...] = (1, 2)
    env: dict = field(default_factory=dict)
    keep: tuple[str, ...] = ()  # files that must be unchanged
    absent: tuple[str, ...] = ()  # files that must not be written
    expect: str = ""  # text the error line must contain


def _png(path: Path, size=(16, 16)):
    from PIL import Image

    w, h = size
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)).save(path)


def _zip_bomb(path: Path, inflated: int):
    """A torch.save-like archive whose tensor record inflates to ``inflated`` bytes of zeros."""
    import collections as c
    import io
    import pickle

    import torch

    class Storage:
        pass

    class T:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(), 0, (inflated // 4,), (1,), False, c.OrderedDict()))

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", inflated // 4) \
                if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"params": {"conv.weight": T()}})
    with zipfile.ZipFile(path, "w", compresslevel=1) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        zi = zipfile.ZipInfo("archive/data/0")
        zi.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(64 << 20)
        with z.open(zi, "w", force_zip64=True) as f:
            for _ in range(inflated // len(chunk)):
                f.write(chunk)


def build(d: Path, bomb_gib: int) -> list[Case]:
    """Make the hostile files in ``d`` and return the cases."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    sys.path.insert(0, str(ROOT))
    from clipsr_cli.model.checkpoint import save_checkpoint
    from clipsr_cli.model.network import build_model
    from tests.conftest import tiny_model_config

    (d / "in").mkdir()
    for i in range(2):
        _png(d / "in" / f"im{i}.png")
    (d / "in" / "caps.csv").write_text("im0.png,a cat\n")
    (d / "list.txt").write_text(f"{d}/in/im0.png\n")
    _png(d / "big.png", (512, 512))
    _png(d / "s64.png", (64, 64))
    torch.manual_seed(0)
    cfg = tiny_model_config(2)
    save_checkpoint(d / "tiny.safetensors", build_model(cfg), cfg)
    bad = build_model(cfg)
    with torch.no_grad():
        next(bad.parameters()).fill_(float("nan"))
    save_checkpoint(d / "nan.safetensors", bad, cfg)
    sd = {k: v.clone() for k, v in Compact(num_feat=8, num_conv=2, upscale=4).state_dict().items()}
    sd.update({"body.0.weight": torch.randn(20000, 3, 3, 3), "body.0.bias": torch.randn(20000),
               "body.1.weight": torch.randn(20000)})
    torch.save({"params": sd}, d / "wide.pth")
    save_file(sd, str(d / "wide.safetensors"))
    es = {k: v.clone() for k, v in ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1,
                                          scale=4).state_dict().items()}
    es.update({"model.0.weight": torch.randn(20000, 3, 3, 3), "model.0.bias": torch.randn(20000)})
    torch.save(es, d / "wide-esrgan.pth")
    _zip_bomb(d / "bomb.pth", bomb_gib << 30)
    os.link(d / "bomb.pth", d / "bomb.ckpt")
    for name in ("fifo.safetensors", "fifo.pth", "fifo.toml", "fifo.txt", "fifo.csv"):
        os.mkfifo(d / name)
    (d / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "nul.toml").write_text('[[model]]\nname = "x"\nkind = "generator"\nscale = 4\n'
                                'text_guided = false\ndescription = "d"\nlicense = "MIT"\n'
                                f'sha256 = "{"0" * 64}"\nfile = "x\\u0000.safetensors"\n'
                                'urls = ["https://example.invalid/x"]\n')
    (d / "src.toml").write_text('[[model]]\nname = "z"\nkind = "generator"\nscale = 4\n'
                                'text_guided = false\ndescription = "d"\nlicense = "MIT"\n'
                                f'sha256 = "{"0" * 64}"\nfile = "z.safetensors"\n'
                                f'urls = ["file://{d}/fifo.txt"]\n')
    (d / "zero.toml").write_text((d / "src.toml").read_text().replace(f"{d}/fifo.txt",
                                                                     "/dev/zero"))
    (d / "ev").mkdir()
    _png(d / "ev" / "ok.png", (64, 64))
    _png(d / "ev" / "dot.png", (1, 1))
    long = d / ("a" * 250 + ".png")
    _png(long)
    m = str(d / "tiny.safetensors")
    im0, caps = str(d / "in" / "im0.png"), str(d / "in" / "caps.csv")
    keep_in = (im0, str(d / "in" / "im1.png"), caps)
    C = Case
    return [
        # data loss (1-3)
        C("report = an input image", ["batch", f"{d}/in", "-o", f"{d}/o1", "-m", m, "--report", im0],
          keep=keep_in),
        C("report = the captions", ["batch", f"{d}/in", "-o", f"{d}/o2", "-m", m, "--captions",
                                    caps, "--report", caps], keep=keep_in),
        C("report = the list file", ["batch", f"@{d}/list.txt", "-o", f"{d}/o3", "-m", m,
                                     "--report", f"{d}/list.txt"], keep=(f"{d}/list.txt",)),
        C("report in a missing folder", ["batch", f"{d}/in", "-o", f"{d}/o4", "-m", m,
                                         "--report", f"{d}/nope/r.json"], codes=(2,),
          absent=(f"{d}/o4/im0_x2.png",)),
        C("report = a folder", ["batch", f"{d}/in", "-o", f"{d}/o5", "-m", m, "--report", str(d)],
          codes=(2,), absent=(f"{d}/o5/im0_x2.png",)),
        C("eval report = the captions", ["eval", "-d", f"{d}/ev", "-m", m, "--captions", caps,
                                         "--report", caps], keep=(caps,)),
        C("edit report = the input", ["edit", im0, "-t", "x", "-o", f"{d}/e.png", "--report", im0,
                                      "--overwrite", "--overwrite-input"], keep=keep_in),
        C("compare -o input --overwrite", ["compare", im0, "-m", m, "-o", im0, "--overwrite"],
          keep=keep_in),
        C("compare -o ref --overwrite", ["compare", im0, "-m", m, "--ref", f"{d}/in/im1.png",
                                         "-o", f"{d}/in/im1.png", "--overwrite"], keep=keep_in),
        C("batch -o DIR --suffix ''", ["batch", f"{d}/in", "-o", f"{d}/in", "--suffix", "",
                                       "-m", m], codes=(2,), keep=keep_in),
        C("batch @list -o DIR --suffix ''", ["batch", f"@{d}/list.txt", "-o", f"{d}/in",
                                             "--suffix", "", "-m", m], codes=(2,), keep=keep_in),
        # memory and size (4-7)
        C("inspect widened Compact .pth", ["inspect", f"{d}/wide.pth"], expect="crafted"),
        C("upscale -m widened Compact .safetensors", ["upscale", im0, "-m",
                                                      f"{d}/wide.safetensors", "-o",
                                                      f"{d}/w.png"], expect="crafted",
          absent=(f"{d}/w.png",)),
        C("upscale -m widened ESRGAN .pth", ["upscale", im0, "-m", f"{d}/wide-esrgan.pth", "-o",
                                             f"{d}/w2.png"], expect="crafted"),
        C(f"inspect {bomb_gib} GiB zip bomb .pth", ["inspect", f"{d}/bomb.pth"],
          expect="once unpacked"),
        C(f"upscale -m {bomb_gib} GiB zip bomb .ckpt", ["upscale", im0, "-m", f"{d}/bomb.ckpt",
                                                        "-o", f"{d}/b.png"], expect="once unpacked"),
        C("CLIPSR_REGISTRY=/dev/zero", ["models"], env={"CLIPSR_REGISTRY": "/dev/zero"}),
        C("CLIPSR_REGISTRY=FIFO", ["models"], env={"CLIPSR_REGISTRY": f"{d}/fifo.toml"}),
        C("batch @/dev/zero", ["batch", "@/dev/zero", "-o", f"{d}/o6", "-m", m]),
        C("batch @FIFO", ["batch", f"@{d}/fifo.txt", "-o", f"{d}/o7", "-m", m]),
        C("upscale /dev/zero", ["upscale", "/dev/zero", "-o", f"{d}/z.png", "-m", m]),
        C("upscale /dev/urandom", ["upscale", "/dev/urandom", "-o", f"{d}/z.png", "-m", m]),
        C("upscale -m FIFO.safetensors", ["upscale", im0, "-m", f"{d}/fifo.safetensors", "-o",
                                          f"{d}/f.png"]),
        C("inspect FIFO.pth", ["inspect", f"{d}/fifo.pth"]),
        C("batch --captions FIFO", ["batch", f"{d}/in", "-o", f"{d}/o8", "-m", m, "--captions",
                                    f"{d}/fifo.csv"]),
        C("download file:// FIFO", ["download", "z"], env={"CLIPSR_REGISTRY": f"{d}/src.toml"}),
        C("download file:///dev/zero", ["download", "z"],
          env={"CLIPSR_REGISTRY": f"{d}/zero.toml"}),
        C("download --from /dev/zero", ["download", "z", "--from", "/dev/zero"],
          env={"CLIPSR_REGISTRY": f"{d}/src.toml"}),
        C("compare --crop 0,0,1,512", ["compare", f"{d}/big.png", "-m", m, "--crop", "0,0,1,512",
                                       "-o", f"{d}/grid.png"], codes=(0,)),
        C("upscale --passes 5 (x2)", ["upscale", f"{d}/s64.png", "-m", m, "--passes", "12", "-o",
                                      f"{d}/p.png"], absent=(f"{d}/p.png",)),
        C("upscale --width 1e6", ["upscale", im0, "-m", m, "--width", "1000000", "-o",
                                  f"{d}/wd.png"], absent=(f"{d}/wd.png",)),
        C("batch --batch-size 1000000", ["batch", f"{d}/in", "-o", f"{d}/o9", "-m", m,
                                         "--batch-size", "1000000"], codes=(2,)),
        # messages (8-9)
        C("registry nested 5000 deep", ["models"], env={"CLIPSR_REGISTRY": f"{d}/deep.toml"}),
        C("registry file name with NUL", ["models"], env={"CLIPSR_REGISTRY": f"{d}/nul.toml"}),
        C("250-character input name", ["upscale", str(long), "-m", m]),
        C("inspect DIR", ["inspect", f"{d}/in"]),
        # wrong results (10-12)
        C("NaN weights: upscale", ["upscale", im0, "-m", f"{d}/nan.safetensors", "-o",
                                   f"{d}/nan.png"], codes=(1,), absent=(f"{d}/nan.png",),
          expect="non-finite"),
        C("NaN weights: batch", ["batch", f"{d}/in", "-o", f"{d}/o10", "-m",
                                 f"{d}/nan.safetensors"], codes=(1,),
          absent=(f"{d}/o10/im0_x2.png",), expect="non-finite"),
        C("eval with a 1x1 image", ["eval", "-d", f"{d}/ev", "-m", m], codes=(0,)),
        C("edit -t x500", ["edit", im0] + ["-t", "a"] * 500, codes=(2,)),
        C("upscale -m a -m b", ["upscale", im0, "-m", m, "-m", m], codes=(2,)),
    ]


def _digest(p: str) -> str | None:
    try:
        return hashlib.sha256(Path(p).read_bytes()).hexdigest()
    except OSError:
        return None


def run(case: Case, d: Path, timeout: float, cap: int) -> tuple[bool, str]:
    before = {p: _digest(p) for p in case.keep}

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
           "CLIPSR_HOME": str(d / "home"), "OMP_NUM_THREADS": "1", **case.env}
    env.pop("CLIPSR_REGISTRY", None) if "CLIPSR_REGISTRY" not in case.env else None
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "clipsr_cli", *case.args], env=env,
                           capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                           stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    secs = time.monotonic() - t0
    err = p.stderr.strip().splitlines()
    last = err[-1] if err else ""
    why = []
    if p.returncode not in case.codes:
        why.append(f"exit {p.returncode}")
    if "Traceback" in p.stderr or "enforce fail" in p.stderr:
        why.append("traceback/allocator trace")
    if case.codes != (0,) and not (last.startswith("error:") or last.startswith("Error:")):
        why.append("no error line")
    if case.expect and case.expect not in p.stderr:
        why.append(f"no {case.expect!r}")
    if {q: _digest(q) for q in case.keep} != before:
        why.append("a kept file changed")
    if any(Path(a).exists() for a in case.absent):
        why.append("an output was written")
    return not why, f"{'; '.join(why) or 'held'} ({secs:.0f} s, exit {p.returncode}): {last[:110]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--cap-gib", type=float, default=3)
    ap.add_argument("--bomb-gib", type=int, default=5)
    ap.add_argument("-k", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipsr-hostile-") as tmp:
        d = Path(tmp)
        cases = [c for c in build(d, a.bomb_gib) if a.k in c.name]
        cap = int(a.cap_gib * (1 << 30))
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda c: (c, *run(c, d, a.timeout, cap)), cases))
    tally = collections.Counter(ok for _, ok, _ in results)
    for c, ok, msg in results:
        print(f"{'HELD  ' if ok else 'BROKEN'} {c.name}: {msg}")
    print(f"held {tally[True]} / tried {len(results)} (RLIMIT_DATA {a.cap_gib:g} GiB, "
          f"timeout {a.timeout:.0f} s each)")


if __name__ == "__main__":
    main()
