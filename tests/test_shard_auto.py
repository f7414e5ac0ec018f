"""Cluster-ready batch (issue #14, part 2): --shard auto from SLURM job arrays, Kubernetes
indexed Jobs and torchrun; one GPU per torchrun process; explicit --shard wins."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import UsageError
from clipsr_cli.tasks import batch as B
from clipsr_cli.tasks.sources import local_device, resolve_shard, shard_from_env

runner = CliRunner()
VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP", "JOB_COMPLETION_INDEX",
        "CLIPSR_SHARD_COUNT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)


def _slurm(task, count=3, low=0, **more):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
           "SLURM_ARRAY_TASK_COUNT": str(count)}
    env.update({k: str(v) for k, v in more.items()})
    return env


# -- the pure function -----------------------------------------------------------------------------
def test_slurm_arrays():
    assert [shard_from_env(_slurm(t))[0] for t in range(3)] == [(1, 3), (2, 3), (3, 3)]
    assert shard_from_env(_slurm(5, count=4, low=5))[0] == (1, 4)  # --array=5-8
    assert shard_from_env(_slurm(8, count=4, low=5))[0] == (4, 4)
    step = _slurm(7, count=4, low=1, SLURM_ARRAY_TASK_STEP=2)  # --array=1-7:2
    assert shard_from_env(step)[0] == (4, 4)
    no_count = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "4"}
    assert shard_from_env(no_count) == ((2, 4), "SLURM_ARRAY_TASK_ID")


def test_kubernetes_indexed_job_and_torchrun():
    assert shard_from_env({"JOB_COMPLETION_INDEX": "0", "CLIPSR_SHARD_COUNT": "5"})[0] == (1, 5)
    assert shard_from_env({"JOB_COMPLETION_INDEX": "4", "CLIPSR_SHARD_COUNT": "5"})[0] == (5, 5)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == (
        (4, 4), "RANK/WORLD_SIZE")
    assert shard_from_env({}) is None
    assert shard_from_env({"PATH": "/bin", "SLURM_JOB_ID": "7"}) is None  # not an array job


def test_torchrun_inside_an_array_task_splits_its_shard():
    got = {shard_from_env({**_slurm(t, count=2), "RANK": str(r), "WORLD_SIZE": "3"})[0]
           for t in range(2) for r in range(3)}
    assert got == {(k, 6) for k in range(1, 7)}


@pytest.mark.parametrize("env,words", [
    (_slurm("x"), "SLURM_ARRAY_TASK_ID='x'"),
    (_slurm(3, count=3), "not one of 3"),  # beyond the array
    (_slurm(4, count=3, low=1, SLURM_ARRAY_TASK_STEP=2), "not one of 3"),  # off the step
    ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT"),
    (_slurm(0, count=0), "SLURM_ARRAY_TASK_COUNT='0'"),
    ({"JOB_COMPLETION_INDEX": "2"}, "CLIPSR_SHARD_COUNT"),
    ({"JOB_COMPLETION_INDEX": "5", "CLIPSR_SHARD_COUNT": "5"}, "not below"),
    ({"JOB_COMPLETION_INDEX": "-1", "CLIPSR_SHARD_COUNT": "5"}, ">= 0"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "not below"),
    ({"RANK": "1"}, "together"),
    ({**_slurm(0), "JOB_COMPLETION_INDEX": "0", "CLIPSR_SHARD_COUNT": "2"}, "both"),
])
def test_bad_values_are_one_line_usage_errors(env, words):
    with pytest.raises(UsageError, match=words) as e:
        shard_from_env(env)
    assert "\n" not in str(e.value) and e.value.param == "shard"


def test_resolve_shard_explicit_wins_and_world_size_defaults_to_auto():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2"}
    assert resolve_shard("3/5", {**_slurm(0), **torchrun}) == (3, 5)
    assert resolve_shard(None, torchrun) == (2, 2)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard(None, _slurm(1)) is None  # an array job without --shard: every file
    assert resolve_shard("auto", _slurm(1)) == (2, 3)
    with pytest.raises(UsageError, match="none is set"):
        resolve_shard("auto", {})


def test_local_device():
    env = {"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "4"}
    assert local_device("auto", env, 4) == "cuda:3"
    assert local_device("auto", env, 2) == "cuda:1"  # more processes than GPUs: shared
    assert local_device("auto", env, 0) == "auto"  # no CUDA
    assert local_device("cpu", env, 4) == "cpu"  # explicit wins
    assert local_device("auto", {}, 4) == "auto"


# -- end to end ------------------------------------------------------------------------------------
def _images(root, n=9):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _run(src, out, ckpt, env, *extra, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        return runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(ckpt),
                                   "--device", "cpu", *extra])
    finally:
        for k in env:
            monkeypatch.delenv(k)


@pytest.mark.parametrize("kind", ["slurm", "kubernetes", "torchrun"])
def test_each_file_exactly_once_across_the_processes(tmp_path, tiny_ckpt, monkeypatch, kind):
    src, out = _images(tmp_path / "in"), tmp_path / "out"
    envs = {"slurm": [_slurm(t + 10, low=10) for t in range(3)],
            "kubernetes": [{"JOB_COMPLETION_INDEX": str(t), "CLIPSR_SHARD_COUNT": "3"}
                           for t in range(3)],
            "torchrun": [{"RANK": str(t), "WORLD_SIZE": "3", "LOCAL_RANK": str(t)}
                         for t in range(3)]}[kind]
    written = []
    for env in envs:
        args = [] if kind == "torchrun" else ["--shard", "auto"]  # torchrun: the default
        args += ["--report", str(tmp_path / "r-{shard}.json")]
        r = _run(src, out, tiny_ckpt(), env, *args, monkeypatch=monkeypatch)
        assert r.exit_code == 0, r.output
        written += r.stdout.split()
    assert sorted(written) == sorted(str(out / f"{i}_x4.png") for i in range(9))
    reports = [json.loads((tmp_path / f"r-{k}of3.json").read_text()) for k in (1, 2, 3)]
    assert [r["shard"] for r in reports] == ["1/3", "2/3", "3/3"]
    assert sum(r["counts"]["done"] for r in reports) == 9


def test_explicit_shard_wins_over_the_environment(tmp_path, tiny_ckpt, monkeypatch):
    src = _images(tmp_path / "in")
    env = {"RANK": "0", "WORLD_SIZE": "3"}
    r = _run(src, tmp_path / "o1", tiny_ckpt(), env, "--shard", "1/1", monkeypatch=monkeypatch)
    assert r.exit_code == 0 and len(r.stdout.split()) == 9
    mine = sorted(str(tmp_path / "o2" / f"{s.rel.stem}_x4.png")
                  for s in B.discover([str(src)]).sources if B.shard_of(s.rel, 3) == 1)
    r = _run(src, tmp_path / "o2", tiny_ckpt(), env, monkeypatch=monkeypatch)
    assert r.exit_code == 0 and sorted(r.stdout.split()) == mine and 0 < len(mine) < 9


@pytest.mark.parametrize("env,words", [({}, "--shard K/N"),
                                       (_slurm("abc"), "SLURM_ARRAY_TASK_ID='abc'"),
                                       ({"JOB_COMPLETION_INDEX": "1"}, "CLIPSR_SHARD_COUNT")])
def test_cli_auto_without_usable_variables_exit_2_one_line(tmp_path, monkeypatch, env, words):
    src = _images(tmp_path / "in", 1)
    r = _run(src, tmp_path / "o", "unused.safetensors", env, "--shard", "auto",
             monkeypatch=monkeypatch)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "--shard auto" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
