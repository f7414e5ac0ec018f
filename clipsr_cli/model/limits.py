"""Limits decided before anything is allocated: the ranges a model config may take, and a
checkpoint's tensors (names, shapes and dtypes, read from its safetensors header) checked
against what its config builds.

A checkpoint is untrusted input: its JSON config decides how large a network is built, and its
header decides what tensors are loaded into it. ``encoder_widths = [20000] * 3`` or
``body_blocks = 10**7`` would allocate without bound, and an int16 tensor would be copied into a
float weight as garbage. :func:`checked_config` refuses all of these with one ``ModelError``
line, building the expected network only on PyTorch's ``meta`` device (no memory, no RNG use).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from clipsr_cli.errors import ModelError
from clipsr_cli.model.config import SCALES, ModelConfig
from clipsr_cli.model.network import CLIPSR

__all__ = ["FLOAT_DTYPES", "MAX_PARAMETERS", "MAX_WEIGHTS_BYTES", "RANGES", "BuildBudget",
           "check_archive", "check_config", "check_parameters", "check_tensors", "checked_config",
           "expected_tensors"]

#: Inclusive ranges of the integer fields (widths: of every entry). Far beyond every trained
#: model (the built-in ones use widths <= 192, blocks <= 4), far below what exhausts memory.
RANGES: dict[str, tuple[int, int]] = {
    "encoder_widths": (1, 1024),
    "up_widths": (1, 1024),
    "stage_blocks": (0, 64),
    "body_blocks": (0, 64),
    "text_dim": (0, 4096),
    "clip_width": (0, 4096),
    "clip_image_size": (1, 4096),
    "prompt_tokens": (0, 64),
    "clip_view": (1, 4096),
}
#: Most entries of ``encoder_widths`` (pyramid levels) and ``up_widths``.
_MAX_LEVELS = {"encoder_widths": 8, "up_widths": 8}
_MAX_CLIP_SPEC = 256  # characters

#: safetensors dtypes accepted for a floating-point parameter (loaded as float32).
FLOAT_DTYPES = ("F32", "F16", "BF16")
_TORCH_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(config: ModelConfig, *, source: str = "config") -> ModelConfig:
    """Refuse (``ModelError``) a config whose values are of the wrong type or outside
    :data:`RANGES`; return it unchanged otherwise."""

    def bad(what: str) -> ModelError:
        return ModelError(f"{source}: invalid model config: {what}; the file is damaged or was "
                          "not written by clipsr")

    if not _is_int(config.scale) or config.scale not in SCALES:
        raise bad(f"scale must be one of {SCALES}, got {config.scale!r}")
    for name, (lo, hi) in RANGES.items():
        value = getattr(config, name)
        if name in _MAX_LEVELS:
            if not isinstance(value, tuple) or not 1 <= len(value) <= _MAX_LEVELS[name]:
                raise bad(f"{name} must be a list of 1 to {_MAX_LEVELS[name]} widths")
            entries = value
        else:
            entries = (value,)
        for v in entries:
            if not _is_int(v) or not lo <= v <= hi:
                raise bad(f"{name} must be {'widths' if name in _MAX_LEVELS else 'an integer'} "
                          f"from {lo} to {hi}, got {_short(value)}")
    if config.clip is not None and (not isinstance(config.clip, str)
                                    or not 0 < len(config.clip) <= _MAX_CLIP_SPEC):
        raise bad(f"clip must be a CLIP spec string or null, got {_short(config.clip)}")
    for switch in ("fu_fusion", "fu_film", "tif_text"):
        if not isinstance(getattr(config, switch), bool):
            raise bad(f"{switch} must be true or false, got {_short(getattr(config, switch))}")
    slope = config.negative_slope
    if not isinstance(slope, (int, float)) or isinstance(slope, bool) or not (
            math.isfinite(slope) and 0 <= slope <= 1):
        raise bad(f"negative_slope must be a number from 0 to 1, got {_short(slope)}")
    return config


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of the generator's ``state_dict`` for ``config``, built on the
    ``meta`` device: nothing is allocated and the random generator is not used. Call
    :func:`check_config` first (the build itself takes time in proportion to the blocks)."""
    with torch.device("meta"):
        model = CLIPSR(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_tensors(config: ModelConfig, tensors: Mapping[str, Mapping[str, Any]], *,
                  source: str = "checkpoint") -> None:
    """Compare a checkpoint's tensors as its safetensors header describes them (``{name:
    {"dtype": "F16", "shape": [...]}}``, current parameter names) with what ``config`` builds:
    the same names, the same shapes, and a float dtype (:data:`FLOAT_DTYPES`) for each float
    parameter. Raises ``ModelError`` naming the first difference."""
    expected = expected_tensors(config)

    def mismatch(what: str) -> ModelError:
        return ModelError(f"{source}: weights do not match the model config ({what}); the file "
                          "is damaged or was written by an incompatible clipsr")

    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise mismatch(", ".join(parts))
    for name, (shape, dtype) in expected.items():
        entry = tensors[name]
        got_shape, got_dtype = tuple(entry.get("shape", ())), entry.get("dtype")
        if got_shape != shape:
            raise mismatch(f"{name} has shape {list(got_shape)}, the config needs {list(shape)}")
        allowed = (FLOAT_DTYPES if dtype.is_floating_point
                   else (_TORCH_DTYPE.get(dtype, str(dtype)),))
        if got_dtype not in allowed:
            raise mismatch(f"{name} is stored as {got_dtype}; it needs {' or '.join(allowed)}")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def checked_config(config_json: str, tensors: Mapping[str, Mapping[str, Any]], *,
                   source: str = "checkpoint") -> ModelConfig:
    """The config of a checkpoint, once it is safe to build and its tensors fit it: parse
    ``config_json``, :func:`check_config`, then :func:`check_tensors` against the header's
    ``tensors`` (already renamed to the current parameter names). Raises ``ModelError``."""
    if not isinstance(config_json, str):
        raise ModelError(f"{source}: model config must be a JSON string; the file is damaged or "
                         "was not written by clipsr")
    try:
        config = ModelConfig.from_json(config_json, source=source)
    except RecursionError:  # JSON nested thousands deep
        raise ModelError(f"{source}: model config is not valid JSON (nested too deeply)") from None
    check_config(config, source=source)
    check_tensors(config, tensors, source=source)
    return config



# -- third-party weights -------------------------------------------------------------------------
#: Most parameters a third-party network may have (800 MB in float32). The largest published SR
#: networks have under 50 M (HAT-L 41 M); a crafted state dict can make spandrel build far more.
MAX_PARAMETERS = 200_000_000
#: Most bytes a weights file may hold once read (its declared, uncompressed size): the tensors
#: of a :data:`MAX_PARAMETERS` network with an EMA copy and an optimizer's two moments.
MAX_WEIGHTS_BYTES = 4 * 4 * MAX_PARAMETERS

_FACTORIES = frozenset({"empty", "zeros", "ones", "rand", "randn", "full", "empty_strided",
                        "empty_like", "zeros_like", "ones_like", "rand_like", "randn_like",
                        "full_like", "new_empty", "new_zeros", "new_ones", "new_full", "eye"})


def _requested_bytes(name: str, args: tuple, kwargs: dict) -> int:
    """Bytes a factory call would allocate (0 when its size cannot be told: not judged)."""
    dtype = kwargs.get("dtype")
    if name.endswith("_like") and args and isinstance(args[0], torch.Tensor):
        return args[0].numel() * (dtype or args[0].dtype).itemsize
    if name.startswith("new_") and args:
        args = args[1:]  # the tensor itself
    size = kwargs.get("size")
    if size is None:
        if name == "eye" and args:
            size = (args[0], args[1] if len(args) > 1 and _is_int(args[1]) else args[0])
        elif args and isinstance(args[0], (tuple, list, torch.Size)):
            size = args[0]
        else:
            size = tuple(a for a in args if _is_int(a))
            if name == "full":
                size = size[:-1] if size and _is_int(args[-1]) else size
    try:
        n = math.prod(int(d) for d in size)
    except (TypeError, ValueError):
        return 0
    return max(0, n) * (dtype or torch.get_default_dtype()).itemsize


class BuildBudget(torch.overrides.TorchFunctionMode):
    """Within ``with BuildBudget(limit, source):`` every tensor factory call (``torch.empty``,
    ``zeros``, ``Tensor.new_empty``, …: how modules allocate their parameters) is judged
    *before* it allocates: once the requested bytes add up to more than ``limit``, ModelError.
    A network that a crafted state dict makes huge is thus refused without allocating it."""

    def __init__(self, limit: int, source: str):
        super().__init__()
        self.limit, self.source, self.total = limit, source, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _FACTORIES and kwargs.get("device") != torch.device("meta"):
            self.total += _requested_bytes(name, tuple(args), kwargs)
            if self.total > self.limit:
                raise ModelError(
                    f"{self.source}: the network these weights describe needs more than "
                    f"{self.limit / 2**30:.1f} GiB of parameters (over {MAX_PARAMETERS / 1e6:.0f} M; "
                    "a real SR model has under 50 M); the file is damaged or crafted: do not "
                    "use it")
        return func(*args, **kwargs)


def check_parameters(count: int, source: str) -> None:
    """Refuse (ModelError) a built network of more than :data:`MAX_PARAMETERS` parameters."""
    if count > MAX_PARAMETERS:
        raise ModelError(f"{source}: {count / 1e6:.0f} M parameters, more than the limit of "
                         f"{MAX_PARAMETERS / 1e6:.0f} M for a super-resolution network; the "
                         "file is damaged or crafted: do not use it")


def check_archive(path, source: str) -> None:
    """Judge a ``torch.save`` zip archive by the sizes its directory declares, before a byte is
    inflated: more than :data:`MAX_WEIGHTS_BYTES` in all (a 5 MB "zip bomb" that inflates to
    GiBs) is a ModelError. Not a zip (the legacy format): nothing to judge here (its size is)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            total = sum(max(0, i.file_size) for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    if total > MAX_WEIGHTS_BYTES:
        raise ModelError(f"{source} declares {total / 2**30:.1f} GiB of data once unpacked, more "
                         f"than the {MAX_WEIGHTS_BYTES / 2**30:.1f} GiB a weights file may hold; "
                         "the file is damaged or crafted: do not use it")
