"""clipsr: text-guided image super-resolution (CLIP-SR)."""

from __future__ import annotations

from clipsr_cli.model.config import ModelConfig
from clipsr_cli.errors import ClipsrError

__version__ = "0.1.0"
__all__ = ["Upscaler", "ModelConfig", "ClipsrError", "__version__"]


def __getattr__(name: str):
    # the engine imports torch: keep `import clipsr_cli` (and `clipsr --help`) fast
    if name == "Upscaler":
        from clipsr_cli.infer.engine import Upscaler

        return Upscaler
    raise AttributeError(f"module 'clipsr_cli' has no attribute {name!r}")
