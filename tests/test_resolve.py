"""What a model string names, decided once (hub/resolve.py): the typed, frozen ModelRef that the
engine, inspect, batch planning, compare and eval branch on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from clipsr_cli.errors import ModelError
from clipsr_cli.hub.resolve import (ClipRef, ClipsrFile, ForeignFile, PipelineRef, Registered,
                                    resolve, resolve_model)
from clipsr_cli.hub.weightfiles import weights_format


def test_each_kind_of_model_string(tiny_ckpt, tmp_path, monkeypatch):
    ck = tiny_ckpt(4)
    ref = resolve(str(ck))
    assert isinstance(ref, ClipsrFile) and ref.path == ck and ref.header_scale() == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.path = tmp_path  # frozen
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(ck.read_bytes())
    assert resolve(str(run)) == ClipsrFile(run / "model.safetensors", str(run))
    with pytest.raises(ModelError, match="directory without model.safetensors"):
        resolve(str(tmp_path))
    pth = tmp_path / "RealESRGAN_x4plus.PTH"
    torch.save({"w": torch.zeros(1)}, pth)
    assert resolve(str(pth)) == ForeignFile(pth, "torch", str(pth))
    from safetensors.torch import save_file

    other = tmp_path / "span.safetensors"  # a safetensors file without clipsr's metadata
    save_file({"w": torch.zeros(1)}, str(other))
    assert resolve(str(other)) == ForeignFile(other, "safetensors", str(other))
    junk = tmp_path / "junk.safetensors"  # unreadable: the clipsr reader says what is wrong
    junk.write_bytes(b"junk")
    assert isinstance(resolve(str(junk)), ClipsrFile)
    with pytest.raises(ModelError, match="not found"):
        resolve(str(tmp_path / "missing.pth"))

    x4 = resolve("clipsr-lite-x4")
    assert isinstance(x4, Registered) and x4.entry.kind == "generator"
    assert isinstance(x4.file(), ClipsrFile)
    x16 = resolve(None, scale=16)
    assert isinstance(x16, PipelineRef) and x16.stages == (x4, x4)
    x8 = resolve("clipsr-lite-x8")
    assert x8.stages == (x4, 2)
    assert isinstance(resolve("clip-vit-b-32"), ClipRef)
    assert isinstance(resolve("ViT-B-32:openai"), ClipRef)
    assert resolve(x8) is x8  # a reference passes through
    with pytest.raises(ModelError, match="did you mean .*'clipsr-lite-x4'"):
        resolve("clipsr-lite-x5")


def test_a_registered_name_wins_over_a_file_of_that_name(tiny_ckpt, tmp_path, monkeypatch):
    """The engine used to load a file in the working directory named like a registered model,
    the resolver the registered model; now one rule: the name wins, ./NAME is the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clipsr-lite-x4").write_bytes(tiny_ckpt(2).read_bytes())
    assert isinstance(resolve("clipsr-lite-x4"), Registered)
    assert isinstance(resolve("./clipsr-lite-x4"), ClipsrFile)
    (tmp_path / "mine").write_bytes(tiny_ckpt(2).read_bytes())  # no registered name: the file
    assert resolve("mine") == ClipsrFile(Path("mine"), "mine")
    from clipsr_cli.infer.engine import Upscaler

    assert Upscaler.load("clipsr-lite-x4", device="cpu").scale == 4
    assert Upscaler.load("./clipsr-lite-x4", device="cpu").scale == 2


class _Obj:  # any object that is not a tensor or a plain container
    pass


def test_one_rule_for_pickles(tmp_path):
    """resolve_model refused a .pth that Upscaler.load read: now both read it as third-party
    weights, only with torch.load(weights_only=True); a pickle of objects is refused by both."""
    evil = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Obj()}, evil)
    assert resolve_model(str(evil)) == evil
    from clipsr_cli.infer.engine import Upscaler

    with pytest.raises(ModelError, match="full unpickle"):
        Upscaler.load(str(evil), device="cpu")
    with pytest.raises(ModelError, match="pipeline of other models"):
        resolve_model("clipsr-lite-x16")
    with pytest.raises(ModelError, match="CLIP backbone, not an upscaling model"):
        Upscaler.load("clip-vit-b-32", device="cpu")


def test_the_suffix_table():
    assert [weights_format(n) for n in ("a.safetensors", "a.PTH", "a.pt", "a.ckpt", "a.bin",
                                        "a.png", "clipsr-lite-x4", "run")] == [
        "safetensors", "torch", "torch", "torch", "torch", None, None, None]


def test_known_scale_without_loading(tiny_ckpt, tmp_path):
    from clipsr_cli.hub.resolve import known_scale

    assert [known_scale(resolve(m)) for m in ("clipsr-lite-x4", "clipsr-lite-x16",
                                             str(tiny_ckpt(2)), "clip-vit-b-32")] == [4, 16, 2, None]
    pth = tmp_path / "a.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    assert known_scale(resolve(str(pth))) is None  # only loading tells


def test_inspect_returns_a_description_the_cli_renders(tiny_ckpt):
    from clipsr_cli.tasks.inspect import ModelDescription, PipelineDescription, describe

    d = describe("clipsr-lite-x16")
    assert isinstance(d, PipelineDescription) and d.scale == 16
    assert [name for name, _ in d.models] == ["clipsr-lite-x4"]  # one stage, described once
    one = describe(str(tiny_ckpt(2)))
    assert isinstance(one, ModelDescription) and one.info.scale == 2 and one.text_guided == "no"
    with pytest.raises(ModelError, match="CLIP backbone"):
        describe("clip-vit-b-32")
