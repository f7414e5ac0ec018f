"""Issue #20, data loss (items 1-3): no command writes over a file of its own run.

* a report (``batch``, ``eval``, ``edit``) is judged by the one output policy before any work:
  never an input, a caption/list file or a planned output; a path that can never work is exit 2;
* ``compare --overwrite`` replaces an old grid, never the input or the reference;
* ``batch`` whose outputs would be its inputs refuses (exit 2) instead of ignoring them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app

runner = CliRunner()


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(folder, n=2, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png")
    return folder


@pytest.fixture
def no_model_work(monkeypatch):
    """Any image decode or model load fails the test: the refusal must come first."""
    import clipsr_cli.tasks.batch  # noqa: F401  (bound to the real functions first: a module
    import clipsr_cli.tasks.compare  # noqa: F401   imported under this patch would keep it)
    import clipsr_cli.tasks.edit  # noqa: F401
    import clipsr_cli.tasks.evaluate  # noqa: F401

    def boom(*a, **k):
        raise AssertionError("work started before the report path was judged")

    monkeypatch.setattr("clipsr_cli.tasks.upscale.load_upscaler", boom)
    monkeypatch.setattr("clipsr_cli.io.images.read_image", boom)


@pytest.mark.parametrize("target", ["input", "captions", "list", "output"])
def test_batch_report_never_replaces_a_file_of_the_run(tmp_path, tiny_ckpt, no_model_work,
                                                       target):
    src = _images(tmp_path / "in")
    caps = src / "caps.csv"
    caps.write_text("im0.png,a cat\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{src / 'im0.png'}\n{src / 'im1.png'}\n")
    out = tmp_path / "out"
    report = {"input": src / "im0.png", "captions": caps, "list": listing,
              "output": out / "im1_x2.png"}[target]
    out.mkdir()
    args = ["batch", f"@{listing}" if target == "list" else str(src), "-o", str(out),
            "-m", str(tiny_ckpt(2)), "--report", str(report)]
    if target == "captions":
        args += ["--captions", str(caps)]
    before = {p: _digest(p) for p in (src / "im0.png", src / "im1.png", caps, listing)}
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "refusing to replace" in r.stderr and "--report" in r.stderr
    assert {p: _digest(p) for p in before} == before
    assert not any(out.iterdir())  # nothing ran


@pytest.mark.parametrize("kind", ["missing-folder", "folder"])
def test_batch_report_that_can_never_work_is_a_usage_error_before_work(tmp_path, tiny_ckpt,
                                                                       no_model_work, kind):
    src = _images(tmp_path / "in")
    report = tmp_path / "nope" / "r.json" if kind == "missing-folder" else tmp_path
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "-m",
                            str(tiny_ckpt(2)), "--report", str(report)])
    assert r.exit_code == 2, r.output
    assert "--report" in r.stderr or "does not exist" in r.stderr


def test_eval_report_never_replaces_the_manifest_or_captions(tmp_path, no_model_work):
    data = _images(tmp_path / "hr", size=16)
    manifest = tmp_path / "set.csv"
    manifest.write_text("image,caption\nhr/im0.png,a cat\n")
    caps = tmp_path / "caps.csv"
    caps.write_text("im0.png,a cat\n")
    for args, victim in ((["eval", "-d", str(manifest), "--report", str(manifest)], manifest),
                         (["eval", "-d", str(data), "--captions", str(caps), "--report", str(caps)],
                          caps)):
        before = _digest(victim)
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "refusing to replace" in r.stderr, r.output
        assert _digest(victim) == before
    r = runner.invoke(app, ["eval", "-d", str(data), "--report", str(tmp_path / "no" / "r.json")])
    assert r.exit_code == 2, r.output


def test_edit_report_never_replaces_the_input_even_with_overwrite_input(tmp_path, no_model_work):
    img = _images(tmp_path) / "im0.png"
    before = _digest(img)
    r = runner.invoke(app, ["edit", str(img), "-t", "a cat", "-o", str(tmp_path / "e.png"),
                            "--report", str(img), "--overwrite", "--overwrite-input"])
    assert r.exit_code == 1 and "refusing to replace" in r.stderr, r.output
    assert _digest(img) == before


@pytest.mark.parametrize("victim", ["input", "ref"])
def test_compare_overwrite_never_replaces_the_input_or_the_reference(tmp_path, tiny_ckpt, victim,
                                                                    no_model_work):
    src = _images(tmp_path, n=1, size=8)
    lr = src / "im0.png"
    hr = tmp_path / "hr.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(hr)
    target = lr if victim == "input" else hr
    before = _digest(target)
    r = runner.invoke(app, ["compare", str(lr), "-m", str(tiny_ckpt(2)), "--ref", str(hr),
                            "-o", str(target), "--overwrite"])
    assert r.exit_code == 1, r.output
    assert "refusing to replace" in r.stderr
    assert _digest(target) == before


@pytest.mark.parametrize("how", ["folder", "list", "format"])
def test_batch_whose_outputs_would_be_its_inputs_refuses(tmp_path, tiny_ckpt, no_model_work, how):
    src = _images(tmp_path / "in")
    before = {p: _digest(p) for p in src.iterdir()}
    listing = tmp_path / "l.txt"
    listing.write_text(f"{src / 'im0.png'}\n")
    inputs = f"@{listing}" if how == "list" else str(src)
    extra = ["--format", "png"] if how == "format" else []
    r = runner.invoke(app, ["batch", inputs, "-o", str(src), "--suffix", "", "-m",
                            str(tiny_ckpt(2)), *extra])
    assert r.exit_code == 2, r.output
    assert "would replace it" in r.stderr and "--suffix" in r.stderr
    assert "not images" not in r.stderr
    assert {p: _digest(p) for p in src.iterdir()} == before
