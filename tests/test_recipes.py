"""The text recipes work as written: each runs for a few steps on a generated dataset of its
real dataset's shape, with only the steps, the CLIP (``clipsr-tiny:random``: no real CLIP weights
here) and the data path given on the command line.

The datasets use the CLIP-SR authors' layout (``ROOT/{train,test}/filenames.pickle``,
``ROOT/text/KEY.txt``, the images) at the real image sizes: CUB birds up to 500 px (JPEG, keys
with class sub-folders, 10 captions), CelebA aligned faces 178 x 218 (10 captions), COCO about
640 x 480 (5 captions). No image may be skipped as too small: every crop fits.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.train.config import from_toml_text
from clipsr_cli.train.settings import read_file

pytestmark = pytest.mark.slow  # the recipes' full-size models and crops, on the CPU

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

CUB_KEYS = {
    "train": ["001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111",
              "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55",
              "002.Laysan_Albatross/Laysan_Albatross_0001_545",
              "002.Laysan_Albatross/Laysan_Albatross_0002_1027"],
    "test": ["003.Sooty_Albatross/Sooty_Albatross_0001_1071",
             "003.Sooty_Albatross/Sooty_Albatross_0002_796395"]}
CUB_SIZES = [(500, 375), (500, 333), (375, 500), (500, 400), (500, 347), (334, 500)]


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth colour field with some grain, as a JPEG of ``size`` (w, h)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h),
                                                                                      Image.BICUBIC)
    arr = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def _layout(root: Path, keys: dict[str, list[str]], image_dir: str, sizes, n_captions: int) -> Path:
    for split, ks in keys.items():
        (root / split).mkdir(parents=True)
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(ks, protocol=2))
    for i, key in enumerate(k for ks in keys.values() for k in ks):
        _jpeg(root / image_dir / f"{key}.jpg", sizes[i % len(sizes)], seed=i)
        txt = root / "text" / f"{key}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"caption {j} of image {i}: a small bird with a white belly\n"
                               for j in range(n_captions)))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("recipe_data")
    coco = {"train": [f"COCO_train2014_{i:012d}" for i in (9, 25, 30, 34)],
            "test": [f"COCO_val2014_{i:012d}" for i in (42, 73)]}
    return {
        "birds": _layout(base / "birds", CUB_KEYS, "CUB_200_2011/images", CUB_SIZES, 10),
        "celeba": _layout(base / "celeba", {"train": [str(i) for i in range(4)],
                                            "test": ["4", "5"]}, "images", [(178, 218)], 10),
        "coco": _layout(base / "coco", coco, "images", [(640, 480), (480, 640), (640, 427)], 5),
    }


def _run(recipe: str, data: Path, out: Path, *extra: str) -> dict:
    from clipsr_cli.cli.app import app

    args = ["train", "--config", str(RECIPES / recipe), "--data", str(data), "--val", str(data),
            "--out", str(out), "--steps", "2", "--clip", "clipsr-tiny:random", "-q", *extra]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out / "model.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2 and summary["small_images"] == 0 and summary["unreadable_images"] == 0
    assert summary["val"] is not None and np.isfinite(summary["val"]["val_psnr"])
    # everything but the overrides is as the recipe says
    saved = from_toml_text((out / "config.toml").read_text(), source="saved")
    written = read_file(RECIPES / recipe).sections
    for sec, values in written.items():
        if sec == "run":
            values = {k: v for k, v in values.items() if k not in ("steps", "clip")}
        for k, v in values.items():
            got = getattr(getattr(saved, sec), k)
            assert (list(got) if isinstance(got, tuple) else got) == v, (recipe, sec, k)
    return summary


@pytest.mark.parametrize("recipe, dataset", [("birds-x16-text.toml", "birds"),
                                             ("celeba-x8-text.toml", "celeba"),
                                             ("coco-x8-text.toml", "coco")])
def test_text_recipe_runs_as_written(tmp_path, datasets, recipe, dataset):
    _run(recipe, datasets[dataset], tmp_path / "run")


def test_birds_x8_text_then_gan_fine_tuning(tmp_path, datasets):
    from clipsr_cli.model.checkpoint import load_checkpoint

    _run("birds-x8-text.toml", datasets["birds"], tmp_path / "x8")
    m = load_checkpoint(tmp_path / "x8/model.safetensors")
    assert m.config.scale == 8 and m.config.text_conditioned
    summary = _run("birds-x8-gan.toml", datasets["birds"], tmp_path / "gan",
                   "--init", str(tmp_path / "x8/model.safetensors"))
    assert summary["perceptual"] == "clip"
