"""Every option value of the exit-2 class is refused before torch is imported (issue #22, item 4):
the CLI runs with ``import torch`` made to fail, and each wrong flag still gets its one-line
usage message and exit status 2, so it is answered as fast as ``--help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (arguments, a fragment of the message)
CASES = [
    (["upscale", "a.png", "-s", "3"], "--scale must be 4, 8 or 16"),
    (["upscale", "a.png", "--tile", "-1"], "--tile must be 'auto', 0 (off) or a positive size"),
    (["upscale", "a.png", "--tile", "big"], "--tile must be 'auto', 0 (off) or a size"),
    (["upscale", "a.png", "--tile-overlap", "-1"], "--tile-overlap must be >= 0"),
    (["upscale", "a.png", "--device", "tpu"], "unknown device 'tpu'"),
    (["upscale", "a.png", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["upscale", "a.png", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["upscale", "a.png", "--format", "gif"], "unknown image format 'gif'"),
    (["upscale", "a.png", "--outscale", "0.5"], "--outscale must be a number >= 1"),
    (["upscale", "a.png", "--width", "0"], "--width must be a whole number of pixels >= 1"),
    (["upscale", "a.png", "--passes", "0"], "--passes must be a whole number >= 1"),
    (["upscale", "a.png", "--suffix", "a/b"], "must not contain a path separator"),
    (["upscale", "a.png", "--outscale", "2", "--width", "9"], "use either --outscale or --width"),
    (["upscale", "a.png", "--quality", "0"], "--quality"),
    (["upscale", "a.png", "--degradation", "blurry"], "--degradation"),
    (["upscale", "a.png", "--denoise", "2"], "--denoise"),
    (["batch", "in", "-o", "out", "-s", "3"], "--scale must be 4, 8 or 16"),
    (["batch", "in", "-o", "out", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["batch", "in", "-o", "out", "--skip-existing", "--overwrite"], "use either --skip-existing"),
    (["batch", "in", "-o", "out", "--batch-size", "0"], "--batch-size"),
    (["batch", "in", "-o", "out", "--shard", "5/4"], "--shard must be K/N"),
    (["batch", "in", "-o", "out", "--text", "a", "--caption-sidecar"], "use only one of --text"),
    (["batch", "in", "-o", "out", "--outscale", "2", "--height", "9"], "use either --outscale"),
    (["edit", "a.png", "-t", "x", "--tile", "-1"], "--tile must be"),
    (["edit", "a.png", "-t", "x", "--device", "tpu"], "unknown device 'tpu'"),
    (["edit", "a.png", "-t", "x", "--sweep", "1"], "--sweep"),
    (["edit", "a.png", "-t", "x", "--sweep", "3", "--strength", "0.5"], "exclude each other"),
    (["edit", "a.png", "-t", "x", "--gif"], "--gif animates a sweep"),
    (["edit", "a.png", "-t", "", "-s", "4"], "target text"),
    (["eval", "-m", "m", "--data", "d", "-s", "3"], "--scale must be 4, 8 or 16"),
    (["eval", "-m", "m", "--data", "d", "--resizer", "nearest"], "--resizer must be one of"),
    (["compare", "a.png", "-m", "m", "--crop", "1,2,3"], "--crop must be x,y,w,h"),
    (["eval", "-m", "m", "--data", "d", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["eval", "-m", "m", "--data", "d", "--degrade", "blur:3"], "--degrade must be clean, jpeg:Q"),
    (["eval", "-m", "m", "--data", "d", "--degrade", "jpeg:101"], "--degrade jpeg needs a whole"),
    (["compare", "a.png", "-m", "m", "--tile-overlap", "-3"], "--tile-overlap must be >= 0"),
    (["video", "a.mp4", "-s", "3"], "--scale must be 4, 8 or 16"),
    (["video", "a.mp4", "-o", "b.mp4", "--codec", "nope"], "unknown video encoder 'nope'"),
    (["video", "a.mp4", "-o", "b.mp4", "--codec", "aac"], "is an audio encoder"),
    (["video", "a.mp4", "-o", "b.mp4", "--codec", "mpeg4", "--crf", "20"], "has no CRF"),
    (["video", "a.mp4", "-o", "b.mp4", "--crf", "99"], "--crf must be a whole number"),
    (["video", "a.mp4", "-o", "b.mp4", "--pix-fmt", "nv99"], "cannot take pixel format"),
    (["video", "a.mp4", "-o", "b.avi"], "end --output with"),
    (["video", "a.mp4", "--shard", "5/4"], "--shard must be K/N"),
    (["video", "a.mp4", "--segment-seconds", "0"], "--segment-seconds must be > 0"),
    (["video", "a.mp4", "--batch-size", "0"], "--batch-size must be"),
    (["video", "a.mp4", "--denoise", "2"], "--denoise"),
    (["train", "--data", "d", "--out", "r", "--scale", "3"], "--scale must be one of"),
    (["train", "--data", "d", "--out", "r", "--precision", "fp64"], "unknown precision 'fp64'"),
    (["train", "--data", "d", "--out", "r", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--data", "d", "--out", "r", "--patch-size", "10"], "--patch-size"),
    (["train", "--data", "d", "--out", "r", "--set", "model.bogus=1"], "bogus"),
]

# Runs in a fresh interpreter whose ``import torch`` raises: each case through the app.
_SCRIPT = r"""
import json, sys
from typer.testing import CliRunner
from clipsr_cli.cli.app import app
out = []
for args, _ in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    err = r.stderr + (repr(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")
    out.append([r.exit_code, err, "torch" in sys.modules])
print(json.dumps(out))
"""


def test_usage_errors_need_no_torch(tmp_path):
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        'raise ImportError("torch imported before the option values were checked")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)]),
           "NO_COLOR": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(CASES)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    failures = []
    for (args, fragment), (code, err, torch_loaded) in zip(CASES, results):
        one_line = err.strip().count("\n") == 0 or "Usage:" in err  # ours, or click's usage block
        if code != 2 or fragment not in err or torch_loaded or not one_line:
            failures.append(f"{' '.join(args)} -> {code}: {err.strip()}")
    assert not failures, "\n".join(failures)


def test_the_shim_really_blocks_torch(tmp_path):
    """The check above can fail: a command that imports torch is caught by the shim."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("blocked")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", "import clipsr_cli.infer.engine"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "blocked" in r.stderr
