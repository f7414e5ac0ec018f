"""The clipsr checkpoint: one ``.safetensors`` file.

Tensors: the generator's ``state_dict`` (CLIP is not copied in). Metadata (all strings):
``format`` = "clipsr", ``format_version`` = "1", ``config`` = the JSON ``ModelConfig``,
optional ``training`` = a JSON summary of how it was trained. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from clipsr_cli.io.atomic import atomic_write_bytes  # noqa: F401  (re-exported for callers)
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.errors import ModelError

FORMAT = "clipsr"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: ModelConfig, *,
                    training: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Save generator weights + config atomically. ``dtype`` (e.g. fp16) narrows float tensors."""
    from safetensors.torch import save

    path = Path(path)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": config.to_json()}
    if training is not None:
        meta["training"] = json.dumps(training, sort_keys=True, default=str)
    atomic_write_bytes(path, save(state, metadata=meta))
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate a checkpoint: (config, state_dict, metadata). Raises ``ModelError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if len(data) < 8:
        raise ModelError(f"{path} is not a clipsr checkpoint (file too small); "
                         "re-download or re-export it")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or 8 + header_len > len(data):
        raise ModelError(f"{path} is not a clipsr checkpoint or is truncated; re-download or "
                         "re-export it")
    try:
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__", {}) or {}
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        if 8 + header_len + end > len(data):
            raise ModelError(f"{path} is truncated ({len(data)} of {8 + header_len + end} bytes); "
                             "re-download or re-export it")
        state = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
        raise ModelError(f"{path} is not a valid safetensors file ({e}); re-download or "
                         "re-export it") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is a safetensors file but not a clipsr checkpoint (no clipsr "
                         "metadata); use a checkpoint written by 'clipsr train'")
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ModelError(f"{path} has checkpoint format {version}, newer than this clipsr "
                         f"understands ({FORMAT_VERSION}); upgrade clipsr")
    config = ModelConfig.from_json(meta.get("config", ""), source=str(path))
    return config, state, meta


def load_checkpoint(path: str | os.PathLike, *, clip=None, device: str | torch.device = "cpu"):
    """Build the generator of a checkpoint with its weights (fp32), attach ``clip``.

    For text-conditioned checkpoints with ``clip=None`` the CLIP named in the config is loaded.
    """
    from clipsr_cli.model.network import build_model

    config, state, meta = read_checkpoint(path)
    model = build_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{path}: weights do not match the model config ({first}); the file "
                         "is damaged or was written by an incompatible clipsr") from None
    model.eval().requires_grad_(False)
    if config.text_conditioned:
        if clip is None:
            from clipsr_cli.model.clip import load_clip

            clip = load_clip(config.clip, device=device)
        model.attach_clip(clip)
    model.checkpoint_meta = meta
    return model.to(device)
