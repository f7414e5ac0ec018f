"""A newcomer's first hour (issue #22): what the headline command says about the text, `-o -`,
`compare` judging scales first and its labels, training on small images, completion of values,
`-v`, and the smaller rough edges. (Ctrl-C: tests/test_signals.py; usage errors before torch:
tests/test_usage_before_torch.py.)"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.infer.options import EngineOptions

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _photo(path: Path, size=(12, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# -- item 2: --text with an image-only model says how to get a text-guided one ----------------------
def test_text_on_an_image_only_model_says_how_to_get_a_text_guided_one(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "bird.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--device", "cpu",
                            "--text", "a toucan"])
    assert r.exit_code == 0, r.output
    warning = " ".join(line for line in r.stderr.splitlines() if "warning" in line)
    assert "not text-conditioned; --text is ignored" in warning
    assert "clipsr train --data DIR --out RUN" in warning and "docs/training.md" in warning
    assert "--model RUN/model.safetensors" in warning


def test_batch_captions_on_an_image_only_model_say_it_too(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a.png")
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "-m",
                            str(tiny_ckpt(4)), "--device", "cpu", "--text", "a toucan"])
    assert r.exit_code == 0, r.output
    assert "the captions are ignored" in r.stderr and "clipsr train" in r.stderr


def test_readme_first_screen_says_text_needs_a_text_guided_model():
    """The first screen (the lines before Quickstart): --text needs a text-guided model, none
    ships, and the command that makes one."""
    readme = (ROOT / "README.md").read_text()
    first = readme[:readme.index("## Quickstart")]
    flat = re.sub(r"\s+", " ", first)
    assert "`--text` needs a text-guided model" in flat
    assert "clipsr train --data DIR" in flat and "docs/training.md" in flat
    # the text example uses a model path that training writes, not an invented name
    example = next(line for line in first.splitlines() if "--text" in line and "upscale" in line)
    assert "model.safetensors" in example


# -- item 3: `-o -` writes the input's format, as --help says ---------------------------------------
def test_stdout_output_takes_the_input_format(tmp_path, tiny_ckpt):
    ckpt = str(tiny_ckpt(4))
    for name, pil_format, expected in (("a.jpg", "JPEG", "JPEG"), ("a.webp", "WEBP", "WEBP"),
                                       ("a.gif", "GIF", "PNG"), ("a.png", "PNG", "PNG")):
        src = tmp_path / name
        Image.fromarray(np.full((10, 12, 3), 120, np.uint8)).save(src, pil_format)
        by_name = runner.invoke(app, ["upscale", str(src), "-o", "-", "-m", ckpt, "-q"])
        piped = runner.invoke(app, ["upscale", "-", "-o", "-", "-m", ckpt, "-q"],
                              input=src.read_bytes())
        for r in (by_name, piped):
            assert r.exit_code == 0, r.output
            with Image.open(io.BytesIO(r.stdout_bytes)) as out:
                assert (out.format, out.size) == (expected, (48, 40)), name
    # --format still wins
    r = runner.invoke(app, ["upscale", str(tmp_path / "a.jpg"), "-o", "-", "-f", "png", "-m",
                            ckpt, "-q"])
    assert r.exit_code == 0 and Image.open(io.BytesIO(r.stdout_bytes)).format == "PNG"


# -- item 5: compare judges scales before running anything; labels that tell paths apart ------------
def test_compare_refuses_mixed_scales_before_running_a_model(tmp_path, monkeypatch, tiny_ckpt):
    import clipsr_cli.tasks.compare as C

    def never(*a, **k):
        raise AssertionError("a model ran although the scales were known to differ")

    monkeypatch.setattr(C.Upscaler, "load", never)
    src = _photo(tmp_path / "a.png")
    for models in (["clipsr-lite-x4", "clipsr-lite-x8"], [str(tiny_ckpt(4)), str(tiny_ckpt(8))]):
        args = ["compare", str(src), "-o", str(tmp_path / "g.png")]
        for m in models:
            args += ["-m", m]
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert "must all upscale by one factor" in r.stderr and "×4" in r.stderr and "×8" in r.stderr
    assert not (tmp_path / "g.png").exists()


def test_compare_labels_are_the_shortest_distinguishing_paths(tmp_path, tiny_ckpt):
    from clipsr_cli.tasks.compare import compare, short_names

    assert short_names(["runs/a/model.safetensors", "runs/b/model.safetensors",
                        "clipsr-lite-x4", "x/c.pth"]) == [
        "a/model.safetensors", "b/model.safetensors", "clipsr-lite-x4", "c.pth"]
    assert short_names(["p/a/m.st", "q/a/m.st", "r/b/m.st"]) == ["p/a/m.st", "q/a/m.st", "b/m.st"]
    assert short_names(["same/m.st", "same/m.st"]) == ["m.st", "m.st"]  # the same file twice
    ckpts = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        ckpts.append(tmp_path / run / "model.safetensors")
        ckpts[-1].write_bytes(tiny_ckpt(4).read_bytes())
    res = compare(input=str(_photo(tmp_path / "a.png")), models=[str(c) for c in ckpts],
                  options=EngineOptions(device="cpu"))
    assert [r.label.split("\n")[0] for r in res.runs] == ["one/model.safetensors",
                                                         "two/model.safetensors"]


# -- item 6: training on images mostly smaller than the patch stops with the patch that fits -------
def test_training_names_small_files_and_stops_when_most_are_too_small(tmp_path):
    import logging

    import pytest

    from clipsr_cli.errors import DataError, log
    from clipsr_cli.train.trainer import train
    from tests.test_train import _cfg, _photos

    data = _photos(tmp_path / "birds", n=4, size=(28, 40))  # HR patch 32: 28 is too small
    _photos(tmp_path / "big", n=1, size=(48, 48))
    (tmp_path / "big" / "img0.png").rename(data / "large.png")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    try:
        with pytest.raises(DataError) as e:
            train(_cfg(tmp_path, data, steps=1))
    finally:
        log.removeHandler(handler)
    msg = str(e.value)
    assert "4 of 5 images are smaller than the 32x32 HR patch" in msg
    assert "training would use only 1" in msg and "`patch_size=4`" in msg
    warned = " ".join(seen)
    assert "img0.png is 28x40: its shorter side is below the 32 px HR patch" in warned
    assert "image 0 is" not in warned
    # most images big enough: training goes on, skipping the small one
    for i in (1, 2, 3):
        (data / f"img{i}.png").unlink()
    for i in range(3):
        (tmp_path / f"b{i}").mkdir()
        _photos(tmp_path / f"b{i}", n=1, size=(48, 48), seed=i + 1)
        (tmp_path / f"b{i}" / "img0.png").rename(data / f"large{i}.png")
    assert train(_cfg(tmp_path / "ok", data, steps=1)).step == 1


# -- item 7: completion of option values ------------------------------------------------------------
def _complete(args: list[str], incomplete: str) -> list[str]:
    """What ``clipsr ARGS INCOMPLETE<TAB>`` offers, through the shell-completion protocol."""
    words = ["clipsr", *args, incomplete]
    r = runner.invoke(app, [], prog_name="clipsr", env={
        "_CLIPSR_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1)})
    assert r.exit_code == 0, r.output
    return r.stdout.split()


def test_completion_offers_values(tmp_path):
    assert _complete(["upscale", "a.png", "--device"], "") == ["auto", "cpu", "cuda", "mps",
                                                               "cuda:0", "cuda:1"]
    assert _complete(["upscale", "a.png", "--precision"], "b") == ["bf16"]
    assert _complete(["batch", "in", "-o", "out", "--format"], "") == ["png", "jpeg", "webp",
                                                                       "tiff", "bmp"]
    assert _complete(["upscale", "a.png", "-s"], "1") == ["16"]
    models = _complete(["upscale", "a.png", "-m"], "clipsr-")
    assert {"clipsr-lite-x4", "clipsr-lite-x8", "clipsr-lite-x16"} <= set(models)
    assert not any(m.startswith("clip-") for m in _complete(["compare", "a.png", "-m"], ""))
    assert "clip-vit-b-32" in _complete(["download"], "")  # download fetches CLIP too
    # model files: folders and weight files, not other files
    (tmp_path / "runs").mkdir()
    (tmp_path / "m.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    got = _complete(["edit", "a.png", "-t", "x", "-m"], str(tmp_path) + "/")
    assert got == [str(tmp_path / "m.safetensors"), str(tmp_path / "runs") + "/"]
    assert _complete(["inspect"], str(tmp_path / "m")) == [str(tmp_path / "m.safetensors")]


def test_completion_through_the_shell_protocol_needs_no_torch(tmp_path):
    import os
    import subprocess
    import sys

    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("no torch while completing")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)]),
           "_CLIPSR_COMPLETE": "complete_bash", "COMP_WORDS": "clipsr upscale a.png --device c",
           "COMP_CWORD": "4"}
    r = subprocess.run([sys.executable, "-c", "from clipsr_cli.cli.app import main; main()"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "cuda", "cuda:0", "cuda:1"]


# -- item 8: the smaller rough edges -----------------------------------------------------------------
def test_readme_example_outputs_are_ignored_by_git():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("examples/chelsea_x8.png") and ignored("examples/chelsea_x4.png")
    assert not ignored("examples/chelsea.png")


def test_verbose_upscale_shows_model_device_precision_tiles_and_degradation(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "a.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--device", "cpu",
                            "--precision", "fp32", "-v"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    model = next(line for line in lines if line.startswith("model "))
    assert "×4 on cpu, fp32" in model and "tiles: auto" in model and "degradation:" in model
    assert any(line.startswith("tiles: 1 (the whole image in one pass)") for line in lines)
    quiet = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--device", "cpu",
                                "--precision", "fp32", "--overwrite"])
    assert "tiles:" not in quiet.stderr and "model " not in quiet.stderr  # only with -v


def test_progress_bars_say_what_they_count(monkeypatch):
    import io as stdio

    from rich.console import Console

    from clipsr_cli.cli import console

    out = stdio.StringIO()
    monkeypatch.setattr(console, "err_console", Console(file=out, force_terminal=True, width=100))
    monkeypatch.setattr(console.state, "quiet", False)
    with console.tile_progress("upscale a.png") as progress:
        progress(5, 25)
    assert "5/25 tiles" in out.getvalue()


def test_help_shows_metavars_not_python_types():
    for cmd, expected in ((["compare", "--help"], ("INPUT", "-m, --model MODEL")),
                          (["inspect", "--help"], ("MODEL  Model file",)),
                          (["train", "--help"], ("--set SECTION.KEY=VALUE",)),
                          (["eval", "--help"], ("--degrade CONDITION",))):
        r = runner.invoke(app, cmd, env={"COLUMNS": "120"})
        assert r.exit_code == 0
        assert "<list[str]>" not in r.stdout
        for text in expected:
            assert text in r.stdout, (cmd, text)
    assert "  input " not in runner.invoke(app, ["compare", "--help"]).stdout
