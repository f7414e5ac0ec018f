"""Built-in models (shipped, verified) and `clipsr eval`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.hub.entries import PipelineEntry

runner = CliRunner()
WEIGHTS = Path(__file__).resolve().parents[1] / "clipsr_cli" / "weights"


def test_builtin_file_matches_registry_sha256_and_size():
    from clipsr_cli.hub.registry import load_registry

    reg = load_registry()
    for name in ("clipsr-lite-x4", "clipsr-general-x4"):
        entry = reg.get(name)
        data = (WEIGHTS / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        assert len(data) == entry.size and len(data) < 10.5e6
        assert entry.scale == 4 and not entry.text_guided
    assert reg.get("clipsr-lite-x4").degradation_model == "clipsr-general-x4"
    assert sorted(p.name for p in WEIGHTS.glob("*.safetensors")) == [
        "clipsr-general-x4.safetensors", "clipsr-lite-x4.safetensors"]


def test_builtin_x8_and_x16_are_pipelines_of_the_x4_network():
    from clipsr_cli.hub.registry import load_registry

    reg = load_registry()
    assert reg.get("clipsr-lite-x8").stages == ("clipsr-lite-x4", "bicubic:2")
    assert reg.get("clipsr-lite-x16").stages == ("clipsr-lite-x4", "clipsr-lite-x4")
    for s in (8, 16):
        e = reg.get(f"clipsr-lite-x{s}")
        assert isinstance(e, PipelineEntry) and e.scale == s and not e.text_guided
        assert not hasattr(e, "file")  # a pipeline has no file of its own


def test_models_lists_builtins_as_installed():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    for s in (4, 8, 16):
        line = next(ln for ln in r.stdout.splitlines() if f"clipsr-lite-x{s} " in ln)
        assert "built-in" in line


def test_builtin_models_describe_themselves():
    from clipsr_cli.infer.engine import Upscaler

    for s in (4, 8, 16):
        up = Upscaler.load(scale=s, device="cpu")
        assert up.scale == s and not up.info.text_conditioned
        assert up.model.checkpoint_meta["format"] == "clipsr"  # the x4 network in every one
        assert up.info.parameters == Upscaler.load(scale=4, device="cpu").info.parameters


def _smooth_photo(seed, size=(96, 80)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    return img


def test_eval_builtin_beats_bicubic_on_smooth_images(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        _smooth_photo(i).save(d / f"p{i}.png")
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "--data", str(d), "-s", "4", "--device", "cpu",
                            "--report", str(rep)])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    (cond,) = out["conditions"]
    assert out["version"] == 3 and cond["degrade"] == "clean"
    assert out["scale"] == 4 and cond["mean"]["clip_score"] is None and len(cond["images"]) == 2
    assert "LPIPS" in r.stderr  # says what could not be computed
    m = cond["mean"]
    assert m["gain"] == pytest.approx(m["model_psnr"] - m["bicubic_psnr"])
    assert "mean" in r.stdout and "p0.png" in r.stdout


def test_eval_metrics_match_direct_computation(tmp_path, tiny_ckpt):
    """The report's numbers are the protocol's: recompute one image by hand."""
    from clipsr_cli.data.degrade import degrade, imresize
    from clipsr_cli.data.lr_file import degrade_file
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.tasks.evaluate import evaluate
    from clipsr_cli.data.metrics import psnr, ssim

    d = tmp_path / "hr"
    d.mkdir()
    img = _smooth_photo(3, size=(50, 42))  # 50×42 → cropped to 48×40 at ×4
    img.save(d / "a.png")
    up = Upscaler.load(str(tiny_ckpt(4)), device="cpu", precision="fp32")
    rep = evaluate(upscaler=up, data=d)
    (row,) = rep.images
    assert row.size == (48, 40)
    hr = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None, :, :40, :48]
    lr = degrade_file(degrade(hr, 4), "clean")  # the clean LR, as a PNG read back
    assert torch.allclose(lr, degrade(hr, 4), atol=1e-7, rtol=0)
    bic = imresize(lr, 4).clamp(0, 1)
    assert row.bicubic_psnr == pytest.approx(float(psnr(bic, hr, border=4)), abs=1e-9)
    assert row.bicubic_ssim == pytest.approx(float(ssim(bic, hr, border=4)), abs=1e-9)
    sr = up.upscale_tensor(lr)
    assert row.model_psnr == pytest.approx(float(psnr(sr, hr, border=4)), abs=1e-9)


def test_eval_csv_report_and_bad_report_name(tmp_path, tiny_ckpt):
    d = tmp_path / "hr"
    d.mkdir()
    _smooth_photo(1).save(d / "a.png")
    ck = str(tiny_ckpt(4))
    r = runner.invoke(app, ["eval", "--data", str(d), "-m", ck, "--report", str(tmp_path / "r.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.csv").read_text().startswith("degrade,name,width,height")
    r = runner.invoke(app, ["eval", "--data", str(d), "-m", ck, "--report", str(tmp_path / "r.txt")])
    assert r.exit_code == 2 and "json or .csv" in r.stderr  # a usage error, before any work


def test_eval_empty_folder_is_a_clear_error(tmp_path, tiny_ckpt):
    d = tmp_path / "empty"
    d.mkdir()
    r = runner.invoke(app, ["eval", "--data", str(d), "-m", str(tiny_ckpt(4))])
    assert r.exit_code == 1 and "no images" in r.stderr.lower()
