"""Distributed training: ``torchrun --nproc_per_node 2 -m clipsr_cli train`` on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_train import _photos


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("preset", ["psnr", "gan"])
def test_two_processes_end_with_identical_weights(tmp_path, preset):
    """G (DDP) and, with gan, D (gradients all-reduced by hand: MA-GP needs double backward)."""
    data = _photos(tmp_path / "p", captions=True)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clipsr_cli", "train", "--data", str(data), "--out", str(out), "--scale", "4",
           "--clip", "clipsr-tiny:random", "--steps", "4", "--batch-size", "2", "--patch-size", "8",
           "--device", "cpu", "--log-every", "1", "--checkpoint-every", "2",
           "--set", "model.encoder_widths=[8, 12, 16]", "--set", "model.body_blocks=1",
           "--set", "model.up_widths=[8, 8]", "--set", "model.prompt_tokens=2",
           "--preset", preset, "--set", "loss.d_width=16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    hashes = summary["rank_weight_hashes"]  # sha256 of each rank's final generator weights
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # rank 0 alone logs and checkpoints; the checkpoint holds both ranks' sampler states
    assert r.stderr.count("finished at step 4") == 1
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(st["sampler"]) == 2
    assert not torch.equal(st["sampler"][0]["gen"], st["sampler"][1]["gen"])  # per-rank streams
    from clipsr_cli.model.checkpoint import load_checkpoint

    m = load_checkpoint(out / "model.safetensors")
    assert m.config.text_conditioned
    assert json.loads(m.checkpoint_meta["training"])["batch_size"] == 4  # global batch
    if preset == "gan":
        assert st["d"]["gates"].abs().sum() > 0
