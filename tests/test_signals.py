"""Ctrl-C and SIGTERM end clipsr *killed by the signal* after its cleanup, so that a shell loop
running clipsr stops too (issue #22, item 1). Real processes: the signal goes to the process
group, as a terminal sends Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
CLIPSR = f"{sys.executable} -m clipsr_cli"

pytestmark = pytest.mark.slow


def _images(folder: Path, n: int, side: int = 128) -> Path:
    """Enough work that the run is still going when the signal lands, even on a loaded machine
    (a run that finished first would make the loop go on for the wrong reason)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            folder / f"im{i:02d}.png")
    return folder


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[bytes, str]:
    """stdout and stderr of a signalled process (group); one that does not end is killed (the
    whole group: nothing is left running after the test) and reported."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"still running {timeout} s after the signal: {err.decode()}")
    return out, err.decode()


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.part")) if folder.exists() else []


def _as_a_terminal_starts_it() -> None:
    """SIGINT and SIGTERM at their defaults, as in a terminal's foreground job. Whoever started
    pytest may have left them ignored (a background job of a non-interactive shell, ``nohup``,
    some CI runners); ignored signals are inherited across exec, and clipsr rightly keeps an
    inherited SIGINT ignored, so without this the test would measure how pytest was started."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start(cmd, **kw) -> subprocess.Popen:
    """In a new session (its own process group, like a terminal's foreground job)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True,
                            preexec_fn=_as_a_terminal_starts_it, **kw)


def _first_line(proc: subprocess.Popen, timeout: float = 180) -> str:
    """The first stdout line (a batch output, printed once its file is complete); a process that
    never prints is killed so the suite cannot hang."""
    watchdog = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        return proc.stdout.readline().decode().strip()
    finally:
        watchdog.cancel()


def test_ctrl_c_stops_a_shell_loop_of_clipsr_runs(tmp_path, tiny_ckpt):
    """``for i in 1 2; do clipsr batch ...; done`` + Ctrl-C: the loop stops (bash itself ends
    killed by SIGINT, which it does only when its child was killed by SIGINT), the second run
    never starts, and no temporary file is left."""
    src = _images(tmp_path / "in", 40)
    script = (f'for i in 1 2; do echo "run $i" >&2; {CLIPSR} batch {src} -o {tmp_path}/out$i '
              f'-m {tiny_ckpt()} --device cpu; done; echo "after the loop" >&2')
    proc = _start(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = _first_line(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, err = _finish(proc)
    assert first, err
    assert proc.returncode == -signal.SIGINT, err
    assert "run 1" in err and "interrupted" in err
    assert "run 2" not in err and "after the loop" not in err
    assert "Traceback" not in err
    done = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert 0 < len(done) < 40 and Path(first).name in done
    assert _parts(tmp_path / "out1") == [] and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_batch_cleans_up_then_ends_killed_by_the_signal(tmp_path, tiny_ckpt, sig):
    """The child's own wait status: killed by SIGINT (a shell's $? = 130) or SIGTERM (143),
    after the same cleanup (no temporary file, the summary line)."""
    src, out = _images(tmp_path / "in", 40), tmp_path / "out"
    proc = _start([sys.executable, "-m", "clipsr_cli", "batch", str(src), "-o", str(out), "-m",
                   str(tiny_ckpt()), "--device", "cpu"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = _first_line(proc)
    os.killpg(proc.pid, sig)
    _, err = _finish(proc)
    assert first, err
    assert proc.returncode == -sig, err
    assert "interrupted" in err and "Traceback" not in err
    assert 0 < len(list(out.iterdir())) < 40 and _parts(out) == []


def test_ctrl_c_in_training_checkpoints_then_ends_killed_by_sigint(tmp_path):
    """``clipsr train`` + Ctrl-C: the checkpoint is written, then the process ends killed by
    SIGINT (the child's wait status), with no temporary file left."""
    from tests.test_train import _photos

    data, run = _photos(tmp_path / "photos"), tmp_path / "run"
    proc = _start([sys.executable, "-m", "clipsr_cli", "train", "--data", str(data), "--out",
                   str(run), "--scale", "4", "--clip", "none", "--steps", "100000",
                   "--batch-size", "2", "--patch-size", "8", "--log-every", "1", "--device",
                   "cpu", "--precision", "fp32", "--set", "model.encoder_widths=[8, 12, 16]", "--set",
                   "model.body_blocks=1", "--set", "model.up_widths=[8, 8]"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and '"loss"' in metrics.read_text():
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"no logged step within 180 s (rc {proc.returncode}): {err.decode()}")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = _finish(proc, timeout=120)
    assert proc.returncode == -signal.SIGINT, err
    assert "interrupted at step" in err and "Traceback" not in err
    assert out == b""  # no result: the run did not finish
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps and (run / "checkpoint.pt").exists(), sorted(os.listdir(run))
    assert _parts(run) == []
