"""Issue #20, items 8-12: one whole line that says what to do, never a traceback; wrong results
are errors.

8. deeply nested TOML, a NUL byte in a registry ``file``, non-UTF-8 file names in a report, an
   output name too long for the file system;
9. messages cut mid-word, an allocator's trace, "file not found" for a file that exists;
10. a model whose output is NaN/inf: one line, exit 1, nothing written (every engine path);
11. ``eval`` skips an image too small for the scale, naming it, and goes on;
12. an option of one value given twice is a usage error, not silently the last one.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import ModelError

runner = CliRunner()

_ENTRY = ('[[model]]\nname = "x"\nkind = "generator"\nscale = 4\ntext_guided = false\n'
          'description = "d"\nlicense = "MIT"\nsha256 = "{sha}"\nfile = "{file}"\n'
          'urls = ["https://example.invalid/x"]\n')


def _png(path, size=16):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)).save(path)
    return path


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


# -- item 8 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["registry", "train-config"])
def test_deeply_nested_toml_is_one_line(tmp_path, monkeypatch, where):
    deep = "x = " + "[" * 5000 + "]" * 5000 + "\n"
    if where == "registry":
        reg = tmp_path / "models.toml"
        reg.write_text(deep)
        monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))
        r = runner.invoke(app, ["models"])
        assert r.exit_code == 1 and "not valid TOML" in _one_error_line(r)
    else:
        from clipsr_cli.train.settings import ConfigError, from_toml_text, read_toml

        with pytest.raises(ConfigError, match="nested too deeply"):
            from_toml_text(deep, source="run.toml")
        (tmp_path / "c.toml").write_text(deep)
        with pytest.raises(ConfigError, match="nested too deeply"):
            read_toml(tmp_path / "c.toml")


@pytest.mark.parametrize("name", ["x\\u0000.safetensors", "a/b.safetensors"])
def test_a_registry_file_name_with_nul_or_folders_is_one_line(tmp_path, monkeypatch, name):
    reg = tmp_path / "models.toml"
    reg.write_text(_ENTRY.format(sha="0" * 64, file=name))
    monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 1 and "plain file name" in _one_error_line(r)


def test_a_report_keeps_file_names_that_are_not_utf8(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    _png(raw.decode("utf-8", "surrogateescape"))
    for rep in ("r.json", "r2.json"):
        r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "-m",
                                str(tiny_ckpt(2)), "--report", str(tmp_path / rep),
                                "--overwrite"])
        assert r.exit_code == 0, r.output
        data = json.loads((tmp_path / rep).read_text())  # strict JSON, ASCII-escaped
        assert os.fsencode(data["files"][0]["input"]) == raw  # lossless
    from clipsr_cli.io.reports import write_csv

    write_csv(tmp_path / "r.csv", [{"name": raw.decode("utf-8", "surrogateescape")}],
              fields=["name"], overwrite=True)
    assert raw in (tmp_path / "r.csv").read_bytes()


def test_an_output_name_too_long_is_refused_before_work(tmp_path, tiny_ckpt):
    long = tmp_path / ("a" * 250 + ".png")
    _png(long)
    r = runner.invoke(app, ["upscale", str(long), "-m", str(tiny_ckpt(2))])
    assert r.exit_code == 1 and "more than a file name may have" in _one_error_line(r)
    r = runner.invoke(app, ["batch", str(long), "-o", str(tmp_path / "o"), "-m",
                            str(tiny_ckpt(2))])
    assert r.exit_code == 3 and "more than a file name may have" in r.stderr, r.output
    assert "Traceback" not in r.output and "OSError" not in r.output


# -- item 9 ---------------------------------------------------------------------------------------
def test_third_party_errors_are_whole_lines():
    from clipsr_cli.errors import summary

    long = RuntimeError("word " * 100 + "\nsecond line")
    s = summary(long)
    assert s.endswith("…") and len(s) <= 201 and s[:-1].endswith("word")
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                       "allocate memory: you tried to allocate 14400000000 bytes.")
    assert summary(oom) == "not enough memory"
    assert summary(EOFError()) == "EOFError"


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_an_empty_weights_file_says_empty(tmp_path, suffix):
    (tmp_path / f"e{suffix}").write_bytes(b"")
    r = runner.invoke(app, ["inspect", str(tmp_path / f"e{suffix}")])
    line = _one_error_line(r)
    assert r.exit_code == 1 and "is empty (0 bytes)" in line and "()" not in line


def test_an_allocation_failure_is_an_out_of_memory_line(tmp_path, monkeypatch, tiny_ckpt):
    from clipsr_cli.infer.engine import Upscaler

    def alloc(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 99 bytes.")

    monkeypatch.setattr(Upscaler, "bands", alloc)
    r = runner.invoke(app, ["upscale", str(_png(tmp_path / "a.png")), "-m", str(tiny_ckpt(2)),
                            "-o", str(tmp_path / "o.png")])
    line = _one_error_line(r)
    assert r.exit_code == 1 and "out of memory" in line and "enforce" not in line
    r = runner.invoke(app, ["batch", str(tmp_path / "a.png"), "-m", str(tiny_ckpt(2)),
                            "-o", str(tmp_path / "b")])
    assert r.exit_code in (1, 3) and "out of memory" in r.stderr and "enforce" not in r.stderr


@pytest.mark.parametrize("what", ["folder", "device"])
def test_a_model_path_that_exists_is_never_file_not_found(tmp_path, monkeypatch, what):
    path = str(tmp_path) if what == "folder" else "/dev/zero"
    reg = tmp_path / "models.toml"
    reg.write_text(_ENTRY.format(sha="0" * 64, file="x.safetensors"))
    monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))
    for args in (["inspect", path], ["download", "x", "--from", path]):
        r = runner.invoke(app, args)
        line = _one_error_line(r)
        assert r.exit_code in (1, 2) and "not found" not in line, line
        assert ("folder" in line or "directory" in line) if what == "folder" \
            else "character device" in line


# -- item 10 --------------------------------------------------------------------------------------
def _nan_model(tmp_path, value: float):
    from clipsr_cli.model.checkpoint import read_checkpoint, save_checkpoint
    from clipsr_cli.model.network import build_model
    from tests.conftest import tiny_model_config

    cfg = tiny_model_config(2)
    m = build_model(cfg)
    with torch.no_grad():
        next(p for n, p in m.named_parameters() if "weight" in n).fill_(value)
    path = tmp_path / f"bad{value}.safetensors"
    save_checkpoint(path, m, cfg)
    read_checkpoint(path)  # loads: the weights are well-formed, only their values are wrong
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_outputs_are_an_error_and_nothing_is_written(tmp_path, value):
    model = _nan_model(tmp_path, value)
    img = _png(tmp_path / "a.png")
    r = runner.invoke(app, ["upscale", str(img), "-m", str(model), "-o", str(tmp_path / "o.png"),
                            "--device", "cpu"])
    assert r.exit_code == 1 and "non-finite" in _one_error_line(r)
    assert not (tmp_path / "o.png").exists()
    out = tmp_path / "b"
    r = runner.invoke(app, ["batch", str(img), "-o", str(out), "-m", str(model), "--device",
                            "cpu"])
    assert r.exit_code == 1 and "non-finite" in r.stderr, r.output
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_non_finite_outputs_are_an_error_in_the_batched_and_tensor_paths(tmp_path):
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.io.images import read_image

    up = Upscaler.load(str(_nan_model(tmp_path, float("nan"))), device="cpu", tile=0)
    im = read_image(_png(tmp_path / "a.png"))
    with pytest.raises(ModelError, match="non-finite"):
        up.upscale_images([im, im], [None, None])
    with pytest.raises(ModelError, match="non-finite"):
        up.upscale_tensor(im.rgb)


# -- item 11 --------------------------------------------------------------------------------------
def test_eval_skips_images_too_small_for_the_scale_by_name(tmp_path, tiny_ckpt):
    data = tmp_path / "hr"
    data.mkdir()
    _png(data / "ok.png", 64)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(data / "dot.png")
    Image.fromarray(np.zeros((1, 300, 3), np.uint8)).save(data / "line.png")
    r = runner.invoke(app, ["eval", "-d", str(data), "-m", str(tiny_ckpt(2)), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "skipped dot.png" in r.stderr and "skipped line.png" in r.stderr
    assert "ok.png" in r.stdout


# -- item 12 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["edit", "a.png"] + ["-t", "a"] * 500,
                                  ["upscale", "a.png", "-m", "x", "--model", "y"],
                                  ["batch", "d", "-o", "o", "--tile=64", "--tile", "128"]])
def test_an_option_of_one_value_given_twice_is_a_usage_error(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "was given" in r.output and "times" in r.output, r.output


def test_a_value_that_looks_like_an_option_is_not_counted(tmp_path, tiny_ckpt):
    img = _png(tmp_path / "a.png")
    r = runner.invoke(app, ["upscale", str(img), "-m", str(tiny_ckpt(2)), "-t", "-t",
                            "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
