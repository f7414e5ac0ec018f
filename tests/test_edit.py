"""``clipsr edit`` (issue #7): super-resolution editing by text.

The semantic tests use a tiny ×8 text-conditioned model trained once per session on the
text-necessary synthetic task (``make_stripes_dataset``: period-4 stripes invisible in the ×8 LR,
named only in the caption), so the only thing that can set the drawn texture is the text.
Measured numbers and method: docs/edit.md.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.tasks import edit as E
from clipsr_cli.cli.app import app
from clipsr_cli.data.degrade import imresize
from clipsr_cli.errors import InputError, OutputExistsError, UsageError
from tests.synthetic import KINDS, make_stripes_dataset, one_thread

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
H, V = KINDS[0], KINDS[1]  # "horizontal stripes", "vertical stripes"

# Thresholds (seeds 0-2 of the shared training, tests/synthetic.py SHARED_TRAINING, all clear them;
# docs/edit.md has the values measured with the current code, over four photos):
MIN_LR_CONSISTENCY_DB = 40.0  # measured 48.5-58.2 dB; another colour field gives 23-27 dB
MIN_ORIENTATION_RATIO = 5.0  # mean |d/dy| : |d/dx| of the residual, measured 24.8-62.4 (1/28-1/54)
# no sweep step may move back by more than 1 % of the total. Since issue #21 the text reaches F_U
# through the prompt tokens and the tiny model switches between the two textures within one step
# (seed 0: 0, 0.01, 0.98, 1.00, 1): monotone, not gradual (docs/edit.md); before, >= 0.133 a step
MIN_SWEEP_STEP = -0.01
ENGINE = ["--device", "cpu", "--precision", "fp32", "--tile", "0"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on 2 cores shared with other processes two
    spinning OpenMP threads per process measured ~10x slower (68 s vs 6 s for the training)."""
    with one_thread():
        yield


@pytest.fixture
def text_model(stripes_text_model) -> str:
    """The session's tiny ×8 text-conditioned model (tests/conftest.py), which has learned
    horizontal vs vertical stripes (and checkerboards) from captions alone."""
    return stripes_text_model


def _photo(path: Path, *, seed: int = 99, size: tuple[int, int] | None = None) -> Path:
    """An unseen synthetic photo (horizontal stripes on a smooth colour field)."""
    img = Image.fromarray(make_stripes_dataset(1, seed=seed).images[0])
    if size is not None:
        img = img.crop((0, 0, *size))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _tensor(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def _residual(out: torch.Tensor, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The high-pass part the model drew: output minus the bicubic upscale of the LR (luma-ish)."""
    up = imresize(lr, scale).clamp(0, 1)[..., :out.shape[-2], :out.shape[-1]]
    return (out - up).mean(1)[0]


def _orientation(out: torch.Tensor, lr: torch.Tensor, scale: int) -> tuple[float, float]:
    """(mean |d/dy|, mean |d/dx|) of the residual: horizontal stripes vary along y."""
    r = _residual(out, lr, scale)
    return float((r[1:] - r[:-1]).abs().mean()), float((r[:, 1:] - r[:, :-1]).abs().mean())


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# -- the done-when items: a trained text model -----------------------------------------------------
def test_the_text_sets_the_drawn_orientation_and_the_lr_is_kept(tmp_path, text_model):
    photo = _photo(tmp_path / "photo.png", size=(93, 90))  # not a multiple of 8: padded, cropped
    lr = E.prepare_lr(_tensor(photo), 8, as_lr=False).lr
    for text, vertical in ((H, False), (V, True)):
        r = _invoke(["edit", str(photo), "-t", text, "-m", text_model, "-o",
                     str(tmp_path / f"{text[0]}.png"), "--report",
                     str(tmp_path / f"{text[0]}.json"), *ENGINE])
        assert r.exit_code == 0, r.stderr
        out = _tensor(Path(r.stdout.strip()))
        assert out.shape[-2:] == (90, 93)  # exactly the input's size
        gy, gx = _orientation(out, lr, 8)
        ratio = gx / gy if vertical else gy / gx
        assert ratio > MIN_ORIENTATION_RATIO, (text, gy, gx)
        rep = json.loads((tmp_path / f"{text[0]}.json").read_text())
        (o,) = rep["outputs"]
        assert o["lr_consistency_db"] > MIN_LR_CONSISTENCY_DB, o
        said = re.search(r"LR consistency (\d+\.\d\d) dB", r.stderr)
        # the report keeps 3 decimals, the message 2: equal within their rounding
        assert said and abs(float(said.group(1)) - o["lr_consistency_db"]) <= 0.0051, r.stderr


def test_the_sweep_moves_monotonically_with_strength(text_model):
    from clipsr_cli.infer.engine import Upscaler

    up = Upscaler.load(text_model, device="cpu", precision="fp32", tile=0)
    hr = make_stripes_dataset(1, seed=5).tensor(0)
    lr = E.prepare_lr(hr, 8, as_lr=False).lr
    frames = E.edit_lr(up, lr, target_text=V, source_text=H, strengths=E.sweep_strengths(5))
    assert [f.strength for f in frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    res = [_residual(f.sr, lr, 8).flatten() for f in frames]
    d = res[-1] - res[0]
    proj = [float((r - res[0]) @ d / (d @ d)) for r in res]  # 0 at A = 0, 1 at A = 1
    steps = np.diff(proj)
    print("sweep projection", [round(p, 4) for p in proj])
    assert (steps > MIN_SWEEP_STEP).all(), proj
    # and in the semantic measure: from horizontal (gy >> gx) to vertical (gx >> gy)
    balance = [(gy - gx) / (gy + gx) for gy, gx in (_orientation(f.sr, lr, 8) for f in frames)]
    print("sweep balance", [round(b, 4) for b in balance])
    assert (np.diff(balance) < -MIN_SWEEP_STEP).all(), balance  # never back by more than 0.01
    assert balance[0] > 0.5 and balance[-1] < -0.5, balance
    assert min(f.lr_psnr for f in frames) > MIN_LR_CONSISTENCY_DB, [f.lr_psnr for f in frames]


def test_grid_and_gif_are_valid_images_with_one_frame_per_step(tmp_path, text_model):
    lr_path = tmp_path / "small.png"
    Image.fromarray(make_stripes_dataset(1, seed=17).images[0]).resize((12, 12)).save(lr_path)
    out = tmp_path / "out"
    out.mkdir()
    r = _invoke(["edit", str(lr_path), "--as-lr", "-t", V, "--source-text", H, "--sweep", "4",
                 "--grid", "--gif", "-m", text_model, "-o", str(out), *ENGINE])
    assert r.exit_code == 0, r.stderr
    written = [Path(p) for p in r.stdout.split()]
    assert [p.name for p in written] == [f"small_edit_{i}.png" for i in range(4)] + [
        "small_edit_grid.png", "small_edit.gif"]
    for p in written[:4]:
        with Image.open(p) as im:
            assert im.size == (96, 96)
    with Image.open(out / "small_edit_grid.png") as g:  # 96-px outputs shown ×3: 288 px
        g.load()
        assert g.format == "PNG" and g.width == 5 * 288 + 4 * 4 and g.height > 288
        grid = np.asarray(g.convert("RGB"))
    with Image.open(written[0]) as first:  # the first result, right of the input and the gap
        big = np.asarray(first.convert("RGB")).repeat(3, axis=0).repeat(3, axis=1)
        np.testing.assert_array_equal(grid[:288, 292:580], big)
    assert (grid[288:, :288] < 128).any()  # a label was drawn under the input
    with Image.open(out / "small_edit.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.is_animated
        assert gif.info.get("loop") == 0
        for i in range(4):
            gif.seek(i)
            gif.load()
    assert not list(out.glob(".*part"))


# -- the service -----------------------------------------------------------------------------------
def test_sweep_strengths():
    assert E.sweep_strengths(2) == [0.0, 1.0]
    assert E.sweep_strengths(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in (0, 1, -3):
        with pytest.raises(UsageError, match="at least 2"):
            E.sweep_strengths(bad)


def test_interpolate_embedding():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(1, 8, generator=g) * 3, torch.randn(1, 8, generator=g) * 0.5
    assert E.interpolate_embedding(src, tgt, 1.0) is tgt  # bit-identical to `upscale -t`
    assert E.interpolate_embedding(src, tgt, 0.0) is src
    s, t = src / src.norm(), tgt / tgt.norm()  # interpolation is between the unit vectors
    torch.testing.assert_close(E.interpolate_embedding(src, tgt, 0.25), 0.75 * s + 0.25 * t)
    torch.testing.assert_close(E.interpolate_embedding(src, tgt, 2.0), 2 * t - s)  # extrapolates
    with pytest.raises(InputError, match="cancel"):
        E.interpolate_embedding(s, -s, 0.5)
    with pytest.raises(UsageError, match="finite"):
        E.interpolate_embedding(s, t, float("nan"))


def test_prepare_lr_keeps_the_photo_size_and_uses_the_training_degradation():
    from clipsr_cli.data.degrade import degrade

    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(1))
    p = E.prepare_lr(x, 8, as_lr=False)
    assert p.lr.shape[-2:] == (5, 7) and p.out_size == (37, 50) and p.padded
    q = E.prepare_lr(x[..., :32, :48], 8, as_lr=False)
    assert not q.padded and torch.equal(q.lr, degrade(x[..., :32, :48], 8))
    a = E.prepare_lr(x, 4, as_lr=True)
    assert a.lr is x and a.out_size == (148, 200)
    with pytest.raises(InputError, match="`as_lr=True`"):
        E.prepare_lr(x[..., :5, :], 8, as_lr=False)


def test_lr_consistency_tells_a_faithful_result_from_a_changed_one():
    hr = make_stripes_dataset(1, seed=3).tensor(0)
    from clipsr_cli.data.degrade import degrade

    lr = degrade(hr, 8)
    assert E.lr_consistency(hr, lr, 8) > 50  # the HR itself explains its LR
    other = make_stripes_dataset(1, seed=4).tensor(0)  # another colour field
    assert E.lr_consistency(other, lr, 8) < 30


def test_output_names(tmp_path):
    photo = _photo(tmp_path / "p.jpg", size=(16, 16))
    d = tmp_path
    assert E.plan_outputs(str(photo), None, 1).outputs == (d / "p_edit.jpg",)
    plan = E.plan_outputs(str(photo), None, 11, grid=True, gif=True, format="png")
    assert plan.outputs[0] == d / "p_edit_00.png" and plan.outputs[-1] == d / "p_edit_10.png"
    assert (plan.grid, plan.gif) == (d / "p_edit_grid.png", d / "p_edit.gif")
    (d / "o").mkdir()
    assert E.plan_outputs(str(photo), str(d / "o"), 2).outputs == (d / "o/p_edit_0.jpg",
                                                                   d / "o/p_edit_1.jpg")
    plan = E.plan_outputs(str(photo), str(d / "r.png"), 2, grid=True)
    assert plan.outputs == (d / "r_0.png", d / "r_1.png") and plan.grid == d / "r_grid.png"
    assert E.plan_outputs(str(photo), "-", 1, format="png").outputs == (None,)
    with pytest.raises(UsageError, match="one result"):
        E.plan_outputs(str(photo), "-", 3, format="png")
    with pytest.raises(InputError, match="needs `output=FILE`"):
        E.plan_outputs("-", None, 1)
    with pytest.raises(InputError, match="does not exist"):  # a file name in a missing folder
        E.plan_outputs(str(photo), str(d / "missing" / "r.png"), 1)
    plan = E.plan_outputs(str(photo), str(d / "missing") + "/", 1)  # created when writing
    assert plan.outputs == (d / "missing/p_edit.jpg",) and plan.create == d / "missing"
    assert not (d / "missing").exists()
    with pytest.raises(OutputExistsError, match="input") as e:  # --overwrite is not enough
        E.plan_outputs(str(photo), str(photo), 1, overwrite=True)
    assert "`overwrite_input=True`" in str(e.value)
    assert E.plan_outputs(str(photo), str(photo), 1, overwrite_input=True).outputs == (photo,)
    (d / "p_edit_grid.png").write_bytes(b"x")
    with pytest.raises(InputError, match="exists"):
        E.plan_outputs(str(photo), None, 1, grid=True)
    plan = E.plan_outputs(str(photo), None, 1, grid=True, overwrite=True)
    assert plan.grid == d / "p_edit_grid.png"


def test_grid_and_gif_composition():
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full((20, 30, 3), 200, np.uint8)
    g = E.compose_grid([a, b], ["input", 'A=0.50  (no text) -> "a long caption that must wrap"'])
    # 20 px high: shown ×13 (260 px), nearest-neighbour
    assert g.dtype == np.uint8 and g.shape[1] == 2 * 390 + 4 and g.shape[0] > 260
    np.testing.assert_array_equal(g[:260, 394:], np.full((260, 390, 3), 200, np.uint8))
    data = E.compose_gif([a, a, b], ["A=0.00", "A=0.50", "A=1.00"])  # a == a: labels keep 3
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 3 and im.info["loop"] == 0


# -- the CLI (random-weight tiny models: fast) -----------------------------------------------------
def test_an_image_only_model_is_refused_with_what_to_do(tmp_path, tiny_ckpt, monkeypatch):
    photo = _photo(tmp_path / "p.png", size=(32, 32))
    r = _invoke(["edit", str(photo), "-t", V, "-m", str(tiny_ckpt(scale=8)), *ENGINE])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    assert "not text-conditioned" in r.stderr and "clipsr train --data DIR --out RUN" in r.stderr
    assert "docs/training.md" in r.stderr  # the hint upscale's warning gives too (issue #22)
    r = _invoke(["edit", str(photo), "-t", V, "-m", "clipsr-lite-x8", *ENGINE])  # refused unloaded
    assert r.exit_code == 1 and "clipsr-lite-x8 is not text-conditioned" in r.stderr
    r = _invoke(["edit", str(photo), "-t", V, *ENGINE])  # no -m: the image-only default
    assert r.exit_code == 1 and "(the default) is not text-conditioned" in r.stderr
    reg = tmp_path / "reg.toml"
    reg.write_text('[[model]]\nname = "birds-x8"\nkind = "generator"\ndescription = "t"\n'
                   'license = "MIT"\nfile = "b.safetensors"\nsha256 = "' + "0" * 64 + '"\n'
                   'urls = ["file:///nonexistent/b.safetensors"]\nscale = 8\n'
                   'text_guided = true\nclip = "ViT-B-32:openai"\n')
    monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))
    r = _invoke(["edit", str(photo), "-t", V, "-m", str(tiny_ckpt(scale=8)), *ENGINE])
    assert r.exit_code == 1 and "use a text-guided model: --model birds-x8 (×8)" in r.stderr
    assert not list(tmp_path.glob("p_edit*"))


def test_same_inputs_same_bytes_results_on_stdout_report_on_stderr(tmp_path, tiny_ckpt):
    photo = _photo(tmp_path / "p.png", size=(40, 36))
    model = str(tiny_ckpt(scale=8, text=True))
    outs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        r = _invoke(["edit", str(photo), "-t", V, "--sweep", "3", "--grid", "--gif", "-m", model,
                     "-o", str(tmp_path / run) + "/", "--report", str(tmp_path / f"{run}.json"),
                     *ENGINE])
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 5 and all(Path(p).is_file() for p in lines)
        assert "LR consistency" in r.stderr and "null text" in r.stderr
        outs.append({Path(p).name: Path(p).read_bytes() for p in lines})
    assert outs[0] == outs[1]
    rep = json.loads((tmp_path / "a.json").read_text())
    assert [o["strength"] for o in rep["outputs"]] == [0.0, 0.5, 1.0]
    assert rep["mode"] == "photo" and rep["source_text"] is None and rep["target_text"] == V
    with Image.open(tmp_path / "a" / "p_edit_0.png") as im:
        assert im.size == (40, 36)
    # never clobbered without --overwrite; replaced with it
    r = _invoke(["edit", str(photo), "-t", V, "-m", model, "-o", str(tmp_path / "a/p_edit_0.png"),
                 *ENGINE])
    assert r.exit_code == 1 and "exists" in r.stderr
    r = _invoke(["edit", str(photo), "-t", H, "-m", model, "-o", str(tmp_path / "a/p_edit_0.png"),
                 "--overwrite", *ENGINE])
    assert r.exit_code == 0
    assert (tmp_path / "a/p_edit_0.png").read_bytes() != outs[0]["p_edit_0.png"]


def test_full_strength_as_lr_is_exactly_upscale_with_the_text(tmp_path, tiny_ckpt):
    lr = _photo(tmp_path / "lr.png", size=(14, 10))
    model = str(tiny_ckpt(scale=8, text=True))
    a = _invoke(["edit", str(lr), "--as-lr", "-t", V, "-m", model, "-o", str(tmp_path / "e.png"),
                 *ENGINE])
    b = _invoke(["upscale", str(lr), "-t", V, "-m", model, "-o", str(tmp_path / "u.png"), *ENGINE])
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    assert (tmp_path / "e.png").read_bytes() == (tmp_path / "u.png").read_bytes()
    c = _invoke(["edit", str(lr), "--as-lr", "-t", V, "--strength", "-0.5", "-m", model, "-o",
                 str(tmp_path / "x.png"), *ENGINE])  # negative strengths parse (extrapolation)
    assert c.exit_code == 0, c.stderr
    assert (tmp_path / "x.png").read_bytes() != (tmp_path / "e.png").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--gif"], "--gif animates a sweep"),
    (["--sweep", "3", "--strength", "0.5"], "exclude each other"),
    (["--sweep", "1"], "greater than or equal to 2"),
    (["-t", " "], "target text"),
    (["--strength", "nan"], "finite"),
])
def test_bad_option_combinations(tmp_path, tiny_ckpt, args, message):
    photo = _photo(tmp_path / "p.png", size=(16, 16))
    base = ["edit", str(photo), "-t", V] if "-t" not in args else ["edit", str(photo)]
    r = _invoke([*base, *args, "-m", str(tiny_ckpt(scale=8, text=True)), *ENGINE])
    assert r.exit_code in (1, 2) and message in r.stderr, r.stderr
    assert not list(tmp_path.glob("p_edit*"))


def test_a_real_process_writes_paths_to_stdout(tmp_path, tiny_ckpt):
    photo = _photo(tmp_path / "p.png", size=(24, 24))
    cmd = [sys.executable, "-m", "clipsr_cli", "edit", str(photo), "-t", V, "-m",
           str(tiny_ckpt(scale=8, text=True)), *ENGINE]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'p_edit.png'}\n"
    assert "LR consistency" in r.stderr
