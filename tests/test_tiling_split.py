"""Two-phase tiling: the LR part tiled with its overlap, the tail with its exact receptive field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipsr_cli.infer import engine
from clipsr_cli.infer.engine import Upscaler
from clipsr_cli.infer.tiling import RowStream, plan_tiles, run_plan
from clipsr_cli.model.clip import load_clip
from clipsr_cli.model.network import build_model
from tests.conftest import perturb, tiny_model_config


def _model(scale: int, text: bool):
    torch.manual_seed(0)
    cfg = tiny_model_config(scale, text=text)
    return perturb(build_model(cfg, load_clip(cfg.clip) if text else None), std=0.05)


@pytest.fixture(scope="module", params=[False, True], ids=["image-only", "text"])
def model(request):
    return _model(4, request.param)


def test_forward_is_reconstruct_of_lr_features(model):
    lr = torch.rand(1, 3, 20, 28)
    with torch.inference_mode():
        cond = model.condition(lr, model.text_embedding(["a red bird"]))
        whole = model(lr, cond)
        feats = model.lr_features(lr, cond)
        assert feats.shape == (1, model.config.encoder_widths[0], 20, 28)
        assert same(model.reconstruct(feats, lr, cond), whole)
    assert model.info.two_phase and model.info.tail_overlap == 4


#: Tiles of another shape run other kernel blockings (another summation order): on some CPUs
#: (AVX-512 vs AVX2 vs none) the results differ in the last bit (5.96e-8 seen on an AMD EPYC).
#: "Exact" therefore means equal up to float32 rounding, never bit for bit across shapes.
TOL = 1e-5


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= TOL


def _counting(up, monkeypatch):
    calls = {"lr": 0, "tail": 0, "whole": 0}
    net = up.model
    for name, key in (("lr_features", "lr"), ("reconstruct", "tail")):
        real = getattr(net, name)

        def spy(*a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(*a, **k)

        monkeypatch.setattr(net, name, spy)
    real_fwd = net.forward
    monkeypatch.setattr(net, "forward", lambda *a, **k: (calls.__setitem__(
        "whole", calls["whole"] + 1), real_fwd(*a, **k))[1])
    return calls


@pytest.mark.parametrize("tile", [24, 40])
def test_both_phases_tiled_equal_untiled(model, tile, monkeypatch):
    lr = torch.rand(1, 3, 70, 93)
    a = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale_tensor(lr, "a red bird")
    up = Upscaler(model, device="cpu", precision="fp32", tile=tile)
    calls = _counting(up, monkeypatch)
    ticks = []
    b = up.upscale_tensor(lr, "a red bird", progress=lambda d, t: ticks.append((d, t)))
    assert calls["lr"] > 1 and calls["tail"] > 1  # both phases really tiled
    assert ticks[-1][0] == ticks[-1][1] == calls["lr"] + calls["tail"]
    assert (a - b).abs().max().item() <= 1 / 255


def test_tail_tiles_are_exact_and_the_margin_is_tight(model, monkeypatch):
    """The tail's margin is its exact receptive field: tail tiles alone reproduce the untiled
    output up to float rounding (fp32), and one LR pixel less does not."""
    lr = torch.rand(1, 3, 40, 52)
    a = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale_tensor(lr, "a red bird")
    up = Upscaler(model, device="cpu", precision="fp32")
    monkeypatch.setattr(up, "_tile_size", lambda h, w: 1000)  # the LR part in one tile
    monkeypatch.setattr(up, "_tail_tiles", lambda h, w: (8, 12))
    calls = _counting(up, monkeypatch)
    assert same(up.upscale_tensor(lr, "a red bird"), a)
    assert calls["lr"] == 1 and calls["tail"] == 5 * 5
    info = model.info
    monkeypatch.setattr(model, "_info", dataclasses.replace(info, tail_overlap=info.tail_overlap - 1))
    assert (up.upscale_tensor(lr, "a red bird") - a).abs().max() > TOL  # beyond rounding (7e-5)


@pytest.mark.parametrize("scale", [2, 8, 16])
def test_tail_radius_at_every_scale(scale, monkeypatch):
    m = _model(scale, text=False)
    lr = torch.rand(1, 3, 24, 20)
    a = Upscaler(m, device="cpu", precision="fp32", tile=0).upscale_tensor(lr)
    up = Upscaler(m, device="cpu", precision="fp32", tile=8)  # 8 < the LR overlap: raised to it
    assert (up.upscale_tensor(lr) - a).abs().max().item() <= 1 / 255
    monkeypatch.setattr(up, "_tile_size", lambda h, w: 1000)
    assert same(up.upscale_tensor(lr), a)


def test_auto_splits_on_the_cpu_and_keeps_the_untiled_result(monkeypatch):
    """On the CPU 'auto' always splits (cache-sized tail tiles are faster); while the LR part
    fits the budget it runs in one tile, and the result is the untiled one (up to rounding)."""
    m = _model(4, text=False)
    lr = torch.rand(1, 3, 96, 128)
    a = Upscaler(m, device="cpu", precision="fp32", tile=0).upscale_tensor(lr)
    up = Upscaler(m, device="cpu", precision="fp32")
    calls = _counting(up, monkeypatch)
    per_tail = m.bytes_per_lr_pixel(4, part="tail")
    assert m.bytes_per_lr_pixel(4, part="lr") * 4 < per_tail  # the cost is in the tail
    monkeypatch.setattr(engine, "_CPU_TAIL_BYTES", 40 * 136 * per_tail)  # ~40 rows of 128
    assert up._tile_size(96, 128) == 0  # the whole forward would fit the budget
    rows, cols = up._tail_tiles(96, 128)
    assert cols == 0 and 16 <= rows <= 40  # full-width bands
    b = up.upscale_tensor(lr)
    assert calls["whole"] == 0 and calls["lr"] == 1 and calls["tail"] == -(-96 // rows)
    assert same(a, b)
    # a budget too small for the whole forward but large enough for the LR part: one LR tile
    up = Upscaler(m, device="cpu", precision="fp32",
                  memory=int(4 * 40 * 128 * m.bytes_per_lr_pixel(4)))  # a setting, not a patch
    assert up._tile_size(96, 128) > 128
    calls.update(lr=0, tail=0, whole=0)
    assert same(up.upscale_tensor(lr), a) and calls["lr"] == 1 and calls["whole"] == 0
    # a wide image gets squares rather than thin bands
    assert up._tail_tiles(96, 4000)[1] > 0


def test_row_stream_holds_a_window():
    x = torch.arange(2 * 3 * 20 * 4, dtype=torch.float32).view(2, 3, 20, 4)
    bands = ((y, x[:, :, y:y + 6]) for y in range(0, 20, 6))
    rs = RowStream(bands, torch.float64)
    assert torch.equal(rs.rows(0, 4), x[:, :, 0:4].double())
    assert torch.equal(rs.rows(3, 14), x[:, :, 3:14].double())
    assert rs.rows(3, 14) is rs.rows(3, 14)
    assert len(rs._chunks) == 3
    assert torch.equal(rs.rows(13, 20), x[:, :, 13:20].double())
    assert len(rs._chunks) == 2  # rows above 13 are gone


def test_run_plan_without_blending_keeps_cores():
    """``blend=False``: each output pixel comes from the tile whose core holds it."""
    plan = plan_tiles(30, 41, tile=10, tile_width=0, overlap=3)
    assert len(plan) == 3 and len(plan[0]) == 1  # full-width rows
    plan = plan_tiles(30, 41, tile=10, overlap=3)
    marks = []

    def fn(t):
        marks.append(t)
        h, w = t.row.i1 - t.row.i0, t.col.i1 - t.col.i0
        return torch.full((1, 1, 2 * h, 2 * w), float(len(marks)))

    out = torch.cat([b for _, b in run_plan(fn, (30, 41), 2, plan, 3, blend=False)], dim=2)
    assert out.shape == (1, 1, 60, 82)
    for k, t in enumerate(marks, 1):
        core = out[0, 0, 2 * t.row.c0:2 * t.row.c1, 2 * t.col.c0:2 * t.col.c1]
        assert (core == k).all()
