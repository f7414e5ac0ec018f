"""The LR as a user's file (clipsr_cli.data.lr_file) and `clipsr eval --degrade`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.data.degrade import degrade, imresize, quantize_8bit
from clipsr_cli.data.lr_file import FileDegradation, degrade_file, lr_file, parse_degradations
from clipsr_cli.errors import UsageError

runner = CliRunner()


def _photo(seed: int = 0, size=(64, 48)) -> torch.Tensor:
    """A smooth-ish generated image, (1, 3, h, w) on the 8-bit grid."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]


def test_specs_parse_print_and_list():
    assert FileDegradation.parse("jpeg:75") == FileDegradation("jpeg", 75)
    assert FileDegradation.parse(" Noise : 2.5 ") == FileDegradation("noise", 2.5)
    assert str(FileDegradation.parse("noise:5")) == "noise:5"
    assert str(FileDegradation.parse("noise:2.5")) == "noise:2.5"
    assert str(FileDegradation.parse("CLEAN")) == "clean"
    got = parse_degradations(["clean,jpeg:75", "noise:5", "jpeg:75"])
    assert [str(d) for d in got] == ["clean", "jpeg:75", "noise:5"]
    assert parse_degradations(None) == [FileDegradation()]


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:0", "jpeg:101", "jpeg:7.5", "noise", "noise:101",
                                 "clean:3", "blur:2", "jpeg:-5", ""])
def test_bad_specs_are_usage_errors(bad):
    with pytest.raises(UsageError) as e:
        parse_degradations([bad]) if bad else FileDegradation.parse(bad)
    assert e.value.param == "degrade" and "\n" not in str(e.value)


def test_clean_is_the_8bit_lr_as_a_png():
    lr = degrade(_photo(), 4)
    data, fmt = lr_file(lr, "clean")
    assert fmt == "PNG" and data.startswith(b"\x89PNG")
    back = degrade_file(lr, "clean")
    assert back.shape == lr.shape and back.dtype == torch.float32
    assert torch.allclose(back, lr, atol=1e-7, rtol=0)
    # a float LR off the 8-bit grid is quantised first (half away from zero)
    off = lr + 0.3 / 255
    assert torch.allclose(degrade_file(off, "clean"), quantize_8bit(off), atol=1e-7, rtol=0)


def test_jpeg_is_pillows_default_file_decoded_by_our_reader():
    lr = degrade(_photo(1, size=(128, 96)), 2)
    data, fmt = lr_file(lr, "jpeg:50")
    assert fmt == "JPEG" and data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0, Pillow's default
        assert not im.info.get("progressive")
        pil = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    back = degrade_file(lr, "jpeg:50")
    assert torch.allclose(back[0], pil, atol=1e-7, rtol=0)  # the same pixels Pillow decodes
    err = {q: float((degrade_file(lr, f"jpeg:{q}") - lr).abs().mean()) for q in (30, 75, 95)}
    assert 0 < err[95] < err[75] < err[30]


def test_noise_has_the_asked_std_and_repeats_per_seed():
    lr = torch.full((1, 3, 64, 64), 128 / 255)  # mid grey: no clipping
    noisy = degrade_file(lr, "noise:5", seed="a.png")
    std = float((noisy - lr).std() * 255)
    assert std == pytest.approx(np.sqrt(5 ** 2 + 1 / 12), rel=0.05)  # noise + 8-bit rounding
    assert torch.equal(noisy, degrade_file(lr, "noise:5", seed="a.png"))
    assert not torch.equal(noisy, degrade_file(lr, "noise:5", seed="b.png"))
    assert torch.allclose(torch.round(noisy * 255), noisy * 255, atol=1e-4)  # on the 8-bit grid
    assert torch.allclose(degrade_file(lr, "noise:0"), lr, atol=1e-7, rtol=0)


def test_eval_scores_each_condition_from_the_same_degraded_lr(tmp_path, tiny_ckpt):
    from clipsr_cli.data.metrics import psnr
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.tasks.evaluate import evaluate

    d = tmp_path / "hr"
    d.mkdir()
    hr = _photo(2, size=(64, 48))
    Image.fromarray((hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / "a.png")
    up = Upscaler.load(str(tiny_ckpt(4)), device="cpu", precision="fp32")
    rep = evaluate(upscaler=up, data=d, degrade="jpeg:40")
    (row,) = rep.images
    assert rep.degrade == "jpeg:40"
    lr = degrade_file(degrade(hr, 4), "jpeg:40", seed="a.png")
    assert row.bicubic_psnr == pytest.approx(float(psnr(imresize(lr, 4).clamp(0, 1), hr, border=4)),
                                             abs=1e-9)
    assert row.model_psnr == pytest.approx(float(psnr(up.upscale_tensor(lr), hr, border=4)), abs=1e-9)
    clean = evaluate(upscaler=up, data=d).images[0]
    assert row.bicubic_psnr < clean.bicubic_psnr  # the JPEG'd LR really is worse


def test_eval_cli_reports_every_condition(tmp_path, tiny_ckpt):
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        hr = _photo(i + 3)
        Image.fromarray((hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            d / f"p{i}.png")
    ck = str(tiny_ckpt(4))
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "-d", str(d), "-m", ck, "--degrade", "clean,jpeg:50",
                            "--degrade", "noise:5", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    assert [c["degrade"] for c in out["conditions"]] == ["clean", "jpeg:50", "noise:5"]
    for c in out["conditions"]:
        assert len(c["images"]) == 2 and "invented_texture" in c["mean"]
    bic = [c["mean"]["bicubic_psnr"] for c in out["conditions"]]
    assert bic[1] < bic[0] and bic[2] < bic[0]
    assert "per LR condition" in r.stdout and "jpeg:50" in r.stdout
    assert "noise:5: improved over bicubic" in r.stderr
    csv = tmp_path / "r.csv"
    r = runner.invoke(app, ["eval", "-d", str(d), "-m", ck, "--degrade", "jpeg:50,noise:5",
                            "--report", str(csv)])
    assert r.exit_code == 0, r.output
    lines = csv.read_text().splitlines()
    assert len(lines) == 5 and lines[1].startswith("jpeg:50,") and lines[4].startswith("noise:5,")


def test_eval_cli_bad_degrade_is_exit_2_before_loading(tmp_path):
    r = runner.invoke(app, ["eval", "-d", str(tmp_path), "-m", "no-such-model", "--degrade", "jpeg:0"])
    assert r.exit_code == 2 and "--degrade" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
