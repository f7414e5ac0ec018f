"""batch --batch-size: same-size images through the network together (issue #14, part 2).
Batched outputs equal one-at-a-time outputs within 1/255 (CPU here; the GPU the same way)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.infer.pipeline import Pipeline
from clipsr_cli.io.images import read_image

runner = CliRunner()


def _png(path, w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(
            mode).save(path)
    return path


def _close(a: np.ndarray, b: np.ndarray, maxv: int) -> bool:
    return a.shape == b.shape and np.abs(a.astype(np.int64) - b).max() <= maxv / 255


@pytest.mark.parametrize("text", [False, True])
def test_batched_equals_one_at_a_time(tmp_path, tiny_ckpt, text):
    up = Upscaler.load(tiny_ckpt(4, text=text), device="cpu", precision="fp32", tile=0)
    images = [read_image(_png(tmp_path / f"{i}.png", 12, 9, i, mode))
              for i, mode in enumerate(["RGB", "RGBA", "I;16", "RGB"])]
    captions = ["a red bird", None, "a blue bird", "a red bird"]
    together = up.upscale_images(images, captions)
    for im, cap, (rgb, alpha) in zip(images, captions, together):
        ref, ref_alpha = up.upscale_image(im, cap)
        assert rgb.dtype == ref.dtype and _close(rgb, ref, 65535 if im.bit_depth == 16 else 255)
        assert (alpha is None) == (ref_alpha is None)
        if alpha is not None:
            assert torch.equal(alpha, ref_alpha)
    if text:  # the captions really reach their own image
        assert not np.array_equal(together[0][0], up.upscale_image(images[0], None)[0])


def test_batch_limit(tiny_ckpt):
    path = tiny_ckpt()
    assert Upscaler.load(path, device="cpu", tile=0).batch_limit(50, 50, 8) == 8
    assert Upscaler.load(path, device="cpu", tile=0).batch_limit(50, 50, 1) == 1
    assert Upscaler.load(path, device="cpu").batch_limit(50, 50, 8) == 8  # auto: fits
    tiled = Upscaler.load(path, device="cpu", tile=32)
    assert tiled.batch_limit(64, 64, 8) == 1  # needs several tiles: one at a time
    assert tiled.batch_limit(16, 16, 8) == 4  # 4 × 16² = one 32² tile
    twice = Pipeline.repeat(Upscaler.load(path, device="cpu"), 2)
    assert twice.batch_limit(8, 8, 8) == 1  # pipelines run one image at a time


def test_cli_batch_size_same_outputs_and_batches_formed(tmp_path, tiny_ckpt, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(12, 9), (12, 9), (12, 9), (10, 10), (12, 9), (12, 9), (10, 10)]
    for i, (w, h) in enumerate(sizes):
        _png(src / f"{i}.png", w, h, i)
    (src / "bad.png").write_bytes(b"\x89PNG broken")  # a failure inside a batch stays its own
    calls = []
    real = Upscaler.upscale_images

    def spy(up, images, texts, strengths=None):
        calls.append(len(images))
        return real(up, images, texts, strengths)

    monkeypatch.setattr(Upscaler, "upscale_images", spy)
    outs = {}
    for bs in ("1", "3"):
        out = tmp_path / f"o{bs}"
        r = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()),
                                "--device", "cpu", "--precision", "fp32", "--batch-size", bs,
                                "--outscale", "2.5"])
        assert r.exit_code == 3 and "bad.png" in r.stderr, r.output
        outs[bs] = {p.name: np.asarray(Image.open(p)) for p in out.iterdir()}
    assert calls == [3, 2]  # in file order: 0-2 together, 3 alone, 4-5 together, 6 alone
    assert outs["1"].keys() == outs["3"].keys() and len(outs["1"]) == 7
    for name, a in outs["1"].items():
        assert _close(a, outs["3"][name], 255), name


def test_batch_that_fails_is_retried_one_at_a_time(tmp_path, tiny_ckpt, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        _png(src / f"{i}.png", 8, 8, i)

    def oom(up, images, texts, strengths=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Upscaler, "upscale_images", oom)
    r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "o"), "-m",
                            str(tiny_ckpt()), "--device", "cpu", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o").iterdir())) == 4


def test_a_pipeline_runs_images_one_at_a_time_with_the_same_results(tmp_path, tiny_ckpt):
    twice = Pipeline.repeat(Upscaler.load(tiny_ckpt(2), device="cpu", precision="fp32"), 2)
    images = [read_image(_png(tmp_path / f"{i}.png", 6, 5, i, mode))
              for i, mode in enumerate(["RGB", "RGBA"])]
    outs = twice.upscale_images(images, [None, None])
    for im, (rgb, alpha) in zip(images, outs):
        ref, ref_alpha = twice.upscale_image(im, None)
        assert rgb.shape == (20, 24, 3) and np.array_equal(rgb, ref)
        assert (alpha is None) == (ref_alpha is None)
        if alpha is not None:
            assert torch.equal(alpha, ref_alpha)


def test_engines_and_tasks_read_no_private_member_of_another_object():
    """Batching asks the engine (``batch_limit``, ``upscale_images``) instead of reading its
    ``_tile_size``; a pipeline takes its first stage's public values only (issue #19)."""
    import ast
    from pathlib import Path

    import clipsr_cli

    root = Path(clipsr_cli.__file__).parent
    found = []
    for pkg in ("infer", "tasks"):
        for path in sorted((root / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__")):
                    owner = ast.unparse(node.value)
                    if owner not in ("self", "cls") and not owner.startswith("torch."):
                        found.append(f"{pkg}/{path.name}:{node.lineno} {owner}.{node.attr}")
    assert not found, found
