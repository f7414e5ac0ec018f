"""The inference engine: tiling, precision/device resolution, text cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.network import build_model
from clipsr_cli.infer import engine
from clipsr_cli.infer.devices import resolve_device, resolve_precision
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.errors import DeviceError, InputError, ModelError, UsageError
from clipsr_cli.infer.tiling import count_tiles, plan_tiles, run_tiled
from tests.conftest import perturb, tiny_model_config


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    cfg = tiny_model_config(4, text=True)
    return perturb(build_model(cfg, load_clip(cfg.clip)), std=0.05)


@pytest.mark.parametrize("tile", [24, 40])
def test_tiled_equals_untiled(text_model, tile):
    """CLIP features are computed once per image, so tiles agree with the whole image."""
    lr = torch.rand(1, 3, 70, 93)  # not multiples of anything
    whole = Upscaler(text_model, device="cpu", precision="fp32", tile=0)
    tiled = Upscaler(text_model, device="cpu", precision="fp32", tile=tile)
    a = whole.upscale_tensor(lr, "a red bird")
    calls = []
    b = tiled.upscale_tensor(lr, "a red bird", progress=lambda d, t: calls.append((d, t)))
    assert a.shape == b.shape == (1, 3, 280, 372)
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1]  # really tiled, progress reported
    assert (a - b).abs().max().item() <= 1 / 255


def test_blend_weights_partition_unity():
    """An identity 'network' through the tiler gives back the input exactly (weights sum to 1)."""
    x = torch.rand(1, 3, 64, 96)
    plan = plan_tiles(64, 96, tile=16, overlap=8, multiple=4)
    assert count_tiles(plan) > 4
    up = lambda t, off: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    bands = list(run_tiled(up, x, 2, plan, 8))
    out = torch.cat([b for _, b in bands], dim=2)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-6)
    assert [y for y, _ in bands] == sorted(y for y, _ in bands)


def test_plan_covers_image_on_the_grid():
    plan = plan_tiles(200, 120, tile=50, overlap=16, multiple=8)
    rows = [r[0].row for r in plan]
    assert rows[0].c0 == 0 and rows[-1].c1 == 200
    for a, b in zip(rows, rows[1:]):
        assert a.c1 == b.c0 and b.i0 % 8 == 0 and b.c1 - b.c0 >= 16
    assert plan_tiles(30, 30, tile=0, overlap=8, multiple=4)[0][0].row.i1 == 30


def test_array_output_matches_tensor_and_16_bit(text_model):
    up = Upscaler(text_model, device="cpu", precision="fp32", tile=0)
    lr = torch.rand(1, 3, 9, 11)
    t = up.upscale_tensor(lr)
    a8 = up.upscale_array(lr)
    a16 = up.upscale_array(lr, bit_depth=16)
    ref = t[0].permute(1, 2, 0).numpy()
    assert a8.dtype == np.uint8 and a8.shape == (36, 44, 3)
    assert np.abs(a8 / 255.0 - ref).max() <= 0.5 / 255 + 1e-6
    assert a16.dtype == np.uint16 and np.abs(a16 / 65535.0 - ref).max() <= 0.5 / 65535 + 1e-6


def test_text_embeddings_are_cached(text_model):
    up = Upscaler(text_model, device="cpu", precision="fp32")
    e1 = up.embed_text("a bird")
    assert up.embed_text("a bird") is e1
    assert up.embed_text(None) is None
    lr = torch.rand(1, 3, 8, 8)
    assert (up.upscale_tensor(lr, "a bird") - up.upscale_tensor(lr, "a truck")).abs().max() > 0


def test_bf16_close_to_fp32(text_model):
    lr = torch.rand(1, 3, 16, 16)
    a = Upscaler(text_model, device="cpu", precision="fp32").upscale_tensor(lr, "x")
    b = Upscaler(text_model, device="cpu", precision="bf16").upscale_tensor(lr, "x")
    assert (a - b).abs().mean() < 0.01


def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="unknown device") as e:
        resolve_device("tpu9")
    assert e.value.param == "device" and e.value.exit_code == 2
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available") as e:
            resolve_device("cuda:1")
        assert "`device='cpu'`" in str(e.value)  # library terms; the CLI says --device cpu
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("auto", cpu) in (torch.float32, torch.bfloat16)
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UsageError, match="unknown precision") as e:
        resolve_precision("int3", cpu)
    assert e.value.param == "precision"
    # the engine's old names still work (for callers not yet moved to infer.devices)
    assert engine.resolve_device is resolve_device and engine.resolve_precision is resolve_precision


def test_bad_engine_inputs(text_model):
    up = Upscaler(text_model, device="cpu", precision="fp32")
    with pytest.raises(InputError):
        up.upscale_tensor(torch.rand(1, 4, 8, 8))
    with pytest.raises(UsageError, match="`tile` must be") as e:
        Upscaler(text_model, device="cpu", tile="huge")
    assert e.value.param == "tile"
    with pytest.raises(UsageError) as e:
        Upscaler(text_model, device="cpu", tile=-3)
    assert e.value.param == "tile"
    with pytest.raises(UsageError, match="`tile_overlap` must be >= 0") as e:
        Upscaler(text_model, device="cpu", tile_overlap=-1)
    assert e.value.param == "tile_overlap"


def test_upscale_image_upscales_alpha_on_its_own(text_model):
    from clipsr_cli.io.images import from_pil
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    loaded = from_pil(Image.fromarray(rgba, "RGBA"))
    up = Upscaler(text_model, device="cpu", precision="fp32", tile=0)
    rgb, alpha = up.upscale_image(loaded, "a bird")
    assert rgb.shape == (36, 44, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, up.upscale_array(loaded.rgb, "a bird"))
    assert torch.equal(alpha, engine.upscale_alpha(loaded.alpha, 4))
    assert alpha.shape[-2:] == (36, 44)
    pil = up.upscale(Image.fromarray(rgba, "RGBA"), "a bird")  # upscale(PIL) goes through it
    assert pil.mode == "RGBA" and np.array_equal(np.asarray(pil)[..., :3], rgb)
    assert up.upscale_image(from_pil(Image.fromarray(rgba[..., :3])))[1] is None


def test_null_embedding_and_clip_similarity(text_model):
    up = Upscaler(text_model, device="cpu", precision="fp32")
    null = up.null_text_embedding()
    assert torch.equal(null, text_model.text_embedding([None]))
    img = torch.rand(1, 3, 16, 16)
    clip = text_model.clip
    ref = torch.nn.functional.cosine_similarity(clip.encode_image(img),
                                                clip.encode_text(["a bird"]))
    assert up.clip_similarity(img, "a bird") == pytest.approx(float(ref), abs=1e-6)
    image_only = Upscaler(build_model(tiny_model_config(4)), device="cpu")
    assert image_only.null_text_embedding() is None
    with pytest.raises(ModelError, match="image-only"):
        image_only.clip_similarity(img, "a bird")
