"""The CLIP-SR generator: shapes, text paths, checkpoint format."""

from __future__ import annotations

import json

import pytest
import torch

from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.network import build_model
from clipsr_cli.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.errors import ModelError
from tests.conftest import perturb, tiny_model_config


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
def test_output_is_exactly_s_times_any_input(scale):
    cfg = tiny_model_config(scale)
    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 12, 20)  # multiples of pad_multiple (4): the engine pads others
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 12 * scale, 20 * scale)


def test_fresh_model_is_bicubic():
    """Zero-initialised tail: an untrained network returns the bicubic skip exactly."""
    model = build_model(tiny_model_config(4)).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
    ref = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(y, ref, atol=1e-6)


def _text_model(fu_fusion=True):
    torch.manual_seed(0)
    cfg = tiny_model_config(4, text=True, fu_fusion=fu_fusion)
    model = perturb(build_model(cfg, load_clip(cfg.clip)), std=0.1).eval()
    return model


def _run(model, x, text):
    with torch.no_grad():
        emb = model.text_embedding([text])
        return model(x, model.condition(x, emb))


def test_text_reaches_output_through_both_paths():
    x = torch.rand(1, 3, 16, 16)
    model = _text_model()
    a, b = _run(model, x, "a red bird"), _run(model, x, "a blue car on a road")
    assert (a - b).abs().max() > 1e-3, "changing the text must change the output"

    # path 1 alone: γ/β modulation (TIFBlocks) with the F_U fusion removed
    no_fu = _text_model(fu_fusion=False)
    no_fu.load_state_dict(model.state_dict())
    a1, b1 = _run(no_fu, x, "a red bird"), _run(no_fu, x, "a blue car on a road")
    assert (a1 - b1).abs().max() > 1e-3
    assert (a1 - a).abs().max() > 1e-3, "removing the F_U fusion must change the output"

    # path 2 alone: prompt predictor → CLIP visual → F_U, with every affine made text-blind
    only_fu = _text_model()
    only_fu.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in only_fu.named_parameters():
            if (".aff" in name) and name.endswith("2.weight"):
                p.zero_()  # γ, β no longer depend on the text
    a2, b2 = _run(only_fu, x, "a red bird"), _run(only_fu, x, "a blue car on a road")
    assert (a2 - b2).abs().max() > 1e-4, "text must reach the output through F_U alone"


def test_null_text_is_used_without_text():
    model = _text_model()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        none = model(x, model.condition(x, None))
        none2 = model(x, model.condition(x, model.text_embedding([None])))
    assert torch.allclose(none, none2)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_model_config(8, text=True)
    model = perturb(build_model(cfg, load_clip(cfg.clip)))
    path = save_checkpoint(tmp_path / "m.safetensors", model, cfg, training={"steps": 3})
    cfg2, state, meta = read_checkpoint(path)
    assert cfg2 == cfg
    assert json.loads(meta["training"]) == {"steps": 3}
    assert not any(k.startswith("_clip") or "clip.model" in k for k in state)  # CLIP not copied
    loaded = load_checkpoint(path)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(_run(loaded, x, "a bird"), _run(model.eval(), x, "a bird"))


def test_the_clip_is_held_outside_the_module_tree_and_follows_the_generator():
    """The frozen CLIP is in none of state_dict / parameters / modules / train(), and
    ``.to()`` (device, dtype, memory format) reaches it when the generator next uses it."""
    cfg = tiny_model_config(4, text=True, clip_view=8)
    model = perturb(build_model(cfg, load_clip(cfg.clip)))
    clip = model.clip
    clip_params = {id(p) for p in clip.parameters()}
    assert not clip_params & {id(p) for p in model.parameters()}
    assert not any(m is clip for m in model.modules())
    assert not any("clip.model" in k or "visual" in k for k in model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    assert model.info.parameters == n
    model.train()
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())

    conv = lambda: clip.model.visual.conv1.weight  # noqa: E731
    model.to(memory_format=torch.channels_last)
    assert model.clip is clip and conv().is_contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.contiguous_format)
    assert model.clip is clip and conv().is_contiguous()
    model.to(torch.float64)
    with torch.inference_mode():
        assert model.clip.mean.dtype == conv().dtype == torch.float64
    model.to(torch.float32)
    with torch.inference_mode():  # moved back here, the CLIP must still work with autograd
        assert model.clip.mean.dtype == conv().dtype == torch.float32
    x = torch.rand(1, 3, 8, 8)
    cond = model.condition(x, model.text_embedding(["a bird"]))
    sum(f.sum() for f in cond.fu).backward()  # the prompt predictor is trained through CLIP
    assert model.prompt_predictor.mlp[0].weight.grad is not None
    model.to("meta")
    assert model.clip.device.type == "meta"


def test_fp16_storage_loads_as_fp32(tmp_path):
    cfg = tiny_model_config(4)
    path = save_checkpoint(tmp_path / "h.safetensors", build_model(cfg), cfg, dtype=torch.float16)
    model = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_checkpoints_are_named_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ModelError, match="not a clipsr checkpoint|not a valid"):
        read_checkpoint(junk)
    cfg = tiny_model_config(4)
    good = save_checkpoint(tmp_path / "g.safetensors", build_model(cfg), cfg)
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelError, match="truncated|not a valid"):
        read_checkpoint(trunc)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelError, match="not a clipsr checkpoint"):
        read_checkpoint(plain)
    with pytest.raises(ModelError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_config_rejects_unknown_keys_and_bad_scale():
    with pytest.raises(ModelError, match="unknown model config keys"):
        ModelConfig.from_dict({"scale": 4, "bogus": 1})
    with pytest.raises(ModelError, match="scale"):
        ModelConfig(scale=3)


def test_model_describes_itself():
    info = build_model(tiny_model_config(16)).info
    assert info.scale == 16 and not info.text_conditioned and info.pad_multiple == 4
    assert info.tile_overlap % info.pad_multiple == 0 and info.parameters > 0
    tinfo = _text_model().info
    assert tinfo.text_conditioned and tinfo.clip == "clipsr-tiny:random"


def test_clip_public_steps_reproduce_open_clip():
    """embed_patches → blocks → pool is open_clip's own encode_image, exactly; the token maps
    are what visual_tokens returns (so nothing needs open_clip's private _embeds/_pool)."""
    clip = load_clip("clipsr-tiny:random")
    img = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        x = clip.embed_patches(img)
        g = clip.image_size // clip.model.visual.conv1.stride[0]
        assert x.shape == (2, 1 + g * g, clip.visual_width)
        maps = []
        for blk in clip.blocks:
            x = blk(x)
            maps.append(clip.token_map(x))
        assert torch.equal(clip.pool(x).float(), clip.encode_image(img))
        assert torch.equal(clip.pool(x), clip.model.encode_image(clip.preprocess(img)))
        feats, emb = clip.visual_features(img, layers=(1, 3))
        assert torch.equal(emb, clip.encode_image(img))
        assert torch.equal(feats[0], maps[0]) and torch.equal(feats[1], maps[2])
        assert torch.equal(clip.visual_tokens(img), maps[-1])
        assert all(torch.equal(a, b) for a, b in
                   zip(clip.visual_tokens(img, return_layers=(2, 4)), (maps[1], maps[3])))
        txt = clip.encode_text(["a bird", "a car"])
        sim = clip.similarity(img, txt)
        ref = torch.nn.functional.cosine_similarity(clip.encode_image(img), txt)
        assert torch.allclose(sim, ref)


def test_info_is_computed_once():
    model = build_model(tiny_model_config(4))
    assert model.info is model.info
    assert model.info.parameters == sum(p.numel() for p in model.parameters())
