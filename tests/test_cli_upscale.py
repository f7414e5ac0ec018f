"""`clipsr upscale` end to end: formats, text, bad inputs (exit 1, one line, nothing left)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from clipsr_cli.cli.app import app

runner = CliRunner()


def _photo(path, size=(20, 14), mode="RGB", **save):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(a, "RGBA").convert(mode)
    img.save(path, **save)
    return path


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_help_lists_the_subcommands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("upscale", "batch", "edit", "train", "download"):
        assert cmd in r.stdout
    v = runner.invoke(app, ["--version"])
    assert v.exit_code == 0 and v.stdout.startswith("clipsr ")


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_upscale_builtin_each_scale(tmp_path, scale):
    src = _photo(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-s", str(scale), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = tmp_path / f"in_x{scale}.png"
    assert r.stdout.strip() == str(out)  # the result path, alone, on stdout
    assert Image.open(out).size == (20 * scale, 14 * scale)


@pytest.mark.parametrize("scale", [4, 8, 16])
def test_upscale_with_and_without_text(tmp_path, tiny_ckpt, scale):
    src = _photo(tmp_path / "in.png", size=(9, 7))
    ckpt = tiny_ckpt(scale, text=True)
    outs = {}
    for text in (None, "a red bird", "a blue bird"):
        o = tmp_path / f"o_{len(outs)}.png"
        args = ["upscale", str(src), "-m", str(ckpt), "-o", str(o), "--precision", "fp32"]
        if text:
            args += ["--text", text]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        outs[text] = np.asarray(Image.open(o)).astype(int)
        assert outs[text].shape == (7 * scale, 9 * scale, 3)
    assert np.abs(outs["a red bird"] - outs["a blue bird"]).max() > 0  # text reaches the pixels


def test_text_with_image_only_model_warns(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-t", "a cat"])
    assert r.exit_code == 0
    assert "not text-conditioned" in r.stderr


def test_rgba_keeps_alpha(tmp_path, tiny_ckpt):
    src = tmp_path / "a.png"
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., :3] = 200
    a[:, 4:, 3] = 255  # right half opaque
    Image.fromarray(a, "RGBA").save(src)
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "RGBA" and out.size == (32, 32)
    al = np.asarray(out)[..., 3]
    assert al[:, :12].max() <= 5 and al[:, 20:].min() >= 250


def test_exif_rotated_input_comes_out_upright(tmp_path, tiny_ckpt):
    src = tmp_path / "rot.jpg"
    img = Image.new("RGB", (16, 8), (255, 255, 255))  # stored landscape …
    exif = Image.Exif()
    exif[0x0112] = 6  # … displayed rotated 90°: portrait 8×16
    img.save(src, exif=exif.tobytes(), quality=95)
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "o.png").size == (32, 64)


def test_16_bit_png_in_16_bit_png_out(tmp_path, tiny_ckpt):
    from clipsr_cli.io.images import read_image

    src = tmp_path / "deep.png"
    g = (np.linspace(0, 65535, 12 * 10).reshape(10, 12)).astype(np.uint16)
    Image.fromarray(g).save(src)
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "o.png")
    assert out.bit_depth == 16 and out.size == (48, 40)
    raw = np.asarray(Image.open(tmp_path / "o.png"))
    assert raw.dtype in (np.uint16, np.int32) and len(np.unique(raw)) > 256  # really 16-bit


def test_icc_profile_is_kept(tmp_path, tiny_ckpt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _photo(tmp_path / "icc.png", icc_profile=icc)
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "o.png").info.get("icc_profile") == icc


def test_stdin_to_stdout(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png", size=(6, 5))
    r = subprocess.run([sys.executable, "-m", "clipsr_cli", "upscale", "-", "-o", "-", "--format",
                        "png", "-m", str(tiny_ckpt(4)), "-q"], input=src.read_bytes(),
                       capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert Image.open(io.BytesIO(r.stdout)).size == (24, 20)


def test_tiled_cli_matches_untiled(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png", size=(60, 44))
    ck = str(tiny_ckpt(4, text=True))
    for name, tile in (("a.png", "0"), ("b.png", "16")):
        r = runner.invoke(app, ["upscale", str(src), "-m", ck, "-t", "x", "--tile", tile,
                                "--precision", "fp32", "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    a, b = (np.asarray(Image.open(tmp_path / n)).astype(int) for n in ("a.png", "b.png"))
    assert np.abs(a - b).max() <= 1


# -- bad input: exit 1, one line on stderr, no traceback, no output, input untouched -------------
def _bad(r, pattern, tmp_path, before, code=1):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert pattern.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in r.output
    assert _files(tmp_path) == before  # nothing written


def test_missing_file(tmp_path):
    r = runner.invoke(app, ["upscale", str(tmp_path / "nope.png")])
    _bad(r, "does not exist", tmp_path, [])


def test_corrupt_and_truncated_images(tmp_path, tiny_ckpt):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    good = _photo(tmp_path / "t.png", size=(64, 64))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:200])
    good.unlink()
    before = _files(tmp_path)
    for p in (bad, trunc):
        data = p.read_bytes()
        r = runner.invoke(app, ["upscale", str(p), "-m", str(tiny_ckpt(4))])
        _bad(r, str(p.name), tmp_path, before)
        assert p.read_bytes() == data  # input untouched


def test_unsupported_format_and_zero_size(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    before = _files(tmp_path)
    _bad(runner.invoke(app, ["upscale", str(txt)]), "notes.txt", tmp_path, before)
    _bad(runner.invoke(app, ["upscale", str(empty)]), "empty.png", tmp_path, before)


def test_not_a_checkpoint_and_truncated_checkpoint(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(tiny_ckpt(4).read_bytes()[:-50])
    before = _files(tmp_path)
    _bad(runner.invoke(app, ["upscale", str(src), "-m", str(junk)]), "checkpoint", tmp_path, before)
    _bad(runner.invoke(app, ["upscale", str(src), "-m", str(trunc)]), "truncated", tmp_path, before)


def test_unknown_model_suggests_close_match(tmp_path):
    src = _photo(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", "clipsr-lite-x5"])
    _bad(r, "clipsr-lite-x4", tmp_path, ["in.png"])


def test_unknown_device(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--device", "tpu"])
    _bad(r, "unknown device", tmp_path, ["in.png"], code=2)  # a value that can never work


def test_existing_output_and_input_are_never_overwritten(tmp_path, tiny_ckpt):
    src = _photo(tmp_path / "in.png")
    out = tmp_path / "in_x4.png"
    out.write_bytes(b"keep me")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4))])
    _bad(r, "--overwrite", tmp_path, ["in.png", "in_x4.png"])
    assert out.read_bytes() == b"keep me"
    data = src.read_bytes()
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(src)])
    _bad(r, "input", tmp_path, ["in.png", "in_x4.png"])
    assert src.read_bytes() == data
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(src),
                            "--overwrite"])  # replacing the input needs its own flag
    _bad(r, "--overwrite-input", tmp_path, ["in.png", "in_x4.png"])
    assert src.read_bytes() == data
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "--overwrite"])
    assert r.exit_code == 0 and Image.open(out).size == (80, 56)
    r = runner.invoke(app, ["upscale", str(src), "-m", str(tiny_ckpt(4)), "-o", str(src),
                            "--overwrite-input"])
    assert r.exit_code == 0, r.output
    assert Image.open(src).size == (80, 56) and _files(tmp_path) == ["in.png", "in_x4.png"]


def test_image_too_large_for_memory_is_tiled(tmp_path, tiny_ckpt, monkeypatch):
    """A tile budget far below the image's needs must tile (many tiles), not crash: the memory
    budget is a setting (EngineOptions.memory), not a patched measurement."""
    from clipsr_cli.infer import engine
    from clipsr_cli.infer.options import EngineOptions
    from clipsr_cli.tasks.upscale import upscale_file

    src = _photo(tmp_path / "big.png", size=(96, 80))
    seen = []
    real = engine.plan_tiles

    def spy(*a, **k):
        plan = real(*a, **k)
        seen.append(sum(len(r) for r in plan))
        return plan

    monkeypatch.setattr(engine, "plan_tiles", spy)
    upscale_file(input=str(src), model=str(tiny_ckpt(4)), output=str(tmp_path / "o.png"),
                 options=EngineOptions(memory=1 << 20))  # 1 MiB "free"
    assert seen and seen[0] > 1
    assert Image.open(tmp_path / "o.png").size == (384, 320)


def test_output_too_large_for_memory_is_a_clear_error(tmp_path, tiny_ckpt):
    from clipsr_cli.errors import InputError
    from clipsr_cli.infer.options import EngineOptions
    from clipsr_cli.tasks.upscale import upscale_file

    src = _photo(tmp_path / "in.png", size=(64, 64))
    with pytest.raises(InputError, match=r"needs .* GiB of memory") as e:
        upscale_file(input=str(src), model=str(tiny_ckpt(16)),
                     options=EngineOptions(memory=1 << 20))  # 1 MiB "free"
    assert "\n" not in str(e.value) and _files(tmp_path) == ["in.png"]  # nothing written


def test_verbose_shows_traceback(tmp_path):
    r = runner.invoke(app, ["upscale", str(tmp_path / "nope.png"), "-v"])
    assert r.exit_code == 1 and "Traceback" in r.stderr


def test_auto_tile_size_from_memory(tiny_ckpt):
    from clipsr_cli.infer.engine import Upscaler

    up = Upscaler.load(str(tiny_ckpt(4)), device="cpu")
    assert up._tile_size(32, 32) == 0  # small: one tile
    assert up._tile_size(20000, 20000) > 0  # huge: tiled
