"""--degradation / --denoise: what a file says about its degradation (JPEG tables, noise), the
auto strength, and the interpolation between a clean and a degradation-aware weight set."""

from __future__ import annotations

import io
from pathlib import Path
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.data.noise import estimate_noise
from clipsr_cli.errors import ModelError, UsageError
from clipsr_cli.infer.degradation import Degradation, Strength, WeightBlend, choose_strength
from clipsr_cli.io.images import read_image
from clipsr_cli.io.jpeg import estimate_quality, ijg_table

from tests.conftest import perturb, tiny_model_config


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth photo-like scene (gradients, soft discs), 8-bit RGB: flat regions to measure on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.3 + 0.4 * xx / w, 0.2 + 0.5 * yy / h, 0.5 + 0.2 * np.sin(xx / 17.0)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 24)
        img += 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-1, 1, 3)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noisy(arr: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(arr + rng.normal(0, sigma, arr.shape)), 0, 255).astype(np.uint8)


# -- JPEG quality from the quantisation tables ---------------------------------------------------
@pytest.mark.parametrize("q", [10, 35, 50, 75, 90, 95])
def test_pillow_jpegs_give_their_quality_exactly(q):
    im = read_image(_encode(_scene(), "JPEG", quality=q))
    assert im.format == "JPEG" and im.jpeg is not None
    assert im.jpeg.quality == q and im.jpeg.standard


def test_progressive_cmyk_and_grayscale_jpegs_are_read_too():
    arr = _scene()
    assert read_image(_encode(arr, "JPEG", quality=60, progressive=True)).jpeg.quality == 60
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, "JPEG", quality=70)
    assert read_image(cmyk.getvalue()).jpeg.quality == 70
    gray = io.BytesIO()
    Image.fromarray(arr).convert("L").save(gray, "JPEG", quality=40)
    assert read_image(gray.getvalue()).jpeg.quality == 40
    assert read_image(_encode(arr, "PNG")).jpeg is None  # not a JPEG: nothing claimed


def test_non_ijg_tables_give_an_equivalent_quality_and_odd_ones_none():
    # a custom table: the IJG q=80 table with every entry nudged: not standard, close to 80
    table = [max(1, v + (1 if i % 3 == 0 else 0)) for i, v in enumerate(ijg_table(80))]
    est = estimate_quality({0: table, 1: table})
    assert est is not None and not est.standard and 75 <= est.quality <= 82
    for odd in (None, {}, {1: ijg_table(50)}, {0: [0] * 64}, {0: [5] * 63}, {0: "abc"},
                {0: [None] * 64}, [ijg_table(50)]):
        assert estimate_quality(odd) is None


# -- noise on flat regions -------------------------------------------------------------------------
def test_noise_estimate_tracks_the_added_noise():
    arr = _scene(160, 200)
    clean = estimate_noise(read_image(_encode(arr)).rgb)
    assert clean is not None and clean < 1.0
    for sigma in (3.0, 5.0, 10.0):
        est = estimate_noise(read_image(_encode(_noisy(arr, sigma))).rgb)
        assert 0.75 * sigma <= est <= 1.25 * sigma, (sigma, est)


def test_noise_estimate_of_tiny_and_flat_images():
    assert estimate_noise(torch.rand(1, 3, 1, 1)) is None
    assert estimate_noise(torch.rand(1, 3, 2, 40)) is None
    assert estimate_noise(torch.full((1, 3, 128, 128), 0.5)) == 0.0
    assert estimate_noise(torch.rand(1, 3, 64, 64)) is None  # too few blocks to trust


# -- the auto strength -------------------------------------------------------------------------------
def test_auto_picks_clean_for_a_clean_png_and_full_strength_for_jpeg_and_noise():
    arr = _scene(160, 200)
    auto = Degradation()
    assert choose_strength(auto, read_image(_encode(arr))).value == 0.0
    s50 = choose_strength(auto, read_image(_encode(arr, "JPEG", quality=50)))
    assert s50.value == 1.0 and "JPEG quality 50" in s50.reason
    s98 = choose_strength(auto, read_image(_encode(arr, "JPEG", quality=98)))
    assert s98.value == 0.0
    noisy = choose_strength(auto, read_image(_encode(_noisy(arr, 12.0))))
    assert noisy.value == 1.0 and "noise" in noisy.reason
    # a tensor (Python API) is judged by its noise alone
    assert choose_strength(auto, read_image(_encode(_noisy(arr, 12.0))).rgb).value == 1.0


def test_auto_between_the_thresholds_is_in_between():
    arr = _scene(160, 200)
    mid = choose_strength(Degradation(), read_image(_encode(arr, "JPEG", quality=90)))
    assert 0.0 < mid.value < 1.0
    mid = choose_strength(Degradation(), read_image(_encode(_noisy(arr, 3.0))))
    assert 0.1 < mid.value < 0.9 and mid.reason.startswith("noise")


def test_overrides_and_their_checks():
    img = read_image(_encode(_scene(), "JPEG", quality=40))
    assert choose_strength(Degradation("clean"), img) == Strength(0.0, "--degradation clean")
    assert choose_strength(Degradation("jpeg"), img).value == 1.0
    assert choose_strength(Degradation("auto", denoise=0.3), img) == Strength(0.3, "--denoise")
    assert choose_strength(Degradation("clean", denoise=0.7), img).value == 0.7  # denoise wins
    for bad in (dict(mode="sharp"), dict(denoise=1.5), dict(denoise=-0.1), dict(denoise=float("nan")),
                dict(denoise=True), dict(denoise="0.5")):
        with pytest.raises(UsageError):
            Degradation(**bad)


def test_auto_falls_back_with_one_warning_line(caplog):
    one = read_image(_encode(np.full((1, 1, 3), 77, np.uint8)))
    flat = read_image(_encode(np.full((50, 60, 3), 200, np.uint8)))
    with caplog.at_level(logging.WARNING, logger="clipsr"):
        for im in (one, flat):
            caplog.clear()
            s = choose_strength(Degradation(), im)
            assert s.value == 0.0
            assert len(caplog.records) == 1 and "treating it as clean" in caplog.records[0].message
    # a JPEG whose tables could not be read: its noise decides, with a warning
    jpeg = read_image(_encode(_noisy(_scene(160, 200), 8.0), "JPEG", quality=97))
    from dataclasses import replace
    lost = replace(jpeg, jpeg=None)
    with caplog.at_level(logging.WARNING, logger="clipsr"):
        caplog.clear()
        s = choose_strength(Degradation(), lost)
        assert "quantisation tables could not be read" in caplog.text
    assert s.reason.startswith("noise")
    # a one-colour JPEG: its tables still speak, no warning needed
    q50 = read_image(_encode(np.full((16, 16, 3), 90, np.uint8), "JPEG", quality=50))
    assert choose_strength(Degradation(), q50).value == 1.0


# -- interpolation of the two weight sets -----------------------------------------------------------
def _pair():
    from clipsr_cli.model.network import build_model

    torch.manual_seed(0)
    cfg = tiny_model_config(4)
    clean = perturb(build_model(cfg), seed=1).eval()
    degraded = perturb(build_model(cfg), seed=2).eval()
    return cfg, clean, degraded


def test_blend_at_0_and_1_is_exactly_each_model_and_between_is_the_mix():
    cfg, clean, degraded = _pair()
    from clipsr_cli.model.network import build_model

    net = build_model(cfg).eval()
    net.load_state_dict(clean.state_dict())
    blend = WeightBlend(net, clean.state_dict(), degraded.state_dict())
    for t, ref in ((1.0, degraded), (0.0, clean), (1.0, degraded)):
        blend.apply(t)
        for k, v in net.state_dict().items():
            assert torch.equal(v, ref.state_dict()[k]), k
    blend.apply(0.25)
    k = next(iter(clean.state_dict()))
    want = 0.75 * clean.state_dict()[k] + 0.25 * degraded.state_dict()[k]
    assert torch.allclose(net.state_dict()[k], want, atol=1e-6)
    other = build_model(tiny_model_config(4, encoder_widths=(8, 12, 20))).state_dict()
    with pytest.raises(ModelError, match="architecture"):
        WeightBlend(net, clean.state_dict(), other)


def _registry(tmp_path, monkeypatch, clean_path, degraded_path):
    import hashlib

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    reg = tmp_path / "reg.toml"
    reg.write_text(
        f'[[model]]\nname = "t-clean"\nkind = "generator"\ndescription = "t"\nlicense = "MIT"\n'
        f'file = "{clean_path.name}"\nsha256 = "{sha(clean_path)}"\n'
        f'urls = ["{clean_path.as_uri()}"]\nscale = 4\ntext_guided = false\n'
        f'degradation_model = "t-degraded"\n\n'
        f'[[model]]\nname = "t-degraded"\nkind = "generator"\ndescription = "t"\nlicense = "MIT"\n'
        f'file = "{degraded_path.name}"\nsha256 = "{sha(degraded_path)}"\n'
        f'urls = ["{degraded_path.as_uri()}"]\nscale = 4\ntext_guided = false\n\n'
        f'[[model]]\nname = "t-x16"\nkind = "pipeline"\ndescription = "t"\nlicense = "MIT"\n'
        f'scale = 16\nstages = ["t-clean", "t-clean"]\n')
    monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))


@pytest.fixture
def partnered(tmp_path, monkeypatch):
    from clipsr_cli.model.checkpoint import save_checkpoint

    cfg, clean, degraded = _pair()
    a, b = tmp_path / "clean.safetensors", tmp_path / "degraded.safetensors"
    save_checkpoint(a, clean, cfg)
    save_checkpoint(b, degraded, cfg)
    _registry(tmp_path, monkeypatch, a, b)
    return a, b


def test_engine_denoise_0_and_1_equal_the_two_models(partnered):
    from clipsr_cli.infer.engine import Upscaler

    a, b = partnered
    lr = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    kw = dict(device="cpu", precision="fp32")
    ref_clean = Upscaler.load(str(a), **kw).upscale_tensor(lr)
    ref_degraded = Upscaler.load(str(b), **kw).upscale_tensor(lr)
    up = Upscaler.load("t-clean", **kw)
    assert up.blendable
    assert torch.allclose(up.upscale_tensor(lr, strength=1.0), ref_degraded, atol=1e-6)
    assert torch.allclose(up.upscale_tensor(lr, strength=0.0), ref_clean, atol=1e-6)
    mid = up.upscale_tensor(lr, strength=0.5)
    assert not torch.allclose(mid, ref_clean, atol=1e-3) and not torch.allclose(mid, ref_degraded, atol=1e-3)
    assert torch.allclose(Upscaler.load("t-clean", degradation=Degradation(denoise=1.0), **kw)
                          .upscale_tensor(lr), ref_degraded, atol=1e-6)
    # clean never loads the partner: exactly the clean model as before
    plain = Upscaler.load("t-clean", degradation=Degradation("clean"), **kw)
    assert not plain.blendable and torch.equal(plain.upscale_tensor(lr, strength=1.0),
                                               plain.upscale_tensor(lr))
    # a model without a partner: strength means nothing
    assert not Upscaler.load(str(a), **kw).blendable
    # the blend weight the bands get: None where nothing blends (no placeholder strength),
    # else the given or decided value; bands' None is the clean weights
    assert plain._strength(1.0, lr) is None and plain._strength(None, lr) is None
    assert up._strength(0.5, lr) == 0.5 and up._strength(Strength(1.0, "why"), lr) == 1.0
    assert up._strength(None, lr) == up.strength_for(lr).value
    rows = torch.cat([band for _, band in up.bands(lr, strength=None)], dim=2)
    assert torch.allclose(rows, ref_clean, atol=1e-6)


def test_the_partner_comes_from_the_resolved_entry_not_a_name(partnered):
    from clipsr_cli.hub.registry import load_registry
    from clipsr_cli.hub.resolve import ClipsrFile
    from clipsr_cli.infer.degradation import partner_weights
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.model.checkpoint import load_checkpoint, read_checkpoint

    a, b = partnered
    net, reg = load_checkpoint(a), load_registry()
    got = partner_weights(reg.get("t-clean"), net, Degradation())
    want = read_checkpoint(b)[1]
    assert got is not None and all(torch.equal(got[k], want[k].float()) for k in want)
    assert partner_weights(None, net, Degradation()) is None  # a file: no registry entry
    assert partner_weights(reg.get("t-degraded"), net, Degradation()) is None  # no partner
    assert partner_weights(reg.get("t-clean"), net, Degradation("clean")) is None
    # a file reference that happens to carry a registered name is still just that file
    assert not Upscaler.load(ClipsrFile(a, "t-clean"), device="cpu", precision="fp32").blendable


def test_pipelines_apply_the_strength_to_their_first_stage_and_full_to_later_ones(partnered):
    from clipsr_cli.infer.engine import Upscaler

    a, b = partnered
    kw = dict(device="cpu", precision="fp32")
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(4))
    clean, degraded = Upscaler.load(str(a), **kw), Upscaler.load(str(b), **kw)
    pipe = Upscaler.load("t-x16", **kw)
    assert pipe.blendable
    for t, first in ((1.0, degraded), (0.0, clean)):
        want = degraded.upscale_tensor(first.upscale_tensor(lr))  # later stages: LATER_STAGE_STRENGTH
        assert torch.allclose(pipe.upscale_tensor(lr, strength=t), want, atol=1e-5)


def test_interpolated_weights_are_never_written(partnered, tmp_path):
    from clipsr_cli.infer.engine import Upscaler

    a, b = partnered
    before = {p: p.read_bytes() for p in (a, b)}
    home_files = lambda: sorted(p for p in tmp_path.rglob("*") if p.is_file())  # noqa: E731
    listing = home_files()
    up = Upscaler.load("t-clean", device="cpu", precision="fp32")
    up.upscale_tensor(torch.rand(1, 3, 8, 8), strength=0.4)
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert [p for p in home_files() if p not in listing and "clipsr_home" not in str(p)] == []


# -- the commands ----------------------------------------------------------------------------------
def test_cli_upscale_batch_and_eval_use_and_report_the_strength(partnered, tmp_path):
    import json

    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app

    runner = CliRunner()
    src = tmp_path / "in"
    src.mkdir()
    arr = _scene(48, 40)
    (src / "clean.png").write_bytes(_encode(arr))
    (src / "web.jpg").write_bytes(_encode(arr, "JPEG", quality=40))
    eng = ["-m", "t-clean", "--device", "cpu", "--precision", "fp32"]
    r = runner.invoke(app, ["upscale", str(src / "web.jpg"), "-o", str(tmp_path / "a.png"),
                            "-v", *eng])
    assert r.exit_code == 0, r.output
    assert "denoise 1.00 (JPEG quality 40)" in r.stderr
    r = runner.invoke(app, ["upscale", str(src / "web.jpg"), "-o", str(tmp_path / "b.png"),
                            "--denoise", "0", *eng])
    assert r.exit_code == 0 and "denoise" not in r.stderr
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a.png")),
                              np.asarray(Image.open(tmp_path / "b.png")))
    rep = tmp_path / "rep.json"
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "out"), "--report", str(rep),
                            *eng])
    assert r.exit_code == 0, r.output
    files = {Path(f["input"]).name: f for f in json.loads(rep.read_text())["files"]}
    assert files["web.jpg"]["denoise"] == 1.0 and "JPEG quality 40" in files["web.jpg"]["denoise_reason"]
    assert files["clean.png"]["denoise"] == 0.0
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "h.png").write_bytes(_encode(_scene(96, 80)))
    er = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--data", str(hr), "-s", "4", "--degrade", "jpeg:30",
                            "--report", str(er), *eng])
    assert r.exit_code == 0, r.output
    img = json.loads(er.read_text())["conditions"][0]["images"][0]
    assert img["denoise"] == 1.0 and img["denoise_reason"] == "JPEG quality 30"


@pytest.mark.parametrize("args", [["--denoise", "1.5"], ["--denoise", "-1"], ["--degradation", "sharp"]])
def test_cli_bad_degradation_values_are_usage_errors(tmp_path, args):
    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app

    p = tmp_path / "x.png"
    p.write_bytes(_encode(_scene(16, 16)))
    for cmd in (["upscale", str(p)], ["batch", str(p), "-o", str(tmp_path / "o")],
                ["compare", str(p), "-m", "clipsr-lite-x4"]):
        r = CliRunner().invoke(app, [*cmd, *args])
        assert r.exit_code == 2, (cmd, r.output)
        assert "denoise" in r.stderr or "degradation" in r.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("x_*"))


# -- the shipped pair ------------------------------------------------------------------------------
def test_builtin_default_keeps_clean_pngs_and_treats_jpegs():
    """The built-in ×4 has its degradation-aware partner; with the default (auto) a clean PNG
    goes through exactly the clean weights (today's output, bit for bit), a q30 JPEG of the same
    scene through the degradation-aware ones, which restore it better than the clean ones."""
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr
    from clipsr_cli.infer.engine import Upscaler

    kw = dict(device="cpu", precision="fp32")
    auto = Upscaler.load(scale=4, **kw)
    clean = Upscaler.load(scale=4, degradation=Degradation("clean"), **kw)
    assert auto.blendable and not clean.blendable
    hr = torch.from_numpy(_scene(160, 192, seed=5)).permute(2, 0, 1)[None].float() / 255
    lr = degrade(hr, 4)
    arr = (lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    png = read_image(_encode(arr))
    assert auto.strength_for(png).value == 0.0
    assert np.array_equal(auto.upscale_image(png)[0], clean.upscale_image(png)[0])
    jpg = read_image(_encode(arr, "JPEG", quality=30))
    assert auto.strength_for(jpg).value == 1.0
    scores = {}
    for name, up in (("auto", auto), ("clean", clean)):
        sr = torch.from_numpy(up.upscale_image(jpg)[0]).permute(2, 0, 1)[None].float() / 255
        scores[name] = float(psnr(sr, hr, border=4))
    assert scores["auto"] > scores["clean"] + 0.2, scores
