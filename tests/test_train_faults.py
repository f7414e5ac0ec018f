"""``clipsr train`` against hostile conditions (issue #12): a full disk or an I/O error at each
kind of write, a damaged ``checkpoint.pt`` on resume, and bad command-line values. Each ends in
one line and a documented exit status; a kept checkpoint is never damaged, and ``resume=True``
(``--resume``) is suggested only when there is a checkpoint to resume.

Tiny models on the CPU; the failing writes are simulated by patching the one write helper of
each kind (metrics appends, checkpoint.pt, the model.safetensors export).
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clipsr_cli.errors import TrainingError
from clipsr_cli.train.config import config_from_cli
from tests.test_train import _cfg, _photos


def _fail(*, at: int, code: int = errno.ENOSPC):
    """A write function that raises OSError(code) from its ``at``-th call on (1-based)."""
    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] >= at:
            raise OSError(code, {errno.ENOSPC: "No space left on device",
                                 errno.EIO: "Input/output error"}[code])
    return check


def _patch(monkeypatch, kind: str, check) -> None:
    from clipsr_cli.model import checkpoint as ckpt_mod
    from clipsr_cli.train import rundir

    if kind == "metrics":
        real = rundir.write_all
        monkeypatch.setattr(rundir, "write_all", lambda fd, data: check() or real(fd, data))
    elif kind == "checkpoint":
        real = rundir.atomic_write_bytes

        def w(path, data, **kw):
            if Path(path).name == "checkpoint.pt":
                check()
            return real(path, data, **kw)
        monkeypatch.setattr(rundir, "atomic_write_bytes", w)
    else:  # the export, written by clipsr_cli.model.checkpoint.save_checkpoint
        real = ckpt_mod.atomic_write_bytes

        def w(path, data, **kw):
            if Path(path).name == "model.safetensors":
                check()
            return real(path, data, **kw)
        monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", w)


def _one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), msg
    return msg


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


# -- a full disk ----------------------------------------------------------------------------------
def test_disk_full_at_the_metrics_write_before_any_checkpoint(tmp_path, monkeypatch):
    """Was: an OSError traceback from metrics.jsonl."""
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6)  # log every step, no checkpoint yet
    _patch(monkeypatch, "metrics", _fail(at=3))
    with pytest.raises(TrainingError) as e:
        train(cfg)
    msg = _one_line(str(e.value))
    assert msg.startswith("disk full: cannot write metrics.jsonl at step 3")
    assert re.search(r"needs about \d+\.\d MB free in ", msg), msg
    assert "no checkpoint was written yet" in msg and "resume" not in msg
    assert not (tmp_path / "run/checkpoint.pt").exists()
    assert not list((tmp_path / "run").glob(".*.part"))


def test_disk_full_at_the_metrics_write_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch):
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"checkpoint_every": 2})
    _patch(monkeypatch, "metrics", _fail(at=3))
    with pytest.raises(TrainingError, match=r"at step 3.*keeps the checkpoint of step 2: free some "
                                            r"space and continue with `resume=True`$"):
        train(cfg)
    assert _step_of(tmp_path / "run/checkpoint.pt") == 2
    monkeypatch.undo()  # space freed: the run continues from step 2 to the end
    again = config_from_cli(config=None, preset=None, resume=True, flags={"run": {"out": cfg.run.out}})
    assert train(again, resume=True).step == 6
    steps = [json.loads(l)["step"] for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_disk_full_at_the_checkpoint_write_names_the_space_needed(tmp_path, monkeypatch):
    """Was: a warning, training went on, and the final error said to resume without a checkpoint."""
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"checkpoint_every": 2})
    _patch(monkeypatch, "checkpoint", _fail(at=1))
    with pytest.raises(TrainingError) as e:
        train(cfg)
    msg = _one_line(str(e.value))
    assert msg.startswith("disk full: cannot write checkpoint.pt at step 2")
    assert "no checkpoint was written yet" in msg and "resume" not in msg
    assert not (tmp_path / "run/checkpoint.pt").exists()
    assert not list((tmp_path / "run").glob(".*.part"))
    # the space named is what a checkpoint + export really take (within 25 %)
    need = float(re.search(r"needs about (\d+\.\d) MB", msg).group(1)) * 1e6
    monkeypatch.undo()
    res = train(_cfg(tmp_path / "b", _photos(tmp_path / "p"), steps=2))
    real = (res.run_dir / "checkpoint.pt").stat().st_size + res.export.stat().st_size
    assert abs(need - real) <= 0.25 * real, (need, real)


def test_disk_full_at_the_export_keeps_the_new_checkpoint(tmp_path, monkeypatch):
    """checkpoint.pt is written first: when the export fails, the checkpoint of that step is
    complete (was: the run went on and the message named an older step)."""
    from clipsr_cli.model.checkpoint import read_checkpoint
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"checkpoint_every": 2})
    _patch(monkeypatch, "export", _fail(at=2))
    with pytest.raises(TrainingError, match=r"^disk full: cannot write model.safetensors at step 4.*"
                                            r"keeps the checkpoint of step 4.*`resume=True`$"):
        train(cfg)
    assert _step_of(tmp_path / "run/checkpoint.pt") == 4
    _, _, meta = read_checkpoint(tmp_path / "run/model.safetensors")
    assert json.loads(meta["training"])["step"] == 2  # the previous export, intact
    assert not list((tmp_path / "run").glob(".*.part"))


def test_io_error_says_check_the_disk(tmp_path, monkeypatch):
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"checkpoint_every": 2})
    _patch(monkeypatch, "checkpoint", _fail(at=2, code=errno.EIO))
    with pytest.raises(TrainingError) as e:
        train(cfg)
    msg = _one_line(str(e.value))
    assert msg.startswith("cannot write checkpoint.pt at step 4 (Input/output error); check the disk")
    assert "disk full" not in msg and "keeps the checkpoint of step 2: fix the disk" in msg
    assert _step_of(tmp_path / "run/checkpoint.pt") == 2


def test_cli_disk_full_is_one_line_naming_resume_only_with_a_checkpoint(tmp_path, monkeypatch):
    from clipsr_cli.cli.app import app

    data = _photos(tmp_path / "p")
    base = ["train", "--data", str(data), "--scale", "4", "--clip", "none", "--steps", "6",
            "--batch-size", "4", "--patch-size", "8", "--device", "cpu", "--log-every", "1",
            "--set", "model.encoder_widths=[8, 12, 16]", "--set", "model.body_blocks=1",
            "--set", "model.up_widths=[8, 8]", "-q"]
    for out, every, resume in (("a", "1000", False), ("b", "2", True)):
        monkeypatch.undo()
        _patch(monkeypatch, "metrics", _fail(at=3))
        r = CliRunner().invoke(app, base + ["--out", str(tmp_path / out), "--checkpoint-every", every])
        lines = [l for l in r.output.splitlines() if l.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: disk full"), r.output
        assert ("--resume" in lines[0]) is resume and "`" not in lines[0]


# -- a damaged checkpoint on resume -----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "foreign"])
def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, damage):
    """Was: IndexError for a 0-byte file; torch's advice to unpickle for a garbage one."""
    from clipsr_cli.cli.app import app
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=2)
    train(cfg)
    p = tmp_path / "run/checkpoint.pt"
    good = p.read_bytes()
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, p)
    else:
        p.write_bytes({"empty": b"", "truncated": good[:len(good) // 2],
                       "garbage": b"\x80\x02garbage" * 50}[damage])
    with pytest.raises(TrainingError, match="cannot resume: .*checkpoint.pt (is empty|is damaged|is "
                                            "not a clipsr training checkpoint)"):
        train(config_from_cli(config=None, preset=None, resume=True,
                              flags={"run": {"out": cfg.run.out, "steps": 4}}), resume=True)
    r = CliRunner().invoke(app, ["train", "--out", cfg.run.out, "--resume", "--steps", "4", "-q"])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    line = lines[0]
    assert "weights_only" not in line and "Traceback" not in line
    # what to do: start a new run from the export of step 2, or remove the checkpoint
    assert f"--init {tmp_path / 'run/model.safetensors'}" in line and "(step 2)" in line
    assert f"remove {p}" in line


def test_resume_with_a_damaged_checkpoint_and_no_export(tmp_path):
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=2)
    train(cfg)
    (tmp_path / "run/checkpoint.pt").write_bytes(b"")
    (tmp_path / "run/model.safetensors").unlink()
    with pytest.raises(TrainingError, match=r"is empty \(0 bytes\); remove it \(and "
                                            r"model.safetensors\) to start .* again, or start a new "
                                            r"run in another `out`$"):
        train(config_from_cli(config=None, preset=None, resume=True,
                              flags={"run": {"out": cfg.run.out, "steps": 4}}), resume=True)


# -- bad command-line values: exit status 2 -----------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--scale", "3"], "--scale must be one of"),
    (["--patch-size", "10"], "--patch-size 10 must be a positive multiple of 4"),
    (["--steps", "0"], "--steps must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--lr", "0"], "--lr"),
    (["--time-limit", "-1"], "--time-limit must be >= 0"),
    (["--val-every", "0"], "--val-every"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--format", "cubs"], "unknown dataset format 'cubs'"),
    (["--precision", "fp64"], "unknown precision 'fp64'"),
    (["--degradation", "blur"], "must be one of"),
    (["--preset", "fast"], "unknown preset 'fast'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--set", "data.caption_dropout=2"], "caption_dropout must be in [0, 1]"),
    (["--set", "loss.d_layers=[0, 4, 8]"], "counts ViT blocks from 1"),
])
def test_cli_bad_values_are_usage_errors(tmp_path, args, words):
    from clipsr_cli.cli.app import app

    data = _photos(tmp_path / "p", n=1)
    device = [] if "--device" in args else ["--device", "cpu"]  # an option given twice is refused
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r"),
                                 "--clip", "none", *device, "-q", *args])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and words in lines[0], r.output


def test_a_bad_value_in_the_config_file_stays_an_input_error(tmp_path):
    from clipsr_cli.cli.app import app

    f = tmp_path / "c.toml"
    f.write_text("[data]\nscale = 3\n")
    r = CliRunner().invoke(app, ["train", "--config", str(f), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "must be one of" in r.output
