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

Every write goes through :func:`writing`, which turns an ``OSError`` (a full disk, an I/O error)
into :class:`WriteFailed`; the trainer completes its message with the step, the space a checkpoint
needs and what is kept. A damaged ``checkpoint.pt`` is reported by :func:`load_state` in one line.
"""

from __future__ import annotations

import errno
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from clipsr_cli.errors import ModelError, TrainingError
from clipsr_cli.io.atomic import atomic_write_bytes, remove_stale_temporaries
from clipsr_cli.model.checkpoint import read_checkpoint, save_checkpoint
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


#: what a training checkpoint must hold
STATE_KEYS = ("version", "step", "config", "model", "ema", "ema_updates", "opt", "sampler", "rng")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteFailed(TrainingError):
    """Writing ``file`` of the run directory failed (``errno``: ENOSPC, EIO, ...)."""

    def __init__(self, file: Path, err: OSError):
        self.file, self.errno = Path(file), err.errno
        self.strerror = err.strerror or str(err) or type(err).__name__
        what = "disk full" if self.disk_full else "write error"
        super().__init__(f"{what}: cannot write {self.file} ({self.strerror}); "
                         + ("free some space" if self.disk_full else "check the disk"))

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL


@contextmanager
def writing(file: Path):
    """The one guard of run-directory writes: ``OSError`` → :class:`WriteFailed`."""
    try:
        yield
    except OSError as e:
        raise WriteFailed(file, e) from None


def load_state(path: Path) -> dict:
    """The resume state in ``path/checkpoint.pt`` (never unpickles objects); a missing, empty,
    truncated or foreign file is a one-line ``TrainingError`` saying what to do."""
    p = path / CHECKPOINT
    if not p.is_file():
        raise TrainingError(f"nothing to resume: {p} does not exist; start without `resume=True`")
    if p.stat().st_size == 0:
        raise TrainingError(f"cannot resume: {p} is empty (0 bytes); {restart_advice(path)}")
    try:
        st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # unpickling/zip errors of several kinds; their text is no help here
        raise TrainingError(f"cannot resume: {p} is damaged (truncated or not a torch checkpoint); "
                            f"{restart_advice(path)}") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION or any(
            k not in st for k in STATE_KEYS):
        raise TrainingError(f"cannot resume: {p} is not a clipsr training checkpoint of version "
                            f"{STATE_VERSION}; {restart_advice(path)}")
    return st


def restart_advice(path: Path) -> str:
    """What to do when ``path/checkpoint.pt`` cannot be resumed: start from the export, if any."""
    export = path / EXPORT
    try:
        _, _, meta = read_checkpoint(export)
        step = json.loads(meta.get("training", "{}")).get("step")
    except (ModelError, OSError, ValueError, AttributeError):
        return (f"remove it (and {EXPORT}) to start {path} again, or start a new run in another "
                "`out`")
    at = f" (step {step})" if isinstance(step, int) else ""
    return (f"start a new run in another `out` from the last export{at} with `init='{export}'`, "
            f"or remove {path / CHECKPOINT} to start {path} again")


def write_config(path: Path, cfg: TrainConfig) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create the run directory {path}: {e.strerror}") from None
    # what a killed run's interrupted writes left (a checkpoint-sized file, on a full disk)
    remove_stale_temporaries([path / n for n in (CONFIG, CHECKPOINT, EXPORT, METRICS, SUMMARY)])
    with writing(path / CONFIG):
        atomic_write_bytes(path / CONFIG, to_toml(cfg).encode())


def write_checkpoint(path: Path, state: dict) -> None:
    """``checkpoint.pt`` (atomic: on failure the previous one stays)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with writing(path / CHECKPOINT):
        atomic_write_bytes(path / CHECKPOINT, buf.getvalue())


def write_export(path: Path, ema_model, mcfg, *, training: dict) -> None:
    """``model.safetensors``: the EMA generator as a clipsr checkpoint (atomic)."""
    with writing(path / EXPORT):
        save_checkpoint(path / EXPORT, ema_model, mcfg, training=training)


def write_summary(path: Path, summary: dict) -> None:
    with writing(path / SUMMARY):
        atomic_write_bytes(path / SUMMARY, json.dumps(summary, indent=2).encode())


class MetricsLog:
    """``metrics.jsonl``: on resume, records after the checkpoint's step are dropped (they will be
    written again); then one fsynced line per record."""

    def __init__(self, path: Path, step: int):
        self.path = path
        self._fd = None
        with writing(path):
            self._open(step)

    def _open(self, step: int) -> None:
        path = self.path
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
        with writing(self.path):
            write_all(self._fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_all(fd: int, data: bytes) -> None:
    """``data`` appended to ``fd`` (in as many ``write`` calls as it takes), then fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


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
