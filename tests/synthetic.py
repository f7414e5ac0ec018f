"""A synthetic captioned dataset where the caption carries what the LR image cannot show.

Each image is a smooth colour field (visible at any scale) plus a fine zero-mean texture of
period ``period`` HR pixels: horizontal stripes, vertical stripes or a checkerboard. At x8 the
period (4 px) is far below what the LR can resolve (the LR pixel is 8 HR px wide), so the three
textures give (almost) the same LR image; only the caption says which one the HR has. The phase
is fixed in image coordinates and training crops are aligned to the LR grid (multiples of the
scale, a multiple of the period), so a model that knows the texture can reproduce it exactly.

Used by the test proving that the text path learns (tests/test_train_text.py), and by other
tests that need a small text-conditioned model: ``tests/conftest.py`` trains one per session
(``stripes_text_model``, settings ``SHARED_TRAINING``) for both test_train_text.py and test_edit.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("horizontal stripes", "vertical stripes", "a checkerboard")


def texture(kind: str, size: int, period: int = 4) -> np.ndarray:
    """A (size, size) zero-mean ±1 pattern of the given kind.

    The wave is + - - + (period 4): symmetric about every crop edge that falls on a multiple of
    the period, so the mirrored borders of ``imresize`` continue the pattern and the LR of the
    texture is exactly flat (a + + - - phase would leak ±7 grey levels into the border LR pixels,
    a cue an image-only model could learn)."""
    idx = np.arange(size)
    wave = np.where(((idx + period // 4) % period) < period // 2, 1.0, -1.0)
    if kind == KINDS[0]:
        return np.repeat(wave[:, None], size, axis=1)
    if kind == KINDS[1]:
        return np.repeat(wave[None, :], size, axis=0)
    if kind == KINDS[2]:
        return wave[:, None] * wave[None, :]
    raise ValueError(f"unknown texture {kind!r}; use one of {KINDS}")


@dataclass(frozen=True)
class SyntheticSample:
    path: Path
    captions: tuple[str, ...]


class StripesSource:
    """An in-memory image source (``len``, ``[i]``, ``load(i) -> (PIL RGB, captions)``)."""

    def __init__(self, images: list[np.ndarray], kinds: list[str]):
        self.images, self.kinds = images, kinds

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> SyntheticSample:
        return SyntheticSample(Path(f"synthetic_{i:04d}.png"), (self.kinds[i],))

    def load(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i], "RGB"), (self.kinds[i],)

    def tensor(self, i: int) -> torch.Tensor:
        """(1, 3, H, W) float in [0, 1]."""
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)[None].float() / 255

    def save(self, root: str | Path) -> Path:
        """Write the images as PNGs with sidecar captions (``folder`` format)."""
        from PIL import Image

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for i, (img, kind) in enumerate(zip(self.images, self.kinds)):
            Image.fromarray(img, "RGB").save(root / f"synthetic_{i:04d}.png")
            (root / f"synthetic_{i:04d}.txt").write_text(kind + "\n")
        return root


# The session's shared text model (tests/conftest.py ``stripes_text_model``) and the image-only
# model it is compared with: 200 steps of batch 8 on the 48 default images (all three kinds), fp32
# (bf16 autocast, what ``auto`` picks on a CPU, trains several times slower there), one thread:
# ~18 s for the text model on one core. Margins measured for seeds 0/1/2 (thresholds in the tests):
# true - wrong caption 32.9-34.2 dB, true - no caption 24.4-28.8 dB (test_train_text.py, both
# > 10; the network of issue #21: TIFBlocks + prompt tokens, docs/text-path.md); before issue #13 (measured then): `edit`
# orientation ratio 34-53 (> 5), LR consistency 49-55 dB (> 40), sweep step >= 0.106 (> 0.01)
# (test_edit.py; they pass for seed 0 now). 150 steps missed LR consistency (39.96 dB, seed 0).
SHARED_TRAINING = {"steps": 200, "batch_size": 8, "precision": "fp32", "log_every": 10 ** 9}


@contextmanager
def one_thread():
    """One intra-op thread: the models are tiny, and on 2 cores shared with other processes two
    spinning OpenMP threads per process measured ~10x slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def make_stripes_dataset(n: int = 48, *, size: int = 96, period: int = 4, amplitude: float = 0.2,
                         seed: int = 0, kinds: tuple[str, ...] = KINDS) -> StripesSource:
    """``n`` images of ``size``² px, the kinds in turn, each on its own smooth colour field."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        grid = torch.from_numpy(rng.uniform(0.3, 0.7, size=(1, 3, 3, 3))).float()
        base = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0]
        tex = torch.from_numpy(texture(kind, size, period)).float()
        img = (base + amplitude * tex).clamp(0, 1)
        images.append((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
        names.append(kind)
    return StripesSource(images, names)


def stripes_train_config(out: str | Path, *, text: bool = True, steps: int = 300, seed: int = 0,
                         batch_size: int = 16, lr: float = 3e-3, **run):
    """The ``TrainConfig`` of the tiny x8 model trained on the synthetic stripes data (CPU,
    seconds to minutes); ``run``: more ``[run]`` settings. Not a ``ModelConfig``: that is
    ``tests.conftest.tiny_model_config``."""
    from clipsr_cli.train.config import resolve_config

    flags = {
        "model": {"encoder_widths": (16, 24, 32), "body_blocks": 2, "up_widths": (16, 16, 16),
                  "prompt_tokens": 3},
        "data": {"scale": 8, "patch_size": 8, "batch_size": batch_size, "caption_dropout": 0.1,
                 "hflip": False, "vflip": False, "rot90": False},
        "optim": {"lr": lr, "warmup_steps": 20, "ema_decay": 0.99},
        "run": {"out": str(out), "steps": steps, "seed": seed, "device": "cpu",
                "clip": "clipsr-tiny:random" if text else "none", "log_every": 10,
                "val_every": 10 ** 9, "checkpoint_every": 10 ** 9, **run},
    }
    return resolve_config(preset="psnr", flags=flags)


def train_tiny_text_model(out: str | Path, *, text: bool = True, steps: int = 300, seed: int = 0,
                          source: StripesSource | None = None, show_progress: bool = False,
                          **run) -> Path:
    """Train the tiny x8 model (``clipsr-tiny:random`` CLIP, or image-only with ``text=False``)
    on ``make_stripes_dataset()``; returns the exported ``model.safetensors``.

    Flips are off (a transposed horizontal stripe is a vertical one: the caption would lie)."""
    from clipsr_cli.train.trainer import train

    cfg = stripes_train_config(out, text=text, steps=steps, seed=seed, **run)
    src = source if source is not None else make_stripes_dataset(seed=seed)
    return train(cfg, source=src, show_progress=show_progress).export


@torch.inference_mode()
def caption_psnr(model, source: StripesSource, caption_for) -> float:
    """Mean Y-PSNR (border = scale) of ``model`` over ``source`` where image i is given the
    caption ``caption_for(i, true_kind)`` (None: no caption)."""
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr

    s = model.config.scale
    vals = []
    for i in range(len(source)):
        hr = source.tensor(i)
        lr = degrade(hr, s)
        cap = caption_for(i, source.kinds[i])
        emb = model.text_embedding([cap]) if model.config.text_conditioned else None
        sr = model(lr, model.condition(lr, emb)).clamp(0, 1)
        vals.append(float(psnr(sr, hr, border=s).mean()))
    return float(np.mean(vals))
