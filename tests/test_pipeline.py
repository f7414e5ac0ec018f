"""Pipelines: registered stages run in order (the built-in ×8 and ×16 are the ×4 network's)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.data.degrade import degrade, imresize
from clipsr_cli.data.smooth import smooth_region_check
from clipsr_cli.errors import ClipsrError, ModelError, UsageError
from clipsr_cli.hub.entries import FileEntry, PipelineEntry
from clipsr_cli.hub.registry import parse_registry_file
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.infer.pipeline import Pipeline
from tests.test_smooth import sky

runner = CliRunner()


def _lr(seed=0, size=(40, 36)):
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 6, 5, generator=g)
    return torch.nn.functional.interpolate(small, size=size, mode="bicubic").clamp(0, 1)


@pytest.fixture(scope="module")
def x4():
    return Upscaler.load(scale=4, device="cpu", precision="fp32", tile=0)


def test_x16_is_the_x4_network_twice_and_x8_is_x4_then_bicubic(x4):
    """The ×16's second ×4 pass runs the network's degradation-aware weights (its input is an
    upscaled image; LATER_STAGE_STRENGTH); the first pass, like the ×8's, as the input needs."""
    lr = _lr()
    once = x4.upscale_tensor(lr, strength=0.0)
    x16 = Upscaler.load(scale=16, device="cpu", precision="fp32", tile=0)
    x8 = Upscaler.load(scale=8, device="cpu", precision="fp32", tile=0)
    assert isinstance(x16, Pipeline) and x16.scale == 16 and x8.scale == 8
    # equal up to float rounding: band-by-band stages run other kernel shapes than whole images
    torch.testing.assert_close(x16.upscale_tensor(lr, strength=0.0),
                               x4.upscale_tensor(once, strength=1.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(x8.upscale_tensor(lr, strength=0.0),
                               imresize(once, 2).clamp(0, 1), rtol=0, atol=1e-5)
    assert x16.upscale(lr[0]).shape == (3, 40 * 16, 36 * 16)


def test_tiled_pipeline_equals_untiled():
    lr = _lr(1, (52, 44))
    whole = Upscaler.load(scale=16, device="cpu", precision="fp32", tile=0).upscale_tensor(lr)
    tiled = Upscaler.load(scale=16, device="cpu", precision="fp32", tile=24).upscale_tensor(lr)
    assert (whole - tiled).abs().max() <= 1 / 255


def test_repeat_and_progress(x4):
    seen = []
    twice = Pipeline.repeat(x4, 2)
    out = twice.upscale_tensor(_lr(), progress=lambda d, t: seen.append((d, t)))
    assert twice.scale == 16 and out.shape[-2:] == (40 * 16, 36 * 16)
    assert seen[-1] == (1000, 1000) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert Pipeline.repeat(x4, 1) is x4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UsageError):
            Pipeline.repeat(x4, bad)


@pytest.mark.parametrize("kind", ["clear", "flat"])
def test_no_builtin_invents_texture_on_a_clear_sky(kind):
    """The smooth-region check (as in `clipsr eval`): the v1 ×16 network drew a dimpled pattern
    over a clear sky (10-19 dB worse than bicubic there, +0.8 to +2 levels RMS: flagged); none of
    today's built-ins may trip it."""
    hr = sky(kind)
    for s in (4, 8, 16):
        up = Upscaler.load(scale=s, device="cpu")
        lr = degrade(hr, s)
        check = smooth_region_check(up.upscale_tensor(lr), hr, imresize(lr, s).clamp(0, 1),
                                    border=s)
        assert check.fraction > 0.5
        assert not check.flagged, (s, check)


def _write(tmp_path, text):
    p = tmp_path / "models.toml"
    p.write_text(text)
    return p


GOOD = """
[[model]]
name = "my-x8"
kind = "pipeline"
description = "x4 then bicubic x2"
license = "MIT"
scale = 8
stages = ["clipsr-lite-x4", "bicubic:2"]
"""


def test_registry_pipeline_entries_and_their_errors(tmp_path):
    (e,) = parse_registry_file(_write(tmp_path, GOOD))
    assert isinstance(e, PipelineEntry) and e.kind == "pipeline"
    assert e.stages == ("clipsr-lite-x4", "bicubic:2") and not isinstance(e, FileEntry)  # no file
    for change, why in [
        ('stages = []', "stages"),
        ('stages = ["bicubic:2", "clipsr-lite-x4"]', "starts with a model"),
        ('stages = ["clipsr-lite-x4", "bicubic:2"]\nfile = "x.safetensors"', "no file"),
        ('stages = ["clipsr-lite-x4", "bicubic:2"]\nscale = 5', "scale"),
        ('stages = ["my-x8"]', "itself"),
    ]:
        text = GOOD.replace('stages = ["clipsr-lite-x4", "bicubic:2"]', change)
        if "scale = 5" in change:
            text = text.replace("scale = 8\n", "")
        with pytest.raises(ModelError, match=why):
            parse_registry_file(_write(tmp_path, text))


def test_pipeline_stages_are_checked_when_loaded(tmp_path, monkeypatch):
    bad_scale = GOOD.replace('"bicubic:2"', '"bicubic:3"')
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, bad_scale)))
    with pytest.raises(ModelError, match="×12, but the entry says ×8"):
        Upscaler.load("my-x8", device="cpu")
    unknown = GOOD.replace('"clipsr-lite-x4"', '"nope"')
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, unknown)))
    with pytest.raises(ClipsrError, match="nope"):
        Upscaler.load("my-x8", device="cpu")


def test_cli_x16_and_download_of_a_pipeline(tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGBA", (12, 10), (30, 120, 200, 128)).save(src)
    r = runner.invoke(app, ["upscale", str(src), "-s", "16", "-q"])
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "in_x16.png")
    assert out.size == (192, 160) and out.mode == "RGBA"
    r = runner.invoke(app, ["download", "clipsr-lite-x16"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith("clipsr-lite-x4.safetensors")


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_banded_resize_equals_the_whole_image_resize(factor):
    from clipsr_cli.data.degrade import imresize_bands

    x = torch.rand(1, 3, 70, 41, generator=torch.Generator().manual_seed(factor))
    bands = list(imresize_bands(x, factor, rows=16))
    assert [y0 for y0, _ in bands] == [r * factor for r in range(0, 70, 16)]
    torch.testing.assert_close(torch.cat([b for _, b in bands], dim=-2), imresize(x, factor),
                               rtol=0, atol=1e-6)  # bands: other matmul shapes, same weights


def test_inspect_describes_a_pipeline_and_its_stages():
    r = runner.invoke(app, ["inspect", "clipsr-lite-x16"])
    assert r.exit_code == 0, r.output
    assert "clipsr-lite-x4 → clipsr-lite-x4" in r.stdout and "×16" in r.stdout
    assert "clipsr-lite-x4 parameters:" in r.stdout
