"""Any output size (issue #14, part 2): --outscale, --width, --height, --passes, in upscale and
batch; exact sizes, names, 16-bit and alpha kept, bad values exit 2 with one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import InputError, UsageError
from clipsr_cli.io.images import read_image
from clipsr_cli.tasks.outsize import OutputSize, format_factor, resize_output

runner = CliRunner()


def _img(path, w=15, h=11, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    else:
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        a[..., 3] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # a real alpha ramp
        Image.fromarray(a, "RGBA").convert(mode).save(path)
    return path


def _up(tmp_path, tiny_ckpt, *args, src=None, scale=4):
    src = src or _img(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(scale)), "--device", "cpu",
                            "--precision", "fp32", *args])
    return r


def half_up(x):
    return math.floor(x + 0.5)


# -- the size rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [1, 2.5, 3, 4, 5.3])
def test_outscale_sizes_are_round_f_times_the_input(f):
    for w, h in [(15, 11), (1, 1), (7, 1000), (33, 17)]:
        assert OutputSize.parse(outscale=f).target(w, h) == (half_up(f * w), half_up(f * h))


def test_width_height_keep_the_aspect_ratio_and_both_must_agree():
    assert OutputSize.parse(width=30).target(15, 11) == (30, 22)
    assert OutputSize.parse(height=30).target(15, 11) == (41, 30)  # 40.9 → 41
    assert OutputSize.parse(width=30, height=22).target(15, 11) == (30, 22)
    assert OutputSize.parse(width=30, height=23).target(15, 11) == (30, 23)  # within a pixel
    with pytest.raises(InputError, match="stretch"):
        OutputSize.parse(width=30, height=30).target(15, 11)
    assert OutputSize.parse() is None


def test_names():
    assert OutputSize.parse(outscale=2.5).suffix == "_x2.5"
    assert OutputSize.parse(outscale=3.0).suffix == "_x3"
    assert OutputSize.parse(width=1920).suffix == "_w1920"
    assert OutputSize.parse(height=1080).suffix == "_h1080"
    assert OutputSize.parse(width=1920, height=1080).suffix == "_1920x1080"
    assert format_factor(1.3333333) == "1.333333"


@pytest.mark.parametrize("kw", [dict(outscale=0), dict(outscale=-2), dict(outscale=0.5),
                                dict(outscale=float("nan")), dict(outscale=float("inf")),
                                dict(outscale="x"), dict(outscale=2, width=10),
                                dict(width=0), dict(height=-3), dict(width=2.5)])
def test_bad_values_are_usage_errors(kw):
    with pytest.raises(UsageError):
        OutputSize.parse(**kw)


def test_resize_is_pillow_lanczos_and_keeps_depth_and_alpha():
    import torch

    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out, a = resize_output(rgb8, None, (45, 30))
    ref = np.asarray(Image.fromarray(rgb8).resize((45, 30), Image.Resampling.LANCZOS))
    assert out.dtype == np.uint8 and a is None and np.array_equal(out, ref)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    alpha = torch.rand(1, 1, 20, 30)
    out, a = resize_output(rgb16, alpha, (12, 8))  # downscaling: antialiased
    assert out.dtype == np.uint16 and out.shape == (8, 12, 3)
    assert a.shape == (1, 1, 8, 12) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert len(np.unique(out)) > 256  # still 16-bit, not 8-bit rounded
    flat = np.full((20, 30, 3), 40000, np.uint16)  # a flat image stays flat
    assert np.all(resize_output(flat, None, (77, 51))[0] == 40000)
    same = resize_output(rgb8, alpha, (30, 20))
    assert same[0] is rgb8 and same[1] is alpha


# -- upscale ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,name,size", [
    (["--outscale", "1"], "in_x1.png", (15, 11)),
    (["--outscale", "2.5"], "in_x2.5.png", (38, 28)),
    (["--outscale", "3"], "in_x3.png", (45, 33)),
    (["--outscale", "6"], "in_x6.png", (90, 66)),  # above ×4: resized up
    (["--width", "50"], "in_w50.png", (50, 37)),
    (["--height", "20"], "in_h20.png", (27, 20)),
    (["--width", "50", "--height", "37"], "in_50x37.png", (50, 37)),
])
def test_upscale_exact_sizes_and_names(tmp_path, tiny_ckpt, args, name, size):
    r = _up(tmp_path, tiny_ckpt, *args)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tmp_path / name)
    with Image.open(tmp_path / name) as im:
        assert im.size == size


def test_outscale_equal_to_the_model_scale_is_the_plain_output(tmp_path, tiny_ckpt):
    src = _img(tmp_path / "in.png")
    assert _up(tmp_path, tiny_ckpt, src=src).exit_code == 0
    assert _up(tmp_path, tiny_ckpt, "--outscale", "4", "-o", str(tmp_path / "f.png"),
               src=src).exit_code == 0
    assert (tmp_path / "in_x4.png").read_bytes() == (tmp_path / "f.png").read_bytes()


def test_downscaled_output_is_lanczos_of_the_model_output(tmp_path, tiny_ckpt):
    src = _img(tmp_path / "in.png")
    assert _up(tmp_path, tiny_ckpt, src=src).exit_code == 0
    assert _up(tmp_path, tiny_ckpt, "--outscale", "2.5", src=src).exit_code == 0
    with Image.open(tmp_path / "in_x4.png") as full, Image.open(tmp_path / "in_x2.5.png") as got:
        ref = np.asarray(full.resize((38, 28), Image.Resampling.LANCZOS))
        assert np.array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_16_bit_and_alpha_are_kept(tmp_path, tiny_ckpt, mode):
    src = _img(tmp_path / "in.png", mode=mode)
    r = _up(tmp_path, tiny_ckpt, "--outscale", "2.5", src=src)
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "in_x2.5.png")
    assert out.size == (38, 28)
    if mode == "I;16":
        assert out.bit_depth == 16 and out.grayscale
        assert len(np.unique(np.asarray(Image.open(tmp_path / "in_x2.5.png")))) > 256
    else:
        assert out.alpha is not None
        a = out.alpha[0, 0].numpy()
        assert a[:, 0].mean() < 0.1 < 0.9 < a[:, -1].mean()  # the ramp, resized


def test_passes_run_the_model_again(tmp_path, tiny_ckpt):
    src = _img(tmp_path / "in.png", w=6, h=5)
    r = _up(tmp_path, tiny_ckpt, "--passes", "2", src=src)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "in_x16.png") as im:
        assert im.size == (96, 80)
    r = _up(tmp_path, tiny_ckpt, "--passes", "2", "--outscale", "10", src=src)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "in_x10.png") as im:
        assert im.size == (60, 50)


@pytest.mark.parametrize("args", [["--outscale", "0"], ["--outscale", "-1"],
                                  ["--outscale", "nan"], ["--outscale", "0.5"],
                                  ["--outscale", "2", "--width", "30"], ["--width", "0"],
                                  ["--height", "-5"], ["--passes", "0"],
                                  ["--width", "60", "--height", "60"]])
def test_upscale_bad_values_exit_2_with_one_line(tmp_path, tiny_ckpt, args):
    r = _up(tmp_path, tiny_ckpt, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "--" in lines[0] and "`" not in lines[0]  # names the flag, CLI words
    assert [p.name for p in tmp_path.iterdir()] == ["in.png"]


# -- batch -----------------------------------------------------------------------------------------
def test_batch_sizes_names_depth_and_alpha(tmp_path, tiny_ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _img(src / "a.png", 15, 11)
    _img(src / "b.png", 20, 8, mode="RGBA", seed=1)
    _img(src / "c.png", 9, 13, mode="I;16", seed=2)
    r = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()),
                            "--outscale", "2.5", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"a_x2.5.png": (38, 28), "b_x2.5.png": (50, 20), "c_x2.5.png": (23, 33)}
    assert read_image(out / "b_x2.5.png").alpha is not None
    assert read_image(out / "c_x2.5.png").bit_depth == 16
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "w"), "-m",
                            str(tiny_ckpt()), "--width", "30", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "w").iterdir()}
    assert sizes == {"a_w30.png": (30, 22), "b_w30.png": (30, 12), "c_w30.png": (30, 43)}


def test_batch_both_sides_refuses_only_the_images_it_would_stretch(tmp_path, tiny_ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _img(src / "a.png", 15, 11)
    _img(src / "b.png", 11, 15, seed=1)
    r = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()),
                            "--width", "30", "--height", "22", "--device", "cpu"])
    assert r.exit_code == 3, r.output
    assert [p.name for p in out.iterdir()] == ["a_30x22.png"]
    assert "stretch" in r.stderr and "--width 30" in r.stderr


@pytest.mark.parametrize("args", [["--outscale", "0.9"], ["--width", "3", "--outscale", "2"],
                                  ["--batch-size", "0"], ["--passes", "0"]])
def test_batch_bad_values_exit_2(tmp_path, args):
    _img(tmp_path / "a.png")
    r = runner.invoke(app, ["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "o").exists()
