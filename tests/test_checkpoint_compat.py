"""Checkpoint format 2 renamed the generator's parameters; version-1 files keep loading.
Formats 3 and 4 changed the text path: image-only files of every version load, text-conditioned
files of versions 1-3 are refused with a message (their text path cannot be rebuilt)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from clipsr_cli.errors import ModelError
from clipsr_cli.model.checkpoint import (FORMAT_VERSION, V1_RENAMES, load_checkpoint,
                                         read_checkpoint, rename_keys, save_checkpoint)
from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.network import build_model
from tests.conftest import perturb, tiny_model_config

WEIGHTS = Path(__file__).resolve().parents[1] / "clipsr_cli" / "weights"

#: some tensor names exactly as format 1 wrote them (the pre-redesign flat layout)
V1_IMAGE_NAMES = {"head.weight", "down.0.weight", "stages.1.0.conv1.weight", "lift.0.bias",
                  "body.0.conv2.weight", "body_conv.weight", "up.1.weight",
                  "up_blocks.0.conv1.bias", "tail.weight"}
V1_TEXT_NAMES = {"up_blocks.1.aff2.beta.2.weight", "null_text", "prompt.pos",
                 "prompt.attn.self_attn.in_proj_weight", "fu_norm.weight", "fu_proj.0.bias"}
V1_NAMES = V1_IMAGE_NAMES | V1_TEXT_NAMES


def _write_v1(path: Path, model, cfg, version: str = "1") -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if version == "1":
        state = rename_keys(state, reverse=True)
    meta = {"format": "clipsr", "format_version": version, "config": cfg.to_json()}
    path.write_bytes(save(state, metadata=meta))
    return path


def test_a_v1_checkpoint_loads_strictly_and_gives_the_same_output(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config(4)
    model = perturb(build_model(cfg)).eval()
    path = _write_v1(tmp_path / "v1.safetensors", model, cfg)
    _, raw, meta = read_checkpoint(path)
    assert meta["format_version"] == "1"
    from safetensors.torch import load_file

    on_disk = set(load_file(str(path)))
    assert V1_IMAGE_NAMES <= on_disk, sorted(V1_IMAGE_NAMES - on_disk)  # really the old layout
    assert not any(k.startswith(("encoder.", "refinement.", "upsampler.")) for k in on_disk)
    assert set(raw) == set(model.state_dict())  # read_checkpoint renamed every tensor
    loaded = load_checkpoint(path)  # strict load inside
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_an_old_text_checkpoint_is_refused_with_a_message(tmp_path, version):
    torch.manual_seed(0)
    cfg = tiny_model_config(4, text=True, fu_film=True)  # format 3's read-out had the direct FiLM
    model = perturb(build_model(cfg, load_clip(cfg.clip))).eval()
    path = _write_v1(tmp_path / f"v{version}.safetensors", model, cfg, version)
    from safetensors.torch import load_file

    on_disk = set(load_file(str(path)))
    if version == "1":
        assert V1_NAMES <= on_disk, sorted(V1_NAMES - on_disk)  # really the old layout
    with pytest.raises(ModelError, match=f"text-conditioned model of checkpoint format {version}"
                                         ".*retrain it"):
        load_checkpoint(path)
    if version == "3":  # the same file as format 4 loads: only the version tells them apart
        cfg4, state, _ = read_checkpoint(_write_v1(tmp_path / "v4.safetensors", model, cfg, "4"))
        assert cfg4.fu_film and set(state) == set(model.state_dict())


def test_the_rename_table_is_one_to_one_and_round_trips():
    olds = [a for a, _ in V1_RENAMES]
    news = [b for _, b in V1_RENAMES]
    assert len(set(olds)) == len(olds) and len(set(news)) == len(news)
    torch.manual_seed(0)
    cfg = tiny_model_config(16, text=True)
    state = build_model(cfg).state_dict()
    v1 = rename_keys(state, reverse=True)
    assert len(v1) == len(state) and rename_keys(v1) == state
    assert set(rename_keys(dict.fromkeys(V1_NAMES))) <= set(state)  # v1 names map onto v3's


def test_new_checkpoints_are_format_4_with_the_new_names(tmp_path):
    cfg = tiny_model_config(4)
    model = perturb(build_model(cfg))
    path = save_checkpoint(tmp_path / "v2.safetensors", model, cfg)
    from safetensors.torch import load_file

    assert FORMAT_VERSION == 4
    _, state, meta = read_checkpoint(path)
    assert meta["format_version"] == "4"
    assert set(load_file(str(path))) == set(model.state_dict()) == set(state)
    assert "upsampler.out.weight" in state and "tail.weight" not in state


def test_a_v1_file_with_a_foreign_tensor_is_still_refused(tmp_path):
    cfg = tiny_model_config(4)
    model = build_model(cfg)
    state = rename_keys(model.state_dict(), reverse=True)
    state["bogus.weight"] = torch.zeros(2)
    meta = {"format": "clipsr", "format_version": "1", "config": cfg.to_json()}
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    with pytest.raises(ModelError, match="weights do not match"):
        load_checkpoint(path)


@pytest.mark.parametrize("scale", [4])  # x8 and x16 are pipelines of the x4 network
def test_the_builtin_v1_weights_load_with_no_missing_or_unexpected_keys(scale):
    import tomllib

    path = WEIGHTS / f"clipsr-lite-x{scale}.safetensors"
    entries = tomllib.loads((WEIGHTS.parent / "models.toml").read_text())["model"]
    registered = next(e["sha256"] for e in entries if e["name"] == f"clipsr-lite-x{scale}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == registered  # the shipped v1 file
    cfg, state, meta = read_checkpoint(path)
    assert meta["format_version"] == "1"  # shipped files are not rewritten
    model = build_model(cfg)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert load_checkpoint(path).info.scale == scale
