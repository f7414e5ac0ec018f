"""``clipsr edit`` outputs (issue #13, item 6): ``-o DIR/`` (missing or existing) for single
results, sweeps, grids and GIFs; grid/GIF views at a size where results can be compared; labels
wrapped without splitting a word. Random-weight tiny models (tests/conftest.py): fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.tasks import edit_render as R
from tests.synthetic import KINDS, make_stripes_dataset, one_thread

runner = CliRunner()
V, C = KINDS[1], KINDS[2]  # "vertical stripes", "a checkerboard"
ENGINE = ["--device", "cpu", "--precision", "fp32", "--tile", "0"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture
def model(tiny_ckpt) -> str:
    return str(tiny_ckpt(scale=8, text=True))


def _image(path: Path, size: tuple[int, int]) -> Path:
    img = Image.fromarray(make_stripes_dataset(1, seed=7).images[0]).resize(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _edit(*args: str):
    r = runner.invoke(app, ["edit", *args, *ENGINE])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- -o DIR/ ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("exists", [False, True])
def test_output_folder_with_a_trailing_slash(tmp_path, model, exists):
    photo = _image(tmp_path / "p.png", (32, 24))
    folder = tmp_path / "edits" / "sweep"  # two levels missing when not `exists`
    if exists:
        folder.mkdir(parents=True)
    r = _edit(str(photo), "-t", V, "--sweep", "3", "--grid", "--gif", "-m", model,
              "-o", f"{folder}/", "--report", str(folder / "r.json"))
    assert r.exit_code == 0, r.stderr
    names = ["p_edit_0.png", "p_edit_1.png", "p_edit_2.png", "p_edit_grid.png", "p_edit.gif"]
    assert r.stdout.split() == [str(folder / n) for n in names]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "r.json"])
    assert json.loads((folder / "r.json").read_text())["grid"] == str(folder / "p_edit_grid.png")
    with Image.open(folder / "p_edit_1.png") as im:
        assert im.size == (32, 24)
    # a single result into another new folder
    r = _edit(str(photo), "-t", V, "-m", model, "-o", f"{tmp_path / 'one'}/")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "one" / "p_edit.png")]
    assert (tmp_path / "one" / "p_edit.png").is_file()


def test_output_folder_refusals_create_nothing(tmp_path, model, tiny_ckpt):
    photo = _image(tmp_path / "p.png", (16, 16))
    r = _edit(str(photo), "-t", V, "-m", model, "-o", f"{photo}/")  # a file on the path
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "is a file" in r.stderr
    r = _edit(str(photo), "-t", V, "-m", str(tiny_ckpt(scale=8)), "-o", f"{tmp_path / 'new'}/")
    assert r.exit_code == 1 and "not text-conditioned" in r.stderr
    assert not (tmp_path / "new").exists()  # refused before anything was written
    r = _edit(str(photo), "-t", V, "-m", model, "-o", str(tmp_path / "missing" / "e.png"))
    assert r.exit_code == 1 and "does not exist; create it first" in r.stderr


# -- views -----------------------------------------------------------------------------------------
def test_view_factor():
    assert R.view_factor(16, 16) == 16 and R.view_factor(96, 96) == 3
    assert R.view_factor(36, 40) == 8 and R.view_factor(255, 900) == 2
    assert R.view_factor(256, 300) == 1 and R.view_factor(1000, 2000) == 1  # never shrunk
    assert R.view_factor(20, 4000) == 2  # the longer side stays within MAX_VIEW_SIDE


def _cells(grid: np.ndarray, n: int, gap: int = 4) -> int:
    """The width of each of the ``n`` equal cells of a grid."""
    width = (grid.shape[1] - gap * (n - 1)) / n
    assert width == int(width)
    return int(width)


def test_grid_and_gif_views_are_large_enough_for_a_tiny_output(tmp_path, model):
    lr = _image(tmp_path / "lr.png", (3, 2))  # ×8: a 24×16 output
    r = _edit(str(lr), "--as-lr", "-t", V, "--sweep", "2", "--grid", "--gif", "-m", model,
              "-o", str(tmp_path / "e.png"))
    assert r.exit_code == 0, r.stderr
    grid = _rgb(tmp_path / "e_grid.png")
    k = 16  # 16 px → 256 px
    assert _cells(grid, 3) == 24 * k and grid.shape[0] > 16 * k
    out = _rgb(tmp_path / "e_1.png")
    assert out.shape[:2] == (16, 24)
    cell = grid[:16 * k, 2 * (24 * k + 4):]
    np.testing.assert_array_equal(cell, out.repeat(k, axis=0).repeat(k, axis=1))
    with Image.open(tmp_path / "e.gif") as gif:
        assert gif.width == 24 * k and gif.height > 16 * k and gif.n_frames == 2


def test_a_larger_output_is_shown_at_its_own_size(tmp_path, model):
    photo = _image(tmp_path / "p.png", (272, 264))  # > 256 px on both sides: not enlarged
    r = _edit(str(photo), "-t", V, "--sweep", "2", "--grid", "-m", model, "-o",
              str(tmp_path / "e.png"))
    assert r.exit_code == 0, r.stderr
    grid = _rgb(tmp_path / "e_grid.png")
    assert _cells(grid, 3) == 272 and grid.shape[0] > 264
    np.testing.assert_array_equal(grid[:264, 276:548], _rgb(tmp_path / "e_0.png"))


# -- labels ----------------------------------------------------------------------------------------
def _font(size: int):
    return ImageFont.load_default(size=size)


def test_labels_wrap_on_spaces_and_never_split_a_word():
    text = 'A=0.50  "horizontal stripes" -> "a checkerboard"'
    for width in (75, 90, 130, 256):
        lines, size = R.fit_label(text, width, 14)
        assert " ".join(lines).split() == text.split(), (width, lines)  # whole words, in order
        assert all(_font(size).getlength(line) <= width for line in lines), (width, lines)
    lines, size = R.fit_label("a checkerboard", 70, 14)  # "checkerboard" ~87 px at 14
    assert lines == ["a", "checkerboard"] and R.MIN_FONT_SIZE <= size < 14
    lines, size = R.fit_label("a checkerboard", 30, 14)  # too wide even at the smallest size
    assert size == R.MIN_FONT_SIZE and lines[0] == "a"
    assert lines[1].endswith("...") and "checkerboard".startswith(lines[1][:-3])
    assert len(lines) == 2 and _font(size).getlength(lines[1]) <= 30


def test_label_font_is_readable_for_the_cell():
    assert R.label_font_size(256) == 14 and R.label_font_size(2000) == 40
    assert R.label_font_size(40) >= R.MIN_FONT_SIZE
    a = np.zeros((8, 8, 3), np.uint8)  # a tiny result with a label naming the checkerboard
    g = R.compose_grid([a, a], ["input", f'A=1.00  (no text) -> "{C}"'])
    assert g.shape[1] == 2 * 256 + 4  # 8 px shown ×32
    assert (g[256:, 260:] < 128).any()  # the label was drawn
