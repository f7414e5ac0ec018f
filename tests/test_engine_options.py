"""EngineOptions: how a model runs, one frozen value validated once and passed whole."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from clipsr_cli.errors import UsageError
from clipsr_cli.infer.degradation import Degradation
from clipsr_cli.infer.options import EngineOptions


def test_values_are_checked_once_and_normalised():
    o = EngineOptions(device=" CPU ", precision="FP32", tile="128", tile_overlap=4, passes=2)
    assert (o.device, o.precision, o.tile, o.tile_overlap, o.passes) == ("cpu", "fp32", 128, 4, 2)
    assert EngineOptions(tile=" Auto ").tile == "auto" and EngineOptions().degradation == Degradation()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tile = 0
    for bad, param in ((dict(device="tpu"), "device"), (dict(precision="fp8"), "precision"),
                       (dict(tile="huge"), "tile"), (dict(tile=-1), "tile"),
                       (dict(tile_overlap=-1), "tile_overlap"), (dict(passes=0), "passes"),
                       (dict(passes=True), "passes"), (dict(batch_size=0), "batch_size"),
                       (dict(memory=0), "memory"), (dict(degradation="jpeg"), "degradation")):
        with pytest.raises(UsageError) as e:
            EngineOptions(**bad)
        assert e.value.param == param
    with pytest.raises(UsageError):
        o.replace(passes=-1)  # a copy is checked again
    assert o.replace(tile=0).tile == 0 and o.tile == 128


def test_options_import_no_torch():
    code = ("import sys; from clipsr_cli.infer.options import EngineOptions; "
            "from clipsr_cli.cli.options import engine_options; "
            "engine_options(device='cuda:1', passes=2, degradation='jpeg'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_loader_takes_options_or_their_fields(tiny_ckpt):
    from clipsr_cli.infer.engine import Upscaler
    from clipsr_cli.infer.pipeline import Pipeline

    path = str(tiny_ckpt(2))
    up = Upscaler.load(path, EngineOptions(device="cpu", tile=0, passes=2))
    assert isinstance(up, Pipeline) and up.scale == 4 and up.options.passes == 1  # stages: once
    assert Upscaler.load(path, device="cpu", tile=0).settings.tile == 0
    with pytest.raises(TypeError, match="not both"):
        Upscaler.load(path, EngineOptions(), tile=0)
