"""Third-party super-resolution checkpoints (Real-ESRGAN, SwinIR, HAT, DAT, SPAN, OmniSR, …) as
models of clipsr's engine, recognised by `spandrel <https://github.com/chaiNNer-org/spandrel>`_.

This is the only module that imports spandrel. A file is read without ever running code from
it: ``.safetensors`` through safetensors, ``.pth``/``.pt``/``.ckpt``/``.bin`` only through
``torch.load(weights_only=True)`` (a file that needs a full unpickle is refused; spandrel's own
file loader is not used). The usual containers (``params_ema``, ``params``, ``state_dict``,
``model``, ``net_g``, …, a ``module.`` prefix) are unwrapped, then spandrel detects the
architecture from the tensor names and shapes and builds it.

Only single-image super-resolution models are accepted: spandrel's ``ImageModelDescriptor`` with
purpose ``SR``, RGB → RGB or grayscale → grayscale (a grayscale model upscales R, G and B as
three images). :class:`ForeignModel` gives the engine the interface it runs (``info``,
``condition``, ``forward(lr, cond, offset)``, ``bytes_per_lr_pixel``), image-only.

Tile overlap (``info.tile_overlap``, LR pixels; the engine's tiler keeps ``overlap / 2`` pixels of
context on each inner side of a tile):

* pure local convnets (:data:`LOCAL_CONVNETS`: ESRGAN/RRDBNet, Real-ESRGAN Compact, SPAN,
  SwiftSRGAN): twice the receptive-field radius, bounded by the sum of the radii of all their
  convolutions, rounded up to ``pad_multiple``, capped at :data:`MAX_OVERLAP` — exact for
  Compact (its convolutions are one chain);
* every other family (window attention: SwinIR, Swin2SR, HAT, DAT, DRCT, ATD, OmniSR, …; global
  or pooled features: SAFMN, RCAN, …): :data:`MAX_OVERLAP`, 32 px of context each side (three
  times Real-ESRGAN's own ``tile_pad=10``).

``pad_multiple`` is spandrel's ``size_requirements.multiple_of``, made a multiple of the window
size for window-attention models so every tile's windows lie on the image's window grid.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import ModelError, is_out_of_memory, summary
from clipsr_cli.io.files import check_regular
from clipsr_cli.model.config import ModelInfo
from clipsr_cli.model.limits import (MAX_PARAMETERS, MAX_WEIGHTS_BYTES, BuildBudget, check_archive,
                                     check_parameters)
from clipsr_cli.model.prompt import Conditioning

__all__ = ["ForeignModel", "ForeignSpec", "load_foreign", "read_state_dict", "LOCAL_CONVNETS",
           "MAX_OVERLAP"]

#: spandrel architecture ids whose receptive field is bounded by their convolutions.
LOCAL_CONVNETS = frozenset({"ESRGAN", "Compact", "SPAN", "SwiftSRGAN"})
#: Largest default tile overlap in LR pixels (the built-in models' cap too).
MAX_OVERLAP = 64
#: Containers a training framework wraps a generator's state dict in (first match wins).
_CONTAINERS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "net_g",
               "netG", "generator", "model", "net")
_INSTALL = "pip install 'spandrel>=0.4,<0.5' (a clipsr dependency)"


@dataclass(frozen=True)
class ForeignSpec:
    """What spandrel says about a third-party model (shown by ``clipsr inspect``)."""

    architecture: str
    """spandrel's name for the architecture (``RealESRGAN Compact``, ``SwinIR``, …)."""
    arch_id: str
    purpose: str
    tags: tuple[str, ...]
    input_channels: int
    output_channels: int
    size_multiple: int
    size_minimum: int
    square: bool
    tiling: str
    """spandrel's tiling advice: ``supported``, ``discouraged`` or ``internal``."""
    window_size: int | None
    source: str
    """The file it was read from."""


def read_state_dict(path: str | os.PathLike, format: str) -> dict[str, torch.Tensor]:
    """The tensors of a third-party weights file in ``format`` (``safetensors`` or ``torch``:
    told by :mod:`clipsr_cli.hub.resolve`), unwrapped from its container, on the CPU.

    Never runs code from the file: a pickle that needs more than tensors and plain containers is
    refused (``ModelError``), as are TorchScript archives.
    """
    p = Path(path)
    try:
        size = check_regular(p, what="model file", error=ModelError)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {p}; check the path") from None
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e.strerror or e}; check the file") from None
    if size == 0:
        raise ModelError(f"{p} is empty (0 bytes); re-download it")
    if size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"{p} is {size / 2**30:.1f} GiB, more than the "
                         f"{MAX_WEIGHTS_BYTES / 2**30:.1f} GiB a weights file may hold; check that "
                         "it is a super-resolution model")
    if format == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{p} is not a valid safetensors file ({e}); re-download it") from None
    elif format == "torch":
        check_archive(p, str(p))  # the zip's declared sizes, before anything is inflated
        raw = _torch_load(p)
    else:
        raise ValueError(f"unknown weights format {format!r}")
    state = _unwrap(raw, p)
    if not state:
        raise ModelError(f"{p} holds no tensors: it is not a model's weights")
    return state


def _torch_load(p: Path):
    try:
        with warnings.catch_warnings():  # "looks like a TorchScript archive": refused below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(f"refusing to load {p}: it stores Python objects besides tensors, and "
                         "reading them would need a full unpickle, which can run arbitrary code "
                         f"({summary(e)}); convert it to .safetensors with a tool you trust"
                         ) from None
    except (RuntimeError, MemoryError) as e:
        if is_out_of_memory(e):
            raise ModelError(f"not enough memory to read {p}; close other programs, or check "
                             "that it is a super-resolution model's weights") from None
        if "TorchScript" in str(e):
            raise ModelError(f"refusing to load {p}: it is a TorchScript archive (code, not just "
                             "weights); use the model's .pth or .safetensors weights") from None
        raise ModelError(f"{p} is not a readable PyTorch weights file "
                         f"({summary(e)}); re-download it") from None
    except (EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(f"{p} is not a readable PyTorch weights file ({summary(e)}); "
                         "re-download it") from None


def _unwrap(raw, p: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise ModelError(f"{p} holds a {type(raw).__name__}, not a state dict of tensors")
    for _ in range(3):  # nested containers, e.g. {"state_dict": {"params_ema": ...}}
        inner = next((raw[k] for k in _CONTAINERS if isinstance(raw.get(k), dict)), None)
        if inner is None and len(raw) == 1 and isinstance(next(iter(raw.values())), dict):
            inner = next(iter(raw.values()))
        if inner is None:
            break
        raw = inner
    state = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "netG.", "generator."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _spandrel():
    try:
        import spandrel
    except ImportError:
        raise ModelError(f"third-party model files need spandrel: {_INSTALL}") from None
    return spandrel


def load_foreign(path: str | os.PathLike, *, format: str,
                 device: str | torch.device = "cpu") -> "ForeignModel":
    """Read a third-party SR checkpoint safely (``format``: see :func:`read_state_dict`) and
    build it (fp32, eval mode) on ``device``.

    Raises ``ModelError``: unreadable or unsafe file, unknown architecture, or a model that is no
    single-image super-resolution model (named with its architecture).
    """
    p = Path(path)
    state = read_state_dict(p, format)
    spandrel = _spandrel()
    try:
        with warnings.catch_warnings():  # e.g. torch.meshgrid's indexing note inside SwinIR
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            with BuildBudget(4 * MAX_PARAMETERS, str(p)):  # judged before each allocation
                desc = spandrel.MAIN_REGISTRY.load(state)
    except spandrel.UnsupportedModelError:
        raise ModelError(f"{p}: no architecture clipsr knows matches these weights (neither a "
                         f"clipsr checkpoint nor one of spandrel {spandrel.__version__}'s "
                         "architectures); see 'clipsr inspect --help'") from None
    except (KeyError, RuntimeError, ValueError, AssertionError, TypeError, IndexError) as e:
        raise ModelError(f"{p}: the weights look like a known architecture but do not load "
                         f"({summary(e)}); the file is damaged or a variant spandrel does not "
                         "support") from None
    name = desc.architecture.name
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise ModelError(f"{p} is a {name} model ({desc.purpose}), not a super-resolution model; "
                         "clipsr runs only single-image upscalers")
    if desc.purpose != "SR" or desc.scale < 2:
        what = {"FaceSR": "a face restoration model", "Restoration": "a ×1 restoration model"}
        raise ModelError(f"{p} is {what.get(desc.purpose, desc.purpose)} ({name}), not a "
                         "super-resolution model; clipsr runs only single-image upscalers")
    if (desc.input_channels, desc.output_channels) not in ((3, 3), (1, 1)):
        raise ModelError(f"{p} is a {name} model with {desc.input_channels} input and "
                         f"{desc.output_channels} output channels; clipsr runs RGB → RGB or "
                         "grayscale → grayscale models")
    check_parameters(sum(t.numel() for t in desc.model.parameters()), str(p))
    model = ForeignModel(desc, source=str(p))
    return model.to(device)


def _window_size(net: nn.Module) -> int | None:
    ws = getattr(net, "window_size", None)
    if isinstance(ws, (tuple, list)) and ws and all(isinstance(v, int) for v in ws):
        ws = max(ws)
    return ws if isinstance(ws, int) and not isinstance(ws, bool) and ws > 1 else None


def _conv_radius(net: nn.Module) -> int:
    """An upper bound of the receptive-field radius in LR pixels: every convolution counted as
    if they were one chain at LR resolution."""
    r = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            k, d = m.kernel_size, m.dilation
            r += max((k[0] - 1) * d[0], (k[1] - 1) * d[1]) // 2
    return r


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class ForeignModel(nn.Module):
    """A third-party SR network with the engine's interface; image-only.

    ``forward(lr, cond, offset)`` takes (B, 3, h, w) in [0, 1] and returns (B, 3, s·h, s·w), not
    clamped; it pads a tile that is below the model's minimum size itself.
    """

    text_conditioned = False
    clip = None

    def __init__(self, descriptor, *, source: str = ""):
        super().__init__()
        self.net = descriptor.model
        self._call = descriptor._call_fn  # spandrel's per-architecture call (e.g. tuple outputs)
        req = descriptor.size_requirements
        self._req = req
        ws = _window_size(self.net)
        self.spec = ForeignSpec(
            architecture=descriptor.architecture.name, arch_id=str(descriptor.architecture.id),
            purpose=descriptor.purpose, tags=tuple(descriptor.tags),
            input_channels=descriptor.input_channels, output_channels=descriptor.output_channels,
            size_multiple=req.multiple_of, size_minimum=req.minimum, square=req.square,
            tiling=descriptor.tiling.name.lower(), window_size=ws, source=source)
        multiple = req.multiple_of if ws is None else math.lcm(req.multiple_of, ws)
        if self.spec.arch_id in LOCAL_CONVNETS:
            overlap = min(_round_up(2 * _conv_radius(self.net), multiple), _round_up(MAX_OVERLAP,
                                                                                     multiple))
        else:
            overlap = _round_up(MAX_OVERLAP, multiple)
        precisions = ("fp32",) + (("bf16",) if descriptor.supports_bfloat16 else ()) + \
            (("fp16",) if descriptor.supports_half else ())
        self._width = max((m.out_channels for m in self.net.modules()
                           if isinstance(m, nn.Conv2d)), default=64)
        self._info = ModelInfo(scale=int(descriptor.scale), text_conditioned=False, clip=None,
                               pad_multiple=multiple, tile_overlap=overlap, precisions=precisions,
                               parameters=sum(p.numel() for p in self.net.parameters()))
        self.checkpoint_meta: dict[str, str] = {}
        self.eval().requires_grad_(False)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    def bytes_per_lr_pixel(self, elem_size: int = 4) -> int:
        """Rough peak activation memory per LR pixel (for choosing tile sizes): the widest
        convolution's features a few times over at LR and at HR resolution, more for attention
        models, plus the float32 output and blend buffers."""
        s, c = self.info.scale, self._width
        lr_copies = 8 if self.spec.arch_id in LOCAL_CONVNETS else 32
        return elem_size * c * (lr_copies + 2 * s * s) + 3 * s * s * 4 * 3

    def text_embedding(self, texts=None, batch: int = 1) -> None:
        return None

    def condition(self, lr_full: torch.Tensor, text_emb: torch.Tensor | None = None,
                  *, null_mask: torch.Tensor | None = None) -> Conditioning:
        """No text, no CLIP: the conditioning only records the image size."""
        h, w = lr_full.shape[-2:]
        return Conditioning(None, None, (int(h), int(w)))

    def forward(self, lr: torch.Tensor, cond: Conditioning | None = None,
                offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        b, _, h, w = lr.shape
        s = self.info.scale
        pw, ph = self._req.get_padding(w, h)
        x = F.pad(lr, (0, pw, 0, ph), mode="replicate") if pw or ph else lr
        gray = self.spec.input_channels == 1
        if gray:  # R, G and B as three grayscale images
            x = x.reshape(b * 3, 1, *x.shape[-2:])
        y = self._call(self.net, x)
        if gray:
            y = y.reshape(b, 3, *y.shape[-2:])
        return y[..., :h * s, :w * s]
