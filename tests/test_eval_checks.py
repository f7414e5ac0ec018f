"""`clipsr eval`: the smooth-region check (invented texture) and the LR resizer choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import UsageError
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.model.checkpoint import save_checkpoint
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.network import build_model
from clipsr_cli.tasks.evaluate import evaluate
from tests.test_smooth import sky

runner = CliRunner()


def _sky_folder(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    arr = (sky("clear", 256)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(d / "sky.png")
    return d


@pytest.fixture(scope="module")
def texture_model(tmp_path_factory):
    """An image-only ×4 model that draws a faint regular pattern on top of bicubic: what the v1
    ×16 built-in did on clear skies."""
    torch.manual_seed(0)
    cfg = ModelConfig(scale=4, encoder_widths=(8, 8), stage_blocks=1, body_blocks=1,
                      up_widths=(8, 8))
    net = build_model(cfg)
    out, last = net.upsampler.out, net.upsampler.convs[-1]
    with torch.no_grad():
        # the last x2 stage emits a constant 2x2 checkerboard (pixel-shuffle sub-positions (0, 0)
        # and (1, 1) on), which the output conv adds faintly on top of the bicubic skip
        last.weight.zero_()
        last.bias.zero_()
        last.bias.view(-1, 4)[:, 0] = 1.0
        last.bias.view(-1, 4)[:, 3] = 1.0
        out.weight.zero_()
        out.bias.zero_()
        out.weight[:, :, 1, 1] = 0.01
    path = tmp_path_factory.mktemp("tex") / "texture-x4.safetensors"
    save_checkpoint(path, net, cfg)
    return path


def test_eval_flags_invented_texture_and_the_builtin_passes(tmp_path, texture_model):
    d = _sky_folder(tmp_path)
    bad = evaluate(upscaler=Upscaler.load(str(texture_model), device="cpu"), data=d)
    assert bad.flagged == ["sky.png"] and bad.images[0].smooth_fraction > 0.5
    assert bad.images[0].smooth_delta < -1
    good = evaluate(upscaler=Upscaler.load(scale=4, device="cpu"), data=d)
    assert good.flagged == [] and good.images[0].invented_texture is False
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "-d", str(d), "-m", str(texture_model), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "invented texture" in r.stderr and "sky.png" in r.stderr
    out = json.loads(rep.read_text())
    (cond,) = out["conditions"]
    assert cond["images"][0]["invented_texture"] is True and cond["mean"]["invented_texture"] == "1/1"
    r = runner.invoke(app, ["eval", "-d", str(d), "-s", "16"])
    assert r.exit_code == 0, r.output
    assert "no invented texture" in r.stderr


def test_eval_resizers_make_different_lrs_and_bad_ones_are_usage_errors(tmp_path):
    d = _sky_folder(tmp_path)
    Image.open(d / "sky.png").rotate(90).save(d / "sky2.png")
    up = Upscaler.load(scale=4, device="cpu")
    scores = {rz: evaluate(upscaler=up, data=d, resizer=rz).images[0].bicubic_psnr
              for rz in ("matlab", "pil-bicubic", "lanczos")}
    assert len(set(round(v, 6) for v in scores.values())) == 3
    with pytest.raises(UsageError):
        evaluate(upscaler=up, data=d, resizer="nearest")
    r = runner.invoke(app, ["eval", "-d", str(d), "-s", "4", "--resizer", "nearest"])
    assert r.exit_code == 2 and "--resizer" in r.stderr
