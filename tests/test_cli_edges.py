"""CLI rough edges (issues #12 and #15): usage errors, special outputs, concurrent batch runs,
sub-folder hint, GIF inputs, progress vs printed paths, help text."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.io import atomic
from clipsr_cli.tasks import batch as B
from clipsr_cli.tasks import batch_run

runner = CliRunner()


def _png(path: Path, w: int = 12, h: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def _one_error_line(r, code: int, pattern: str) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    return lines[0]


# -- #12.10: values that can never work: exit 2, one line, before any work ------------------------
BAD_VALUES = [(["-s", "0"], "--scale"), (["-s", "3"], "--scale"), (["-s", "32"], "--scale"),
              (["--tile", "-1"], "--tile"), (["--tile", "abc"], "--tile"),
              (["--tile-overlap", "-1"], "--tile-overlap"), (["--device", "tpu"], "device"),
              (["--precision", "fp8"], "precision"), (["--format", "gif"], "--format")]


@pytest.mark.parametrize("args, flag", BAD_VALUES)
def test_bad_values_are_usage_errors_in_upscale(tmp_path, args, flag):
    src = _png(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), *args])
    _one_error_line(r, 2, flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("args, flag", BAD_VALUES)
def test_bad_values_are_usage_errors_in_batch(tmp_path, args, flag):
    _png(tmp_path / "in" / "a.png")
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *args])
    _one_error_line(r, 2, flag)
    assert not (tmp_path / "out").exists()


def test_a_suffix_with_a_path_separator_is_a_usage_error(tmp_path, tiny_ckpt):
    _png(tmp_path / "in" / "a.png")
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                            "--suffix", "/x"])
    _one_error_line(r, 2, "--suffix")
    src = _png(tmp_path / "p.png")
    _one_error_line(runner.invoke(app, ["upscale", str(src), "--suffix", "a/b"]), 2, "--suffix")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--suffix", "_big"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tmp_path / "p_big.png")


# -- GIF inputs: batch reads what upscale reads; only the first frame, said once ------------------
def _animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (10, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_batch_accepts_gif_and_animated_inputs_warn(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    _animated_gif(src / "anim.gif")
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "-m",
                            str(tiny_ckpt(4)), "--io-threads", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(tmp_path / "out" / "anim_x4.png")]
    assert "2 frames; only the first is used" in r.stderr
    r = runner.invoke(app, ["upscale", str(src / "anim.gif"), "-m", str(tiny_ckpt(4)), "-o",
                            str(tmp_path / "u.png")])
    assert r.exit_code == 0 and "only the first is used" in r.stderr


# -- #15.5: images only in sub-folders ------------------------------------------------------------
def test_images_only_in_sub_folders_get_a_hint(tmp_path):
    _png(tmp_path / "in" / "sub" / "a.png")
    _png(tmp_path / "in" / "sub" / "deeper" / "b.png")
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "no images to process (2 images in sub-folders; add --recursive)" in r.stderr


# -- #15.4: outputs that are not regular files ----------------------------------------------------
def _read_fifo_in_thread(fifo: Path):
    got: dict[str, bytes] = {}

    def read() -> None:
        with open(fifo, "rb") as f:
            got["data"] = f.read()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


def _release(fifo: Path, t: threading.Thread) -> None:
    """If the command never opened the FIFO, let the reader go (it would block forever)."""
    if t.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    t.join(10)


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_a_fifo_output_is_streamed_never_replaced(tmp_path, tiny_ckpt, flags):
    src = _png(tmp_path / "in.png")
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    t, got = _read_fifo_in_thread(fifo)
    try:
        r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(fifo),
                                *flags])
    finally:
        _release(fifo, t)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO
    assert Image.open(io.BytesIO(got["data"])).size == (48, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporaries


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_character_device_output_is_written_not_replaced(tmp_path, tiny_ckpt):
    src = _png(tmp_path / "in.png")
    dev = tmp_path / "null.png"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(dev),
                            "--overwrite"])
    assert r.exit_code == 0, r.output
    st = os.stat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "null.png"]


# -- #12.4: two --skip-existing runs into one folder ----------------------------------------------
def test_a_live_runs_temporary_file_is_kept(tmp_path, tiny_ckpt):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    _png(src / "a.png")
    _png(src / "b.png", seed=1)
    out.mkdir()
    # another run (a live process of this host: our parent) is writing a_x4.png right now
    theirs = out / f".a_x4.png.{atomic._HOST}~{os.getppid()}~inflight.part"
    theirs.write_bytes(b"\x89PNG being written")
    r = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt(4)),
                            "--skip-existing", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert theirs.read_bytes() == b"\x89PNG being written"
    assert json.loads(rep.read_text())["counts"]["stale_removed"] == 0


@pytest.mark.parametrize("skip", [True, False])
def test_an_output_written_meanwhile_by_another_run(tmp_path, tiny_ckpt, monkeypatch, skip):
    """With --skip-existing an output that appears during the run counts as skipped (exit 0,
    the other run's file kept); without it, it is the usual 'exists' failure (exit 3)."""
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    _png(src / "a.png")
    _png(src / "b.png", seed=1)
    real = batch_run._write

    def other_run_first(job, *a, **kw):
        if job.dest.name == "a_x4.png":
            job.dest.parent.mkdir(parents=True, exist_ok=True)
            job.dest.write_bytes(b"the other run's output")
        return real(job, *a, **kw)

    monkeypatch.setattr(batch_run, "_write", other_run_first)
    args = ["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt(4)), "--report", str(rep)]
    r = runner.invoke(app, args + (["--skip-existing"] if skip else []))
    counts = json.loads(rep.read_text())["counts"]
    assert (out / "a_x4.png").read_bytes() == b"the other run's output"
    assert r.stdout.split() == [str(out / "b_x4.png")]
    if skip:
        assert r.exit_code == 0, r.output
        assert (counts["done"], counts["skipped"], counts["failed"]) == (1, 1, 0)
    else:
        assert r.exit_code == 3 and "--skip-existing" in r.stderr
        assert (counts["done"], counts["skipped"], counts["failed"]) == (1, 0, 1)


# -- #15.6: a live bar and printed paths never share a line ----------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize("same_terminal", [True, False])
def test_paths_never_share_a_line_with_the_progress_bar(same_terminal):
    from clipsr_cli.cli.batch_view import BatchView

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    echoed: list[str] = []
    view = BatchView(console, same_terminal=same_terminal, echo=echoed.append)
    view(B.BatchEvent("start", total=3))
    for i in range(3):
        view(B.BatchEvent("file", name=f"im{i}.png"))
        view(B.BatchEvent("tiles", name=f"im{i}.png", done=1, total=2))
        console.file.flush()
        view(B.BatchEvent("result", result=B.FileResult(f"/in/im{i}.png", f"/out/im{i}_x4.png",
                                                        "done", seconds=0.1)))
    view.close()
    paths = [f"/out/im{i}_x4.png" for i in range(3)]
    if same_terminal:  # printed above the bar, each on its own line
        assert echoed == []
        lines = [ln.strip() for ln in _ANSI.sub("\n", buf.getvalue()).replace("\r", "\n").split("\n")]
        assert [ln for ln in lines if "/out/" in ln] == paths
        assert any("img/s" in ln for ln in lines)  # the bar was drawn
    else:
        assert echoed == paths and "/out/" not in buf.getvalue()


# -- #15.7: help and completion -------------------------------------------------------------------
def test_help_names_the_argument_input_and_offers_completion():
    for cmd in ("upscale", "edit", "batch"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0
        usage = r.stdout.splitlines()[0]
        assert usage == f"Usage: clipsr {cmd} [OPTIONS] INPUT" + ("..." if cmd == "batch" else "")
        assert "{INPUT}" not in r.stdout and "INPUT <str>" not in r.stdout.upper()
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.stdout and "--quiet" in r.stdout
    assert "--overwrite-input" in runner.invoke(app, ["upscale", "--help"]).stdout


def test_root_quiet_applies_to_the_command(tmp_path, tiny_ckpt):
    src = _png(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4))])
    assert r.exit_code == 0 and "×4" in r.stderr
    r = runner.invoke(app, ["-q", "upscale", str(src), "-m", str(tiny_ckpt(4)), "--overwrite"])
    assert r.exit_code == 0 and r.stderr == ""
