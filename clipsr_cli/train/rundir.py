"""The run directory: what a run writes, reads back on resume, and how (atomically).

RUN_DIR contents (rank 0 writes them):
  config.toml        the resolved configuration (re-usable with ``config=``)
  metrics.jsonl      one JSON object per log / validation event
  checkpoint.pt      resume state (torch.save of tensors and plain containers only; read back with
                     ``torch.load(weights_only=True)``)
  model.safetensors  the EMA generator as a clipsr checkpoint (``load_checkpoint`` / ``upscale -m``)
  summary.json       how the run ended

Every whole-file write goes through :func:`clipsr_cli.io.atomic.atomic_write_bytes` (temp file,
fsync, rename). ``metrics.jsonl`` grows by appends: each record is one ``write`` of one complete
line followed by fsync (:class:`MetricsLog`). Rewriting the whole file per record would cost
O(records²) on long runs; a line torn by a crash is skipped when the file is read back on resume,
and that resume-time truncation is itself an atomic rewrite.
"""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import torch

from clipsr_cli.errors import TrainingError, log
from clipsr_cli.io.atomic import atomic_write_bytes
from clipsr_cli.model.checkpoint import save_checkpoint
from clipsr_cli.train.schema import TrainConfig
from clipsr_cli.train.settings import from_toml_text, to_toml

CONFIG = "config.toml"
CHECKPOINT = "checkpoint.pt"
EXPORT = "model.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STATE_VERSION = 1


def run_dir(cfg: TrainConfig) -> Path:
    if not cfg.run.out:
        raise TrainingError("no run directory given; pass `out='RUN_DIR'`")
    return Path(cfg.run.out).expanduser()


def saved_config(path: Path) -> TrainConfig:
    """The configuration a run was started with (what ``resume=True`` continues)."""
    p = Path(path) / CONFIG
    if not p.is_file():
        raise TrainingError(f"nothing to resume in {path}: no {CONFIG}; start without `resume=True`")
    return from_toml_text(p.read_text(), source=str(p))


def load_state(path: Path) -> dict:
    """The resume state in ``path/checkpoint.pt`` (never unpickles objects)."""
    p = path / CHECKPOINT
    if not p.is_file():
        raise TrainingError(f"nothing to resume: {p} does not exist; start without `resume=True`")
    try:
        st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file: unpickling errors of several kinds
        raise TrainingError(f"cannot read {p} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "the checkpoint is damaged; start a new run (`init="
                            f"'{path / EXPORT}'` keeps the exported weights)") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        raise TrainingError(f"{p} is not a clipsr training checkpoint of version {STATE_VERSION}")
    return st


def write_config(path: Path, cfg: TrainConfig) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / CONFIG, to_toml(cfg).encode())
    except OSError as e:
        raise TrainingError(f"cannot write to run directory {path}: {e.strerror}") from None


def write_state(path: Path, state: dict, *, ema_model, mcfg, training: dict) -> bool:
    """Write checkpoint.pt and the EMA export; on a full disk keep the previous files (False)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path / CHECKPOINT, buf.getvalue())
        save_checkpoint(path / EXPORT, ema_model, mcfg, training=training)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning(f"disk full while writing the checkpoint at step {state['step']}: kept the "
                        f"previous checkpoint in {path}; free some space")
            return False
        raise TrainingError(f"cannot write the checkpoint in {path}: {e.strerror}") from None
    return True


def write_summary(path: Path, summary: dict) -> None:
    atomic_write_bytes(path / SUMMARY, json.dumps(summary, indent=2).encode())


class MetricsLog:
    """``metrics.jsonl``: on resume, records after the checkpoint's step are dropped (they will be
    written again); then one fsynced line per record."""

    def __init__(self, path: Path, step: int):
        self.path = path
        if path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:  # a line torn by a crash
                    continue
            atomic_write_bytes(path, "".join(l + "\n" for l in keep).encode() if step else b"")
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, record: dict) -> None:
        data = memoryview((json.dumps(record) + "\n").encode())
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- resume state helpers -----------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def to_cpu(obj):
    """Tensors (in nested dicts/lists) on the CPU, for ``torch.save``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
