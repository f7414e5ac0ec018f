"""Training configuration and run-directory plumbing: [model] is ModelConfig, the config file is
read once, precision comes from the engine, progress and notes go through callbacks and the log,
metrics appends survive a torn line, and the loop cleans up on any error."""

from __future__ import annotations

import dataclasses
import json
import signal

import pytest
import torch

from clipsr_cli.errors import DeviceError
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.train.config import config_from_cli, from_toml_text, to_toml
from clipsr_cli.train.schema import MODEL_KEYS_ELSEWHERE, ModelSection, model_config
from tests.test_train import _cfg, _photos


def test_model_section_is_model_config_less_what_is_set_elsewhere():
    # ModelSection is written out (visible to type checkers); this keeps it in step with
    # ModelConfig: same names in the same order, same types, same defaults
    from typing import get_type_hints

    def shape(cls, skip=()):
        hints = get_type_hints(cls)
        return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls)
                if f.name not in skip]

    assert shape(ModelSection) == shape(ModelConfig, MODEL_KEYS_ELSEWHERE)
    assert set(MODEL_KEYS_ELSEWHERE) <= {f.name for f in dataclasses.fields(ModelConfig)}
    assert "negative_slope" in {f.name for f in dataclasses.fields(ModelSection)}
    assert ModelSection.__dataclass_params__.frozen
    # a ModelConfig field is a [model] key (here via the sets items) and reaches the generator
    cfg = config_from_cli(config=None, preset=None, resume=False, flags={"run": {"out": "r"}},
                          sets=["model.negative_slope=0.1", "data.scale=8"])
    m = model_config(cfg)
    assert m.negative_slope == 0.1 and m.scale == 8 and m.clip is None
    assert from_toml_text(to_toml(cfg), source="x") == cfg


def test_the_config_file_is_read_once(tmp_path, monkeypatch):
    from clipsr_cli.model.checkpoint import save_checkpoint
    from clipsr_cli.model.network import build_model
    from clipsr_cli.train import settings

    mcfg = ModelConfig(scale=2, encoder_widths=(8, 12), body_blocks=1, up_widths=(8,))
    save_checkpoint(tmp_path / "init.safetensors", build_model(mcfg, None), mcfg)
    f = tmp_path / "c.toml"
    f.write_text('preset = "gan"\n[run]\ninit = "init.safetensors"\nclip = "none"\n[data]\n'
                 'patch_size = 8\n')
    calls = []
    real = settings.read_toml
    monkeypatch.setattr(settings, "read_toml", lambda p: calls.append(p) or real(p))
    cfg = config_from_cli(config=str(f), preset=None, resume=False, flags={"run": {"out": "r"}})
    assert len(calls) == 1
    assert cfg.preset == "gan" and cfg.data.scale == 2 and cfg.model.encoder_widths == (8, 12)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_is_the_engines_auto_bf16_only_where_native(monkeypatch, native_bf16):
    # one rule for training and inference: auto is bf16 on the CPU only where oneDNN has native
    # bf16 (emulated bf16 trained ~9x slower than fp32 here: docs/training.md, "Speed")
    from clipsr_cli.infer import devices
    from clipsr_cli.train.setup import resolve_amp

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert devices.resolve_precision("auto", cpu) == expected
    assert resolve_amp("auto", cpu) == (torch.bfloat16 if native_bf16 else None)
    assert resolve_amp(" AUTO ", cpu) == resolve_amp("auto", cpu)
    assert resolve_amp("bf16", cpu) == torch.bfloat16  # asked for: allowed (emulated if need be)
    assert resolve_amp("fp32", cpu) is None
    with pytest.raises(DeviceError, match="fp16"):
        resolve_amp("fp16", cpu)


def test_progress_callback_and_log(tmp_path):
    from clipsr_cli.train.trainer import train

    seen = []
    res = train(_cfg(tmp_path, _photos(tmp_path / "p"), steps=4, run={"log_every": 2}),
                progress=seen.append)
    assert [(p.step, p.total, p.first_step) for p in seen] == [(s, 4, 0) for s in (1, 2, 3, 4)]
    assert [p.loss is not None for p in seen] == [False, True, False, True]
    assert res.step == 4 and not list(res.run_dir.glob(".*.part"))


def test_metrics_log_drops_records_after_the_checkpoint_and_torn_lines(tmp_path):
    from clipsr_cli.train.rundir import MetricsLog

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    m = MetricsLog(p, 1)
    m.append({"step": 2, "loss": 0.25})
    m.close()
    assert [json.loads(l) for l in p.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.25}]


def test_any_error_in_the_loop_restores_sigterm_and_closes_the_metrics(tmp_path, monkeypatch):
    from clipsr_cli.train import rundir
    from clipsr_cli.train.trainer import train

    opened = []
    real = rundir.MetricsLog.close
    monkeypatch.setattr(rundir.MetricsLog, "close", lambda self: opened.append(self) or real(self))
    before = signal.getsignal(signal.SIGTERM)

    def boom(step, losses):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(_cfg(tmp_path, _photos(tmp_path / "p"), steps=3), on_step=boom)
    assert signal.getsignal(signal.SIGTERM) == before
    assert len(opened) == 1 and opened[0]._fd is None


def test_sigterm_stops_training_at_the_next_step_with_a_checkpoint(tmp_path):
    import os

    from clipsr_cli.errors import Interrupted
    from clipsr_cli.train import rundir
    from clipsr_cli.train.trainer import train

    if not hasattr(signal, "SIGTERM"):
        pytest.skip("no SIGTERM on this platform")
    before = signal.getsignal(signal.SIGTERM)
    steps = []

    def term_at_2(step, losses):
        steps.append(step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the stop request

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), steps=6, run={"precision": "fp32"})
    with pytest.raises(Interrupted) as e:
        train(cfg, on_step=term_at_2)
    assert e.value.signum == signal.SIGTERM and steps == [1, 2]
    assert rundir.load_state(tmp_path / "run")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == before


def test_cli_usage_errors_name_the_flags(tmp_path):
    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app

    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "lr=1"])
    assert r.exit_code == 2 and "--set item 'lr=1': use SECTION.KEY=VALUE" in r.output
    r = CliRunner().invoke(app, ["train", "--resume"])
    assert r.exit_code == 2 and "--resume needs --out RUN_DIR" in r.output



def test_the_documented_config_file_lists_every_setting_with_its_default():
    """docs/training.md's "Config file" example is every key with its default (paths aside)."""
    import re
    from pathlib import Path

    from clipsr_cli.train.schema import SECTIONS, TrainConfig
    from clipsr_cli.train.settings import tomllib

    doc = (Path(__file__).resolve().parent.parent / "docs/training.md").read_text()
    block = re.search(r"## Config file.*?```toml\n(.*?)```", doc, re.S).group(1)
    data = tomllib.loads(block)
    default = TrainConfig()
    assert data.pop("preset") == default.preset and sorted(data) == sorted(SECTIONS)
    for sec, values in data.items():
        fields = {f.name for f in dataclasses.fields(getattr(default, sec))}
        # [model] is ModelConfig's fields (another area's): the documented ones must exist
        assert set(values) <= fields if sec == "model" else set(values) == fields, sec
        for k, v in values.items():
            if (sec, k) in (("data", "path"), ("data", "val"), ("run", "out")):
                continue
            want = getattr(getattr(default, sec), k)
            assert (list(want) if isinstance(want, tuple) else want) == v, (sec, k)
