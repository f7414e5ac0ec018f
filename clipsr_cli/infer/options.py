"""How a model runs: one frozen value, validated once, passed whole from the CLI to the engine.

``EngineOptions`` is built once per command (``clipsr_cli.cli.options.engine_options``) or by a
library user, and handed to :meth:`clipsr_cli.infer.engine.Upscaler.load` and to every task
(``upscale_file``, ``run_batch``, ``edit_file``, ``compare``, ``upscale_video``). Every value is
checked in ``__post_init__`` without torch (``UsageError``, exit status 2 in the CLI), so a wrong
flag is answered before any model loads; whether a named device exists *here* is judged when the
engine resolves it (:func:`clipsr_cli.infer.devices.resolve_device`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from clipsr_cli.errors import UsageError
from clipsr_cli.infer.degradation import Degradation
from clipsr_cli.infer.values import check_device, check_precision, parse_tiling

__all__ = ["EngineOptions"]


#: Most images per forward pass (``batch_size``): far above what fits a GPU at useful sizes;
#: the read-ahead queue holds twice as many decoded images (and planning is per size).
MAX_BATCH_SIZE = 256


def _whole(value: object, name: str, minimum: int, maximum: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        which = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise UsageError(f"`{name}` must be a whole number {which}, not {value!r}", param=name)
    return value


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a model (every field has the CLI's default)."""

    device: str = "auto"
    """``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    precision: str = "auto"
    """``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :func:`~clipsr_cli.infer.devices.resolve_precision`)."""
    tile: int | Literal["auto"] = "auto"
    """LR tile side: ``auto`` (from the memory budget), 0 (no tiling) or a size; a string is parsed."""
    tile_overlap: int | None = None
    """LR pixels of overlap between tiles; None: the model's hint."""
    passes: int = 1
    """How many times the model runs (×s^passes)."""
    batch_size: int = 1
    """Images of one size that may go through the network together (batch)."""
    memory: int | None = None
    """Bytes of free memory to plan tiles and outputs with; None: measured on the device when
    needed (tests and constrained jobs set it instead of patching the measurement)."""
    degradation: Degradation = field(default_factory=Degradation)
    """How degraded inputs are treated (``--degradation`` / ``--denoise``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "precision", check_precision(self.precision))
        tile, overlap = parse_tiling(self.tile, self.tile_overlap)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "tile_overlap", overlap)
        _whole(self.passes, "passes", 1)
        _whole(self.batch_size, "batch_size", 1, MAX_BATCH_SIZE)
        if self.memory is not None:
            _whole(self.memory, "memory", 1)
        if not isinstance(self.degradation, Degradation):
            raise UsageError(f"`degradation` must be a Degradation, not {self.degradation!r}",
                             param="degradation")

    def replace(self, **changes) -> "EngineOptions":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)
