"""The training loop: ``train(config)`` → a run directory with an exported EMA checkpoint.

What the run directory holds, and how it is written: :mod:`clipsr_cli.train.rundir`. Notes and
warnings go to :data:`clipsr_cli.errors.log` (rank 0 only); progress to a callback.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from clipsr_cli.errors import Interrupted, TrainingError, log
from clipsr_cli.train import ddp, rundir
from clipsr_cli.train.config import incompatibilities
from clipsr_cli.train.rundir import CHECKPOINT, CONFIG, EXPORT, STATE_VERSION, MetricsLog, to_cpu
from clipsr_cli.train.schema import TrainConfig
from clipsr_cli.train.settings import from_toml_text, to_toml
from clipsr_cli.train.setup import (build_data, build_generator, build_losses, load_frozen_clip,
                                    resolve_amp, resolve_device)
from clipsr_cli.train.steps import (check_finite, describe, losses_finite, lr_factor, train_step,
                                    val_line, validate, weights_hash)


@dataclass
class TrainResult:
    run_dir: Path
    export: Path
    step: int
    """Optimisation steps done in total."""
    stopped: str
    """'done' (all steps), 'time' (time limit) or 'interrupted'."""
    seconds: float
    """Wall time of the training loop in this process (excludes start-up)."""
    steps_per_s: float
    val: dict | None
    """Last validation of the EMA model (val_psnr, val_ssim, bicubic_psnr, bicubic_ssim)."""


@dataclass(frozen=True)
class TrainProgress:
    """What the ``progress`` callback of :func:`train` receives after every step (rank 0)."""

    step: int
    total: int
    first_step: int
    """The step this process started at (> 0 on resume)."""
    loss: float | None
    """The mean loss since the last log step, on log steps; else None."""


@dataclass
class StopRequest:
    """Set by the SIGTERM handler; the loop stops at the next step boundary (on every rank)."""

    sigterm: bool = False


def train(cfg: TrainConfig, *, resume: bool = False,
          progress: Callable[[TrainProgress], None] | None = None,
          on_step: Callable[[int, dict], None] | None = None, source=None, val_source=None,
          show_progress: bool | None = None) -> TrainResult:
    """Train a CLIP-SR generator as ``cfg`` says; returns where the export is.

    ``progress(TrainProgress)`` is called after every step on rank 0 (the CLI draws its bar with
    it); ``on_step(step, losses)`` after every optimisation step on every rank (tests use it to
    interrupt a run). ``source`` / ``val_source``: image sources (``len``, ``load(i) -> (PIL
    image, captions)``) used instead of ``cfg.data.path`` / ``cfg.data.val``. KeyboardInterrupt /
    SIGTERM stop cleanly (at a step boundary, the same one on every rank): the state is
    checkpointed and the EMA exported, then the KeyboardInterrupt is re-raised (for SIGTERM an
    ``Interrupted(signal.SIGTERM)``, so the CLI can end by that signal). ``show_progress`` is ignored (kept for old callers; pass ``progress``).
    """
    dist = ddp.env_info()
    device = resolve_device(cfg.run.device, dist)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp.init(dist, device)
    try:
        result = Trainer(cfg, dist, device, resume=resume, progress=progress, on_step=on_step,
                         source=source, val_source=val_source).run()
    except BaseException:
        ddp.shutdown(clean=False)
        raise
    ddp.shutdown()
    return result


def _quiet(message: str) -> None:
    pass


class Trainer:
    """One run in this process: built by ``__init__`` (resume state loaded), driven by ``run``."""

    def __init__(self, cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device, *,
                 resume: bool, progress=None, on_step=None, source=None, val_source=None):
        self.t_start = time.monotonic()
        self.cfg, self.dist, self.device = cfg, dist, device
        self.main = dist.main
        self.say = log.info if self.main else _quiet
        self.warn = log.warning if self.main else _quiet
        self.progress = progress if self.main else None
        self.on_step = on_step
        self.run_dir = rundir.run_dir(cfg)
        state = self._check_start(resume)
        if self.main:
            rundir.write_config(self.run_dir, cfg)

        torch.manual_seed(cfg.run.seed)
        self.amp = resolve_amp(cfg.run.precision, device)
        clip = load_frozen_clip(cfg.run.clip, device, self.warn) if cfg.text_conditioned else None
        self.g = build_generator(cfg, clip, device, dist, self.amp, init=state is None, say=self.say)
        self.mcfg = self.g.mcfg
        self.losses = build_losses(cfg, clip, self.mcfg, device, dist, warn=self.warn)
        self.data = build_data(cfg, self.mcfg, self.g.text, device, dist, source=source,
                               val_source=val_source, say=self.say, warn=self.warn)
        self.step, self.elapsed_before = 0, 0.0
        self.saved_step: int | None = None
        self.last_val: dict | None = None
        if state is not None:
            try:
                self._load(state)
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError):
                raise TrainingError(f"cannot resume: {self.run_dir / CHECKPOINT} is damaged (its "
                                    f"contents do not fit the run's model); "
                                    f"{rundir.restart_advice(self.run_dir)}") from None
        self.metrics = MetricsLog(self.run_dir / rundir.METRICS, self.step) if self.main else None
        n_params = sum(p.numel() for p in self.g.model.parameters())
        L = cfg.loss
        self.say(f"model: {describe(self.mcfg)}, {n_params / 1e6:.2f} M parameters; preset "
                 f"{cfg.preset}; {'AMP ' + str(self.amp).replace('torch.', '') if self.amp else 'fp32'}"
                 f" on {device}" + (f" x {dist.world} processes" if dist.enabled else "")
                 + (f"; perceptual: {self.losses.perceptual_name}"
                    if L.perceptual_weight > 0 and L.perceptual != "none" else ""))

    # -- start / resume -------------------------------------------------------------------------------
    def _check_start(self, resume: bool) -> dict | None:
        cfg, d = self.cfg, self.run_dir
        if not resume:
            if (d / CHECKPOINT).exists():
                raise TrainingError(f"{d} already holds a training run; pass `resume=True` to "
                                    "continue it or choose another `out`")
            return None
        state = rundir.load_state(d)
        bad = incompatibilities(from_toml_text(state["config"], source=str(d / CHECKPOINT)), cfg)
        if bad:
            raise TrainingError(f"cannot resume {d}: the configuration differs in {', '.join(bad)}; "
                                f"resume with the saved settings ({d / CONFIG}) or start a new run "
                                "with `init`")
        if state["step"] >= cfg.run.steps:
            raise TrainingError(f"{d} already finished {state['step']} of {cfg.run.steps} steps; "
                                "pass a larger `steps` to continue")
        return state

    def _load(self, state: dict) -> None:
        g, losses, data, dist = self.g, self.losses, self.data, self.dist
        g.model.load_state_dict(state["model"])
        g.ema_model.load_state_dict(state["ema"])
        g.ema.updates = int(state["ema_updates"])
        g.opt.load_state_dict(state["opt"])
        if losses.D is not None:
            losses.D.load_state_dict(state["d"])
            losses.d_opt.load_state_dict(state["d_opt"])
        if "scaler" in state and g.scaler.is_enabled():
            g.scaler.load_state_dict(state["scaler"])
        samplers = state["sampler"]
        if len(samplers) == dist.world:
            data.sampler.load_state_dict(samplers[dist.rank])
            rundir.set_rng_state(state["rng"][dist.rank], self.device)
        else:
            self.warn(f"resuming with {dist.world} process(es) instead of {len(samplers)}: the "
                      "sampling sequence restarts (training continues, not bit-identically)")
            data.sampler.gen.manual_seed(data.seed + 7919 * int(state["step"]))
        self.step = self.saved_step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        data.bad.unreadable, data.bad.small, data.bad.seen = (int(x) for x in state.get("bad", (0, 0, 0)))
        self.say(f"resumed {self.run_dir} at step {self.step}")

    # -- saving ----------------------------------------------------------------------------------------
    def save(self, step: int, elapsed: float, *, gather: bool = True) -> None:
        """Write checkpoint.pt, then the EMA export, at ``step`` (rank 0; ``gather``: with every
        rank's sampler and RNG state). A failed write raises ``rundir.WriteFailed`` and keeps the
        previous file (atomic writes)."""
        g, losses, dist, bad = self.g, self.losses, self.dist, self.data.bad
        samp = [to_cpu(self.data.sampler.state_dict())]
        rng = [rundir.rng_state(self.device)]
        if dist.enabled and gather:
            samp = ddp.all_gather_object(samp[0], dist)
            rng = ddp.all_gather_object(to_cpu(rng[0]), dist)
        if not self.main:
            return
        st = {"version": STATE_VERSION, "step": step, "elapsed": elapsed, "config": to_toml(self.cfg),
              "model": to_cpu(g.model.state_dict()), "ema": to_cpu(g.ema_model.state_dict()),
              "ema_updates": g.ema.updates, "opt": to_cpu(g.opt.state_dict()),
              "sampler": samp, "rng": [to_cpu(r) for r in rng],
              "bad": [bad.unreadable, bad.small, bad.seen]}
        if losses.D is not None:
            st["d"] = to_cpu(losses.D.state_dict())
            st["d_opt"] = to_cpu(losses.d_opt.state_dict())
        if g.scaler.is_enabled():
            st["scaler"] = g.scaler.state_dict()
        rundir.write_checkpoint(self.run_dir, st)
        self.saved_step = step
        rundir.write_export(self.run_dir, g.ema_model, self.mcfg,
                            training=self._training_meta(step, self.last_val))

    def _save_bytes(self) -> tuple[int, int]:
        """About how many bytes checkpoint.pt and model.safetensors take."""
        g, losses = self.g, self.losses
        parts = [g.model.state_dict(), g.ema_model.state_dict(), g.opt.state_dict()]
        if losses.D is not None:
            parts += [losses.D.state_dict(), losses.d_opt.state_dict()]
        return _nbytes(parts), _nbytes(g.ema_model.state_dict())

    def _write_failure(self, e: rundir.WriteFailed) -> str:
        """One line: which file failed at which step, the space a checkpoint needs, what is kept."""
        d, saved = self.run_dir, self.saved_step
        ckpt, export = self._save_bytes()
        head = (f"disk full: cannot write {e.file.name} at step {self.step}" if e.disk_full else
                f"cannot write {e.file.name} at step {self.step} ({e.strerror})")
        need = (f"; a checkpoint needs about {_size(ckpt + export)} free in {d} ({CHECKPOINT} "
                f"{_size(ckpt)} + {EXPORT} {_size(export)})" if e.disk_full else
                f"; check the disk holding {d}")
        fix = "free some space" if e.disk_full else "fix the disk"
        if saved is not None and saved >= self.cfg.run.steps:
            kept = f"; the final checkpoint and export (step {saved}) were written"
        elif saved is not None:
            kept = (f"; {d} keeps the checkpoint of step {saved}: {fix} and continue with "
                    "`resume=True`")
        else:
            kept = f"; no checkpoint was written yet: {fix} and start the run again"
        return head + need + kept

    def _training_meta(self, step: int, val: dict | None) -> dict:
        cfg = self.cfg
        return {"preset": cfg.preset, "step": step, "steps": cfg.run.steps, "data": cfg.data.path,
                "format": cfg.data.format, "patch_size": cfg.data.patch_size,
                "batch_size": cfg.data.batch_size * self.dist.world, "lr": cfg.optim.lr,
                "ema_decay": cfg.optim.ema_decay, "caption_dropout": cfg.data.caption_dropout,
                "perceptual": self.losses.perceptual_name, "val": val, "weights": "ema"}

    def _validate(self) -> dict:
        v = validate(self.g.ema_model, self.data.val, self.mcfg, self.amp, self.device)
        v["step"] = self.step
        self.metrics.append({"event": "val", **v})
        self.say(val_line(self.step, v))
        return v

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        stop = StopRequest()
        old_term = _catch_sigterm(stop)
        try:
            return self._run(stop)
        except rundir.WriteFailed as e:
            raise TrainingError(self._write_failure(e)) from None
        finally:
            _restore_sigterm(old_term)
            if self.metrics is not None:
                self.metrics.close()

    def _run(self, stop: StopRequest) -> TrainResult:
        cfg, dist, device, g, losses = self.cfg, self.dist, self.device, self.g, self.losses
        run, main, val = cfg.run, self.main, self.data.val
        log_acc: dict[str, float] = {}
        log_n: dict[str, int] = {}  # per loss: a term may be skipped on some steps (g_cos)
        stopped = "done"
        loop_t0 = time.monotonic()
        start = self.step
        check_every = 1 if device.type == "cpu" else run.log_every
        last_good = self.step
        step_losses = None

        def elapsed() -> float:
            return self.elapsed_before + (time.monotonic() - loop_t0)

        try:
            while self.step < run.steps:
                now = elapsed()
                if run.time_limit or dist.enabled:
                    # one clock for all ranks: same schedule, same stop decision
                    flag = 1e9 if stop.sigterm else now
                    flag = ddp.broadcast_float(flag, dist, device) if dist.enabled else flag
                    if flag >= 1e9:
                        raise Interrupted(signal.SIGTERM)
                    now = flag
                    if run.time_limit and now >= run.time_limit:
                        stopped = "time"
                        break
                elif stop.sigterm:
                    raise Interrupted(signal.SIGTERM)
                f = lr_factor(self.step, cfg, now / run.time_limit if run.time_limit else 0.0)
                for group in g.opt.param_groups:
                    group["lr"] = cfg.optim.lr * f
                batch = self.data.sampler.next_batch()
                step_losses = train_step(cfg, batch, g, losses, dist)
                g.ema.update()
                self.step += 1
                step = self.step
                for k, v in step_losses.items():
                    log_acc[k] = log_acc.get(k, 0.0) + v
                    log_n[k] = log_n.get(k, 0) + 1
                if step % check_every == 0 or step == run.steps:
                    check_finite(step_losses, step, self.run_dir, last_good)
                    last_good = step
                loss = None
                if step % run.log_every == 0 or step == run.steps:
                    rec = {k: float(v) / log_n[k] for k, v in log_acc.items()}
                    check_finite(rec, step, self.run_dir, last_good)
                    dt = time.monotonic() - loop_t0
                    rec.update(step=step, lr=cfg.optim.lr * f, time=round(now, 3),
                               steps_per_s=round((step - start) / max(dt, 1e-9), 4))
                    if self.metrics is not None:
                        self.metrics.append(rec)
                    loss = rec.get("loss", 0.0)
                    log_acc, log_n = {}, {}
                if self.progress is not None:
                    self.progress(TrainProgress(step, run.steps, start, loss))
                if main and val and step % run.val_every == 0:
                    self.last_val = self._validate()
                if step % run.checkpoint_every == 0 and step < run.steps:
                    self.save(step, elapsed())
                if self.on_step is not None:
                    self.on_step(step, {k: float(v) for k, v in step_losses.items()})
        except KeyboardInterrupt:
            if main:
                log.warning(f"interrupted at step {self.step}: writing the checkpoint…")
            if losses_finite(step_losses):
                self.save(self.step, elapsed(), gather=False)
            raise
        return self._finish(stopped, time.monotonic() - loop_t0, start, elapsed())

    def _finish(self, stopped: str, dt: float, start: int, elapsed: float) -> TrainResult:
        main, dist, step, d = self.main, self.dist, self.step, self.run_dir
        if main and self.data.val and (self.last_val is None or self.last_val.get("step") != step):
            self.last_val = self._validate()
        self.save(step, elapsed)
        # every rank must end with the same weights: compare hashes (cheap, and catches DDP bugs)
        hashes = ddp.all_gather_object(weights_hash(self.g.model, self.losses.D), dist)
        sps = (step - start) / max(dt, 1e-9)
        bad = self.data.bad
        if main:
            rundir.write_summary(d, {
                "stopped": stopped, "step": step, "steps": self.cfg.run.steps, "seconds": round(dt, 3),
                "total_seconds": round(time.monotonic() - self.t_start, 3),
                "steps_per_s": round(sps, 4), "world_size": dist.world, "rank_weight_hashes": hashes,
                "val": self.last_val, "unreadable_images": bad.unreadable, "small_images": bad.small,
                "perceptual": self.losses.perceptual_name, "export": str(d / EXPORT)})
            msg = {"done": "finished", "time": "time limit reached"}[stopped]
            self.say(f"{msg} at step {step} ({sps:.2f} steps/s); exported the EMA weights to "
                     f"{d / EXPORT}" + (f"; unreadable images skipped: {bad.unreadable}"
                                        if bad.unreadable else ""))
        if len(set(hashes)) > 1:
            raise TrainingError(f"the {dist.world} processes ended with different weights; this is a bug")
        return TrainResult(d, d / EXPORT, step, stopped, dt, sps, self.last_val)


def _catch_sigterm(stop: StopRequest):
    """SIGTERM (preemption) stops like Ctrl-C; returns the previous handler (None: not set)."""
    if not hasattr(signal, "SIGTERM"):
        return None

    def handler(signum, frame) -> None:
        stop.sigterm = True

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_sigterm(old) -> None:
    if old is not None:
        try:
            signal.signal(signal.SIGTERM, old)
        except ValueError:
            pass


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{max(n, 1e5) / 1e6:.1f} MB"
