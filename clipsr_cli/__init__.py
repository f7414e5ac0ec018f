"""clipsr: text-guided image super-resolution (CLIP-SR).

The public API is small: :class:`Upscaler` (load a model once, upscale images or tensors),
:class:`ModelConfig` / :class:`ModelInfo` (what a model is), the named errors, ``__version__``.
Task functions behind the commands live in ``clipsr_cli.tasks``; notes and warnings go to the
``logging`` logger ``"clipsr"``.
"""

from __future__ import annotations

from clipsr_cli.errors import (ClipsrError, DataError, DeviceError, DownloadError, InputError,
                               ModelError, OutputExistsError, TrainingError, UsageError)
from clipsr_cli.model.config import ModelConfig, ModelInfo

__version__ = "0.1.0"
__all__ = ["Upscaler", "ModelConfig", "ModelInfo", "ClipsrError", "UsageError", "InputError",
           "OutputExistsError", "ModelError", "DeviceError", "DownloadError", "DataError",
           "TrainingError", "__version__"]


def __getattr__(name: str):
    # the engine imports torch: keep `import clipsr_cli` (and `clipsr --help`) fast
    if name == "Upscaler":
        from clipsr_cli.infer.engine import Upscaler

        return Upscaler
    raise AttributeError(f"module 'clipsr_cli' has no attribute {name!r}")
