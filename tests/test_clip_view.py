"""One CLIP view for training and use (issue #13): CLIP sees an LR image through windows of
``clip_view`` LR pixels, so one ViT token covers the same number of LR pixels in a training
patch and in an image of any size or aspect ratio; training and inference call the same
function (``clipsr_cli.model.view.clip_view``); tiles still agree with the whole image."""

from __future__ import annotations

import pytest
import torch

from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.model import view as view_mod
from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.network import build_model
from clipsr_cli.model.view import ViewPlan, clip_view, plan_view, sample_windows, window_starts
from tests.conftest import perturb, tiny_model_config


@pytest.mark.parametrize("n,window", [(8, 8), (12, 8), (17, 8), (40, 8), (93, 48), (250, 48)])
def test_windows_cover_the_image_with_real_crops(n, window):
    starts = window_starts(n, window)
    assert len(starts) == -(-n // window)  # the fewest windows
    assert starts[0] == 0 and starts[-1] + window == n  # inside the image, covering it
    assert all(b - a <= window for a, b in zip(starts, starts[1:]))  # no gaps
    assert list(starts) == sorted(starts)


def test_a_small_or_oblong_image_is_padded_not_squashed():
    clip = load_clip("clipsr-tiny:random")

    def view(x):
        return clip_view(x, 8, size=clip.image_size, mean=clip.mean, std=clip.std)

    # smaller than a window: one window, the image centred, CLIP's mean colour around it
    assert window_starts(5, 8) == (-1,)
    grey = clip.mean.expand(1, 3, 5, 5)
    assert view(grey)[0].abs().max() < 1e-5  # the fill is the mean colour (0 once normalised)
    img = torch.rand(1, 3, 5, 5)
    boxed = clip.mean.expand(1, 3, 8, 8).clone()
    boxed[:, :, 1:6, 1:6] = img
    v, plan = view(img)
    assert plan == ViewPlan((5, 5), 8, (-1,), (-1,))
    assert torch.allclose(v, view(boxed)[0], atol=1e-6)
    # oblong: 1 × 4 windows, each a real 8 × 8 crop at the same scale (nothing squashed)
    lr = torch.rand(1, 3, 8, 30)
    v, plan = view(lr)
    assert plan == ViewPlan((8, 30), 8, (0,), (0, 7, 15, 22))
    assert v.shape == (4, 3, clip.image_size, clip.image_size)
    for j, c in enumerate(plan.cols):
        assert torch.allclose(v[j], view(lr[:, :, :, c:c + 8])[0][0], atol=1e-6)


def test_training_and_inference_give_clip_the_same_view(tmp_path, monkeypatch):
    """Spy on the one view function during a real training run and an Upscaler call: both use
    it with the same window (so the same LR px per ViT token), and an LR image the size of a
    training patch gives exactly the CLIP input the trainer gave that patch."""
    from clipsr_cli.train.trainer import train
    from tests.synthetic import make_stripes_dataset, one_thread
    from tests.synthetic import stripes_train_config

    seen = []
    real = view_mod.clip_view

    def spy(lr, window, **kw):
        out = real(lr, window, **kw)
        seen.append((lr.detach().clone(), window, out[0].detach().clone()))
        return out

    import clipsr_cli.model.network as network

    monkeypatch.setattr(network, "clip_view", spy)
    cfg = stripes_train_config(tmp_path, text=True, steps=2, batch_size=2)
    with one_thread():
        path = train(cfg, source=make_stripes_dataset(6)).export
    trained = [s for s in seen if s[0].shape[-1] == cfg.data.patch_size]
    assert trained, "the trainer computed no CLIP view of a patch"
    patch, window, clip_in = trained[0]
    assert window == cfg.data.patch_size  # training sets clip_view = the patch: one window
    assert clip_in.shape[0] == patch.shape[0]

    seen.clear()
    up = Upscaler.load(str(path), device="cpu", precision="fp32", tile=0)
    up.upscale_tensor(patch[:1], "horizontal stripes")
    (lr, window2, clip_in2), = seen
    assert window2 == window and torch.equal(lr, patch[:1])
    assert torch.equal(clip_in2, clip_in[:1])  # same input -> the same CLIP input tensor
    clip = up.model.clip
    grid = clip.grid
    assert window / grid == window2 / grid  # LR px per ViT token, the density rule

    seen.clear()
    up.upscale_tensor(torch.rand(1, 3, 20, 36), None)  # a larger, oblong image
    (_, window3, clip_in3), = seen
    assert window3 == window and clip_in3.shape == (3 * 5, 3, clip.image_size, clip.image_size)


def test_window_blend_is_pointwise_and_a_partition_of_unity():
    plan = plan_view(21, 30, 8)
    maps = torch.randn(2, plan.count, 5, 4, 4)
    for stride in (4, 2, 1, 0.5, 0.25):
        h, w = int(24 / stride), int(32 / stride)  # padded size, as the tiler sees it
        whole = sample_windows(maps, plan, (0, 0), (h, w), stride)
        part = sample_windows(maps, plan, (8, 16), (h // 3, w // 2), stride)
        y0, x0 = int(8 / stride), int(16 / stride)
        assert torch.allclose(part, whole[:, :, y0:y0 + h // 3, x0:x0 + w // 2], atol=1e-6)
    ones = sample_windows(torch.ones(1, plan.count, 1, 4, 4), plan, (0, 0), (24, 32), 1)
    assert torch.allclose(ones, torch.ones_like(ones))


@pytest.mark.parametrize("tile", [24])
def test_tiled_equals_untiled_with_many_windows(tile):
    torch.manual_seed(0)
    cfg = tiny_model_config(4, text=True, clip_view=8)
    model = perturb(build_model(cfg, load_clip(cfg.clip)), std=0.05)
    lr = torch.rand(1, 3, 70, 93)  # 9 × 12 overlapping windows
    a = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale_tensor(lr, "a red bird")
    calls = []
    b = Upscaler(model, device="cpu", precision="fp32", tile=tile).upscale_tensor(
        lr, "a red bird", progress=lambda d, t: calls.append(t))
    assert calls and calls[-1] > 1
    assert (a - b).abs().max().item() <= 1 / 255
