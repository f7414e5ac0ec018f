"""``clipsr train``: configuration, data sampling, the psnr and gan presets, resume, bad inputs.

Tiny models, tiny images, the CPU; no /work/shared. The text-path experiment is in
test_train_text.py and the two-process DDP run in test_train_ddp.py.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsr_cli.errors import ClipsrError, DataError, TrainingError, UsageError, log
from clipsr_cli.train.config import (ConfigError, config_from_cli, from_toml_text, parse_set,
                                     resolve_config, to_toml)

TINY_MODEL = {"encoder_widths": (8, 12, 16), "body_blocks": 1, "up_widths": (8, 8, 8, 8),
              "prompt_tokens": 3}


def _photos(root: Path, n: int = 6, size=(80, 72), captions: bool = False, seed: int = 0) -> Path:
    """Smooth random colour images (+ sidecar captions) in a folder."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        grid = torch.from_numpy(rng.uniform(0, 1, (1, 3, 6, 6))).float()
        img = torch.nn.functional.interpolate(grid, size=size[::-1], mode="bicubic", align_corners=True)
        arr = (img[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img{i}.png")
        if captions:
            (root / f"img{i}.txt").write_text(f"a photo number {i}\nanother caption {i % 2}\n")
    return root


def _cfg(tmp: Path, images: Path, *, preset: str = "psnr", clip: str = "none", steps: int = 6,
         **sections):
    flags = {"model": dict(TINY_MODEL), "data": {"path": str(images), "scale": 4, "patch_size": 8,
                                                 "batch_size": 4},
             "optim": {"warmup_steps": 2}, "run": {"out": str(tmp / "run"), "steps": steps,
                                                   "device": "cpu", "clip": clip, "log_every": 1,
                                                   "val_every": 1000, "checkpoint_every": 1000}}
    for sec, vals in sections.items():
        flags.setdefault(sec, {}).update(vals)
    return resolve_config(preset=preset, flags=flags)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


# -- configuration ---------------------------------------------------------------------------------
def test_config_precedence_and_round_trip(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "gan"\n[data]\nscale = 8\npatch_size = 16\npath = "imgs"\n'
                 '[model]\nbody_blocks = 3\n')
    cfg = config_from_cli(config=str(f), preset=None, resume=False,
                          flags={"data": {"patch_size": 24, "scale": None}, "run": {"out": "r"}},
                          sets=["model.up_widths=[8, 8, 8]", "data.rot90=true"])
    assert cfg.preset == "gan" and cfg.loss.adversarial and cfg.loss.perceptual == "clip"
    assert cfg.data.scale == 8 and cfg.data.patch_size == 24  # file < flag; None = not given
    assert cfg.model.body_blocks == 3 and cfg.model.up_widths == (8, 8, 8) and cfg.data.rot90
    assert cfg.data.path == str(tmp_path / "imgs")  # relative to the file
    assert Path(cfg.run.out).is_absolute()
    assert from_toml_text(to_toml(cfg), source="x") == cfg


@pytest.mark.parametrize("text, match", [
    ("[data]\nscael = 4\n", r"unknown key\(s\) \['scael'\] in \[data\]"),
    ("[modle]\nx = 1\n", "unknown top-level key 'modle'"),
    ("[data]\nscale = 'four'\n", r"\[data\] scale: must be an integer"),
    ("[data]\nscale = 3\n", "`scale` must be one of"),
    ("[data]\npatch_size = 10\n", "multiple of 4"),
    ("[loss]\npixel = 'l3'\n", "must be one of"),
    ("preset = 'fast'\n", "preset must be one of"),
    ("[data\n", "not valid TOML"),
])
def test_config_errors_name_file_and_key(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(file=f)


def test_parse_set():
    assert parse_set(["run.clip=none", "optim.lr=1e-3", "data.hflip=false"]) == {
        "run": {"clip": "none"}, "optim": {"lr": 1e-3}, "data": {"hflip": False}}
    with pytest.raises(UsageError, match="`sets` item 'lr=1': use SECTION.KEY=VALUE") as e:
        parse_set(["lr=1"])
    assert e.value.param == "sets" and e.value.exit_code == 2


# -- data -----------------------------------------------------------------------------------------
def test_sampler_crops_captions_dropout_and_degradation():
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.train.data import MemorySampler

    imgs = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8) for _ in range(3)]
    caps = [("a", "b"), (), ("c",)]
    s = MemorySampler(imgs, caps, scale=4, patch=8, batch=256, device=torch.device("cpu"), seed=1,
                      hflip=False, vflip=False, rot90=False, caption_dropout=0.25)
    b = s.next_batch()
    assert b.hr.shape == (256, 3, 32, 32) and b.lr.shape == (256, 3, 8, 8)
    # the LR is exactly the reference degradation (cached device matrices = imresize)
    assert torch.equal(b.lr, degrade(b.hr, 4))
    assert (b.lr * 255 - (b.lr * 255).round()).abs().max() < 1e-4  # 8-bit levels
    # every crop is an aligned window of one of the images
    def found(p):
        for im in imgs:
            for y in range(0, im.shape[1] - 31, 4):
                for x in range(0, im.shape[2] - 31, 4):
                    if torch.equal((p * 255).round().byte(), im[:, y:y + 32, x:x + 32]):
                        return True
        return False
    assert all(found(b.hr[i]) for i in range(8))
    counts = {c: b.captions.count(c) for c in ("a", "b", "c", None)}
    assert min(counts.values()) > 30, counts  # one caption drawn at random per sample
    assert 0.15 < float(b.drop.float().mean()) < 0.35
    # the random stream is reproducible from the state
    st = s.state_dict()
    b1 = s.next_batch()
    s.load_state_dict(st)
    b2 = s.next_batch()
    assert torch.equal(b1.hr, b2.hr) and b1.captions == b2.captions and torch.equal(b1.drop, b2.drop)


def test_augment_flips_only_when_enabled():
    from clipsr_cli.train.data import augment

    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4).repeat(32, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, g, hflip=False, vflip=False, rot90=False), x)
    y = augment(x, g, hflip=True, vflip=False, rot90=False)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64


# -- the psnr preset end to end --------------------------------------------------------------------
def test_cli_psnr_run_exports_a_loadable_model(tmp_path):
    from typer.testing import CliRunner

    from clipsr_cli.model.checkpoint import load_checkpoint
    from clipsr_cli.cli.app import app

    data = _photos(tmp_path / "photos")
    val = _photos(tmp_path / "val", n=2, size=(64, 48), seed=5)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(val), "--scale", "4", "--out", str(out),
            "--preset", "psnr", "--clip", "none", "--steps", "6", "--batch-size", "4",
            "--patch-size", "8", "--val-every", "3", "--log-every", "2", "--device", "cpu",
            "--set", "model.encoder_widths=[8, 12, 16]", "--set", "model.body_blocks=1",
            "--set", "model.up_widths=[8, 8]"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith("model.safetensors")
    m = load_checkpoint(out / "model.safetensors")
    assert m.config.scale == 4 and not m.config.text_conditioned and m.config.body_blocks == 1
    assert m(torch.rand(1, 3, 12, 16)).shape == (1, 3, 48, 64)
    recs = _metrics(out)
    assert [r["step"] for r in recs if "loss" in r] == [2, 4, 6]
    vals = [r for r in recs if r.get("event") == "val"]
    assert [v["step"] for v in vals] == [3, 6] and all(np.isfinite(v["val_psnr"]) for v in vals)
    assert vals[0]["bicubic_psnr"] == vals[1]["bicubic_psnr"]
    saved = from_toml_text((out / "config.toml").read_text(), source="saved")
    assert saved.data.path == str(data) and saved.model.encoder_widths == (8, 12, 16)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "done" and summary["step"] == 6
    # a second run into the same directory without --resume is refused
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "--resume" in r.output


def test_time_limit_stops_cleanly_and_exports(tmp_path):
    from clipsr_cli.model.checkpoint import load_checkpoint
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=10 ** 6, run={"time_limit": 2.0})
    res = train(cfg)
    assert res.stopped == "time" and 0 < res.step < 10 ** 6
    assert load_checkpoint(res.export).config.scale == 4
    assert json.loads((res.run_dir / "summary.json").read_text())["stopped"] == "time"


@pytest.mark.parametrize("fmt", ["birds", "manifest"])
def test_captioned_layouts_train_with_their_captions(tmp_path, fmt):
    """birds (CLIP-SR layout: pickled key lists, text/, image/) and a JSONL manifest, with the
    test split as validation; RGBA images are composited by the dataset reader."""
    import pickle

    from clipsr_cli.train.steps import TextCache
    from clipsr_cli.train.trainer import train

    root = tmp_path / "ds"
    imgs = _photos(root / "image", n=6)
    keys = [f"img{i}" for i in range(6)]
    Image.open(imgs / "img0.png").convert("RGBA").save(imgs / "img0.png")
    if fmt == "birds":
        (root / "text").mkdir()
        for i, k in enumerate(keys):
            (root / "text" / f"{k}.txt").write_text(f"a bird number {i}\nsecond caption {i}\n")
        for split, ks in (("train", keys[:4]), ("test", keys[4:])):
            (root / split).mkdir()
            (root / split / "filenames.pickle").write_bytes(pickle.dumps(ks))
        path = root
    else:
        path = root / "m.jsonl"
        path.write_text("".join(json.dumps({"image": f"image/{k}.png", "captions": [f"a bird {k}"],
                                            "split": "train" if i < 4 else "test"}) + "\n"
                                for i, k in enumerate(keys)))
    seen = set()
    real_call = TextCache.__call__

    def spy(self, captions):
        seen.update(c for c in captions if c)
        return real_call(self, captions)

    cfg = _cfg(tmp_path, path, steps=3, clip="clipsr-tiny:random",
               data={"format": fmt, "val": str(path), "val_format": fmt, "batch_size": 8})
    import unittest.mock as um
    with um.patch.object(TextCache, "__call__", spy):
        res = train(cfg)
    assert res.val is not None and np.isfinite(res.val["val_psnr"])
    train_caps = ({f"a bird number {i}" for i in range(4)} | {f"second caption {i}" for i in range(4)}
                  if fmt == "birds" else {f"a bird img{i}" for i in range(4)})
    assert seen and seen <= train_caps  # only training-split captions, several of them
    assert len(seen) >= 3


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_dataset_trains_and_skips_bad_images(tmp_path, workers):
    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p", n=5, captions=True)
    (data / "broken.png").write_bytes(b"garbage")
    _photos(tmp_path / "p" / "small", n=1, size=(16, 16))
    cfg = _cfg(tmp_path, data, steps=3, clip="clipsr-tiny:random",
               data={"in_memory": "no", "workers": workers, "max_bad_fraction": 0.5})
    res = train(cfg)
    assert res.step == 3
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["unreadable_images"] >= 1 and summary["small_images"] >= 1


# -- resume -----------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted(tmp_path):
    """Same seed: a run interrupted (Ctrl-C) at step 4 and resumed has the loss curve and the
    final weights of the uninterrupted run, bit for bit (text model: captions + dropout too)."""
    from safetensors.torch import load_file

    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p", captions=True)
    steps = 9
    full = _cfg(tmp_path / "a", data, clip="clipsr-tiny:random", steps=steps,
                data={"caption_dropout": 0.3})
    train(full)

    part = _cfg(tmp_path / "b", data, clip="clipsr-tiny:random", steps=steps,
                data={"caption_dropout": 0.3})

    def interrupt(step, losses):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(part, on_step=interrupt)
    assert torch.load(tmp_path / "b/run/checkpoint.pt", weights_only=True)["step"] == 4
    resumed_cfg = config_from_cli(config=None, preset=None, resume=True,
                                  flags={"run": {"out": str(tmp_path / "b/run")}})
    assert resumed_cfg == part
    train(resumed_cfg, resume=True)

    a = [(r["step"], r["loss"]) for r in _metrics(tmp_path / "a/run") if "loss" in r]
    b = [(r["step"], r["loss"]) for r in _metrics(tmp_path / "b/run") if "loss" in r]
    assert [s for s, _ in a] == list(range(1, steps + 1))
    assert a == b
    wa = load_file(tmp_path / "a/run/model.safetensors")
    wb = load_file(tmp_path / "b/run/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_errors(tmp_path):
    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p")
    with pytest.raises(TrainingError, match="nothing to resume"):
        config_from_cli(config=None, preset=None, resume=True, flags={"run": {"out": str(tmp_path / "x")}})
    cfg = _cfg(tmp_path, data, steps=3)
    train(cfg)
    with pytest.raises(TrainingError, match="already finished"):
        train(cfg, resume=True)
    changed = config_from_cli(config=None, preset=None, resume=True,
                              flags={"run": {"out": cfg.run.out, "steps": 5},
                                     "data": {"scale": 8}}, sets=["model.body_blocks=2"])
    with pytest.raises(TrainingError, match=r"differs in \[model\], data.scale"):
        train(changed, resume=True)
    longer = config_from_cli(config=None, preset=None, resume=True,
                             flags={"run": {"out": cfg.run.out, "steps": 5}})
    assert train(longer, resume=True).step == 5


# -- gan preset and --init ----------------------------------------------------------------------------
def test_gan_preset_updates_generator_and_discriminator(tmp_path):
    from safetensors.torch import load_file

    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p", captions=True)
    base = _cfg(tmp_path / "psnr", data, clip="clipsr-tiny:random", steps=2)
    init = train(base).export
    cfg = config_from_cli(config=None, preset="gan", resume=False,
                          flags={"data": {"path": str(data), "patch_size": 8, "batch_size": 4},
                                 "loss": {"d_width": 16},
                                 "run": {"out": str(tmp_path / "gan"), "steps": 3, "init": str(init),
                                         "device": "cpu", "log_every": 1}})
    assert cfg.run.clip == "clipsr-tiny:random" and cfg.model.encoder_widths == (8, 12, 16)  # from --init
    seen = []
    res = train(cfg, on_step=lambda s, l: seen.append(l))
    assert len(seen) == 3
    for losses in seen:
        for k in ("pixel", "perceptual", "d_loss", "d_gp", "g_adv", "g_cos", "loss"):
            assert np.isfinite(losses[k]), (k, losses)
    st = torch.load(res.run_dir / "checkpoint.pt", weights_only=True)
    assert st["d"]["gates"].abs().sum() > 0  # zero-initialised gates moved: D was trained
    assert len(st["d_opt"]["state"]) > 0
    w0, w1 = load_file(init), st["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # G was trained from the init weights
    assert json.loads((res.run_dir / "summary.json").read_text())["perceptual"] == "clip"


def test_init_with_another_architecture_is_refused(tmp_path):
    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p")
    init = train(_cfg(tmp_path / "a", data, steps=1)).export
    bad = _cfg(tmp_path / "b", data, steps=1, model={"body_blocks": 2}, run={"init": str(init)})
    with pytest.raises(TrainingError, match="differs from the configured one"):
        train(bad)


# -- bad inputs ---------------------------------------------------------------------------------------
def test_empty_dataset_and_too_small_images(tmp_path):
    from clipsr_cli.train.trainer import train

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        train(_cfg(tmp_path, tmp_path / "empty"))
    small = _photos(tmp_path / "small", n=3, size=(20, 20))
    with pytest.raises(DataError, match="smaller than the 32x32 HR patch.*`patch_size=4`"):
        train(_cfg(tmp_path / "s", small))


@pytest.fixture
def logged():
    """Messages of the library's log (``clipsr_cli.errors.log``) during a test."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = Keep()
    log.addHandler(h)
    level = log.level
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(h)
    log.setLevel(level)


def test_unreadable_images_are_skipped_counted_then_fatal(tmp_path, logged):
    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p", n=6)
    (data / "broken.png").write_bytes(b"not a png")
    res = train(_cfg(tmp_path / "a", data, steps=2, data={"max_bad_fraction": 0.5}))
    assert json.loads((res.run_dir / "summary.json").read_text())["unreadable_images"] == 1
    assert sum("skipping unreadable" in m for m in logged) == 1
    for i in range(4):
        (data / f"broken{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="5 of 11 images could not be read"):
        train(_cfg(tmp_path / "b", data, steps=2, data={"max_bad_fraction": 0.2}))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from clipsr_cli.train import setup, trainer as loop

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=8, run={"checkpoint_every": 3})
    real = setup.pixel_loss("l1")
    calls = {"n": 0}

    def poisoned(kind):
        def f(a, b):
            calls["n"] += 1
            return real(a, b) * (float("nan") if calls["n"] == 5 else 1.0)
        return f

    monkeypatch.setattr(setup, "pixel_loss", poisoned)
    with pytest.raises(TrainingError, match="pixel loss became nan at step 5.*last good checkpoint"):
        loop.train(cfg)
    assert torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)["step"] == 3


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, logged):
    from clipsr_cli.train import rundir, trainer as loop

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"checkpoint_every": 2})
    real = rundir.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        if Path(path).name == "checkpoint.pt":
            calls["n"] += 1
            if calls["n"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(rundir, "atomic_write_bytes", flaky)
    # the run stops at the failed write (step 4), in one line (tests/test_train_faults.py)
    with pytest.raises(TrainingError, match="keeps the checkpoint of step 2.*`resume=True`") as e:
        loop.train(cfg)
    assert "disk full" in str(e.value) and "at step 4" in str(e.value)
    assert torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)["step"] == 2
    assert not list((tmp_path / "run").glob(".*.part"))


def test_cli_reports_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app

    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                                 "--clip", "none", "--device", "cpu"])
    assert r.exit_code == 1 and "dataset not found" in r.output
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "data.scael=4"])
    assert r.exit_code == 2 and "unknown key(s) ['scael']" in r.output  # a usage error
    assert isinstance(ConfigError("x"), ClipsrError)
