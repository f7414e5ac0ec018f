"""The clipsr checkpoint: one ``.safetensors`` file.

Tensors: the generator's ``state_dict`` (CLIP is not copied in). Metadata (all strings):
``format`` = "clipsr", ``format_version`` = "4", ``config`` = the JSON ``ModelConfig``,
optional ``training`` = a JSON summary of how it was trained. Loading never unpickles.

Format versions: 1 named the generator's parameters after its flat layout (``head``, ``down``,
``stages``, ``lift``, ``body``, ``body_conv``, ``up``, ``up_blocks``, ``tail``, ``prompt``,
``fu_norm``, ``fu_proj``); 2 names them after the paper's parts (``encoder``, ``refinement``,
``upsampler``, ``prompt_predictor``, ``fu_projection``). ``read_checkpoint`` renames version-1
tensors with :data:`V1_RENAMES`. Version 3 changed the text path (prompt tokens stay in CLIP's
sequence from block 2 on, CLIP sees the image through fixed-density windows, F_U is read out by
cross-attention and joins every refinement level). Version 4 changed it again (issue #21: the
prompt predictor reads t scaled to unit rms, the F_U read-out is modulated by the prompt tokens'
outputs, the direct FiLM by t became the ``fu_film`` switch, off by default). Image-only
checkpoints of every version load unchanged (their networks did not change); text-conditioned
ones of versions 1–3 are refused with a message (their text path cannot be rebuilt; retrain
them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from clipsr_cli.errors import ModelError
from clipsr_cli.io.atomic import atomic_write_bytes
from clipsr_cli.io.files import check_regular, open_regular, read_regular
from clipsr_cli.model.clip import ClipBackbone, load_clip
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.header import FORMAT, read_header
from clipsr_cli.model.limits import checked_config
from clipsr_cli.model.network import CLIPSR, build_model

FORMAT_VERSION = 4
#: The first format whose text path this clipsr can rebuild; older text checkpoints are refused.
TEXT_FORMAT_VERSION = 4

#: Version-1 tensor-name prefixes → version-2 ones (parameter order is the same in both).
V1_RENAMES: tuple[tuple[str, str], ...] = (
    ("head.", "encoder.head."),
    ("down.", "encoder.down."),
    ("stages.", "refinement.stages."),
    ("lift.", "refinement.lift."),
    ("body.", "refinement.body."),
    ("body_conv.", "refinement.body_conv."),
    ("up.", "upsampler.convs."),
    ("up_blocks.", "upsampler.blocks."),
    ("tail.", "upsampler.out."),
    ("prompt.", "prompt_predictor."),
    ("fu_norm.", "fu_projection.norm."),
    ("fu_proj.", "fu_projection.proj."),
)


def rename_keys(state: dict[str, torch.Tensor], renames=V1_RENAMES, *,
                reverse: bool = False) -> dict[str, torch.Tensor]:
    """Rename tensors by the first matching prefix of ``renames`` (old → new; new → old with
    ``reverse``); names no prefix matches (``null_text``) are kept."""
    rules = [(b, a) if reverse else (a, b) for a, b in renames]
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: ModelConfig, *,
                    training: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Save generator weights + config atomically. ``dtype`` (e.g. fp16) narrows float tensors."""
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
    """Read and validate a checkpoint: (config, state_dict with the current parameter names,
    metadata as stored). The header is judged before any tensor is read: the config's ranges and
    every tensor's name, shape and dtype (:func:`~clipsr_cli.model.limits.checked_config`).
    Raises ``ModelError``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}; check the path")
    check_regular(path, what="checkpoint", error=ModelError)  # a folder, device or FIFO: said so
    head, tensors, meta = read_header(path)
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is a safetensors file but not a clipsr checkpoint (no clipsr "
                         "metadata); use a checkpoint written by 'clipsr train'")
    version = meta.get("format_version", "0")
    if not (version.isascii() and version.isdigit()):
        raise ModelError(f"{path} has checkpoint format {version[:20]!r}, not a number; the file "
                         "is damaged or was not written by clipsr")
    version = int(version)
    if version > FORMAT_VERSION:
        raise ModelError(f"{path} has checkpoint format {version}, newer than this clipsr "
                         f"understands ({FORMAT_VERSION}); upgrade clipsr")
    if version < TEXT_FORMAT_VERSION and _names_a_clip(meta.get("config")):
        raise ModelError(f"{path} is a text-conditioned model of checkpoint format {version}: its "
                         f"text path (prompt tokens, CLIP view, F_U read-out) changed in format "
                         f"{TEXT_FORMAT_VERSION} and cannot be rebuilt; retrain it with this "
                         "clipsr (image-only models of every format still load)")
    config = checked_config(meta.get("config", ""), rename_keys(tensors) if version < 2
                            else tensors, source=str(path))
    try:
        end = max((e["data_offsets"][1] for e in tensors.values()), default=0)
        data = read_regular(path, max_bytes=len(head) + end, what="checkpoint", error=ModelError,
                            hint="; the file has data after its last tensor: re-download or "
                                 "re-export it")
        if not data.startswith(head):
            raise ModelError(f"{path} changed while it was read; read it again")
        state = load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise ModelError(f"{path} is not a valid safetensors file ({e}); re-download or "
                         "re-export it") from None
    if version < 2:
        state = rename_keys(state)
    return config, state, meta


def _names_a_clip(config_json: object) -> bool:
    """Whether a stored config is text-conditioned (names a CLIP); False when unreadable (the
    config check then says why)."""
    try:
        data = json.loads(config_json) if isinstance(config_json, str) else None
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("clip") is not None


ClipLoader = Callable[[str, torch.device | str], ClipBackbone]


def load_checkpoint(path: str | os.PathLike, *, clip: ClipBackbone | ClipLoader | None = None,
                    device: str | torch.device = "cpu") -> CLIPSR:
    """Build the generator of a checkpoint with its weights (fp32) and attach its CLIP.

    ``clip``: for a text-conditioned checkpoint, the CLIP backbone, or a loader called as
    ``clip(config.clip, device)`` (``clipsr_cli.infer.engine.load_clip_backbone`` resolves
    registered weights through the model registry). None: :func:`~clipsr_cli.model.clip.load_clip`
    of the spec as it stands (random weights, a file, or an open_clip pretrained tag).
    """
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
            clip = load_clip
        if not isinstance(clip, torch.nn.Module):  # a loader
            clip = clip(config.clip, device)
        model.attach_clip(clip)
    model.checkpoint_meta = meta
    return model.to(device)
