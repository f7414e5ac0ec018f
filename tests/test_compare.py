"""`clipsr compare`: several models on one image, a labelled grid, times, and --ref scores equal
to the metrics computed directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.data.degrade import imresize
from clipsr_cli.data.metrics import psnr, ssim
from clipsr_cli.errors import UsageError
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.io.images import read_image
from clipsr_cli.tasks.compare import PANEL, auto_crop, compare, parse_crop

runner = CliRunner()


@pytest.fixture(scope="module")
def compact_x4(tmp_path_factory):
    spandrel = pytest.importorskip("spandrel")  # noqa: F841
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("cmp") / "compact-x4.pth"
    torch.save({"params_ema": Compact(num_feat=8, num_conv=2, upscale=4).state_dict()}, p)
    return p


def _pair(tmp_path, size=(40, 32)):
    """An HR photo and its ×4 LR (MATLAB bicubic), as files."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:4 * h, 0:4 * w]
    base = (np.sin(xx / 5.0) * np.cos(yy / 7.0) * 100 + 128)[..., None]
    hr = np.clip(base + rng.normal(0, 10, (4 * h, 4 * w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr.png")
    t = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    lr = imresize(t, 0.25).clamp(0, 1)[0].permute(1, 2, 0).mul(255).round().byte().numpy()
    Image.fromarray(lr).save(tmp_path / "lr.png")
    return tmp_path / "lr.png", tmp_path / "hr.png"


def test_compare_grid_labels_and_ref_scores(tmp_path, tiny_ckpt, compact_x4):
    lr, hr = _pair(tmp_path)
    models = ["clipsr-lite-x4", str(tiny_ckpt(4, text=True)), str(compact_x4)]
    grid = tmp_path / "grid.png"
    r = runner.invoke(app, ["compare", str(lr), *sum((["-m", m] for m in models), []),
                            "-t", "a striped wall", "--ref", str(hr), "-o", str(grid),
                            "--device", "cpu", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["model", "scale", "seconds", "y_psnr_db", "ssim"]
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in lines[1:]}
    assert set(rows) == {*models, "bicubic"}
    assert "compact-x4.pth is not text-conditioned" in r.output  # warned, then ignored
    # the printed scores are the metrics computed directly on each model's output
    x = read_image(lr).rgb
    ref = read_image(hr).rgb
    for m in models:
        up = Upscaler.load(m, device="cpu", precision="fp32")
        sr = up.upscale_tensor(x, "a striped wall" if up.info.text_conditioned else None)
        assert rows[m][3] == f"{float(psnr(sr, ref, border=4)):.2f}"
        assert rows[m][4] == f"{float(ssim(sr, ref, border=4)):.4f}"
        assert float(rows[m][2]) > 0
    bic = imresize(x, 4).clamp(0, 1)
    assert rows["bicubic"][3] == f"{float(psnr(bic, ref, border=4)):.2f}"
    # the grid: bicubic + 3 models + the reference, one column each, labels under the crops
    img = np.asarray(Image.open(grid).convert("RGB"))
    assert img.shape[1] == 5 * 160 + 4 * 6
    # full row (160×128), the auto crop (16 LR px = 64 HR px, zoomed ×2), then the labels
    assert img.shape[0] > 128 + 6 + 128 + 20
    label_band = img[128 + 6 + 128:]
    for c in range(5):
        col = label_band[:, c * 166:c * 166 + 160]
        assert (col < 100).any(), f"column {c} has no label text"


def test_compare_library_result_and_explicit_crop(tmp_path, compact_x4):
    lr, hr = _pair(tmp_path, size=(24, 20))
    seen = []
    res = compare(input=lr, models=["clipsr-lite-x4", str(compact_x4)], ref=hr, crop="2,3,8,6",
                  options=EngineOptions(device="cpu", precision="fp32"), on_result=seen.append)
    assert [r.name for r in seen] == ["clipsr-lite-x4", str(compact_x4)] and res.output is None
    assert res.crop == (2, 3, 8, 6) and not res.crop_auto and res.scale == 4
    assert all(r.image.shape == (80, 96, 3) and r.seconds > 0 for r in res.runs)
    assert res.runs[0].label.splitlines()[0] == "clipsr-lite-x4"
    assert res.runs[1].label.splitlines()[0] == "compact-x4.pth"
    assert res.grid.shape[1] == 4 * 96 + 3 * 6  # bicubic, two models, reference
    # the crop is outlined in red on the full outputs
    x0 = 96 + 6
    assert tuple(res.grid[3 * 4, x0 + 2 * 4 + 5]) == (230, 30, 30)


def test_auto_crop_finds_where_outputs_differ():
    a = np.zeros((64, 64, 3), np.uint8)
    b = a.copy()
    b[40:56, 8:24] = 255  # LR (×2) region x 4..12, y 20..28
    x, y, w, h = auto_crop([a, b], 2, (32, 32))
    assert w == h == 16  # a quarter of the shorter side, at least 16
    assert x <= 4 and x + w >= 12 and y <= 20 and y + h >= 28


def test_bad_crop_and_mixed_scales_are_usage_errors(tmp_path, tiny_ckpt):
    with pytest.raises(UsageError, match="x,y,w,h"):
        parse_crop("1,2,3", (10, 10))
    with pytest.raises(UsageError, match="not inside"):
        parse_crop("5,5,8,8", (10, 10))
    lr, _ = _pair(tmp_path, size=(16, 12))
    r = runner.invoke(app, ["compare", str(lr), "-m", "clipsr-lite-x4", "-m",
                            str(tiny_ckpt(8)), "--device", "cpu"])
    assert r.exit_code == 2 and "--model must all upscale by one factor" in r.output
    assert not (tmp_path / "lr_compare.png").exists()
    r = runner.invoke(app, ["compare", str(lr), "--device", "cpu"])
    assert r.exit_code == 2 and "--model needs at least one model" in r.output
    assert PANEL >= 256
