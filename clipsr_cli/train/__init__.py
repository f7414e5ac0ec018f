"""Training (``clipsr train``): kept apart from inference; import cost is paid only when training.

Public names: ``TrainConfig``, ``resolve_config``, ``train``, ``TrainResult``, ``TrainProgress``.

Modules, lowest first: ``schema`` (the config dataclasses) < ``settings`` (TOML) < ``rundir``
(what a run writes and reads back) < ``config`` (merging file, presets, overrides) < ``data``,
``losses``, ``discriminator``, ``ddp`` < ``steps`` < ``setup`` < ``trainer`` (the loop).
"""

from __future__ import annotations

from clipsr_cli.train.config import TrainConfig, resolve_config


def __getattr__(name: str):
    if name in ("train", "TrainResult", "TrainProgress"):
        from clipsr_cli.train import trainer as loop

        return getattr(loop, name)
    raise AttributeError(f"module 'clipsr_cli.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "resolve_config", "train", "TrainResult", "TrainProgress"]
