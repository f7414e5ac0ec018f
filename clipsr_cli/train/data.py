"""Training pairs: HR patches (random crop, flips) and their LR made by ``degrade`` on the device.

Two samplers share one interface (``next_batch() -> Batch``):

* ``MemorySampler`` decodes every image once into uint8 tensors (on the training device), then
  draws crops, flips, captions and caption dropout from one ``torch.Generator`` per process, so
  a run is reproducible and resumes exactly (the generator's state is checkpointed).
* ``StreamSampler`` reads images from disk in DataLoader workers (large datasets); workers return
  uint8 HR crops, the device does flips and degradation.

Crops are aligned to the LR pixel grid of the whole image (offsets are multiples of the scale),
so an LR patch is exactly the downscaled full image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from clipsr_cli.data.source import image_name
from clipsr_cli.errors import DataError, log


@dataclass
class Batch:
    hr: torch.Tensor
    """(B, 3, P·s, P·s) float in [0, 1] on the device."""
    lr: torch.Tensor
    """(B, 3, P, P) float in [0, 1] on the device (8-bit quantised)."""
    captions: list[str | None]
    """One caption per sample (None: the image has none)."""
    drop: torch.Tensor
    """(B,) bool on the device: train this sample without its caption."""


class ImageSourceLike(Protocol):
    def __len__(self) -> int: ...

    def load(self, i: int): ...


# -- degradation ----------------------------------------------------------------------------------
class Degrader:
    """HR (B,3,H,W) float [0,1] -> LR by ``clipsr_cli.data.degrade.degrade`` (antialiased MATLAB
    bicubic, quantised to 8 bits; ``extra``: DegradeOptions.extra() blur/noise/JPEG).

    For the plain bicubic case the two resampling matrices of a patch size are cached on the
    device (the same matrices and order as ``imresize``'s dense path, so the result is
    identical), which keeps the training step free of host-to-device copies and syncs."""

    def __init__(self, scale: int, *, kind: str = "bicubic"):
        self.scale, self.kind = scale, kind
        self._mats: dict = {}

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from clipsr_cli.data.degrade import DegradeOptions, degrade, degrade_practical, quantize_8bit

        s = self.scale
        h, w = hr.shape[-2:]
        if self.kind == "practical":
            return degrade_practical(hr, s, generator=generator)
        if self.kind == "extra" or s == 1 or h % s or w % s:
            options = DegradeOptions.extra() if self.kind == "extra" else None
            return degrade(hr, s, quantize=True, options=options, generator=generator)
        key = (h, w, hr.device, hr.dtype)
        mats = self._mats.get(key)
        if mats is None:
            mats = (_matrix(h, h // s, hr), _matrix(w, w // s, hr))
            self._mats[key] = mats
        mh, mw = mats
        lr = (mh @ hr) @ mw.T
        return quantize_8bit(lr.clamp(0, 1))


def _matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    from clipsr_cli.data.degrade import resize_matrix

    m = resize_matrix(n_in, n_out, n_out / n_in)
    return m.to(device=like.device, dtype=like.dtype)


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """HR -> LR by the training degradation without extras (validation, tests)."""
    from clipsr_cli.data.degrade import degrade

    return degrade(hr, scale, quantize=True)


# -- decoding ---------------------------------------------------------------------------------------
def pil_to_uint8(img, resize_shorter: int = 0) -> torch.Tensor:
    """PIL image -> (3, H, W) uint8 tensor (optionally resized so the shorter side is given)."""
    from PIL import Image

    img = img.convert("RGB")
    if resize_shorter:
        w, h = img.size
        k = resize_shorter / min(w, h)
        if abs(k - 1) > 1e-6:
            img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class BadImages:
    """Counts unreadable and too-small images; warns once each; stops above a fraction."""

    def __init__(self, max_fraction: float, warn=None):
        self.max_fraction = max_fraction
        self.unreadable = 0
        self.small = 0
        self.small_sides: list[int] = []  # shorter sides of the too-small images (decode_all)
        self.seen = 0
        self._warned: set[str] = set()
        self._warn = warn or log.warning

    def bad(self, message: str) -> None:
        self.unreadable += 1
        if "unreadable" not in self._warned:
            self._warned.add("unreadable")
            self._warn(f"{message}; skipping unreadable images (counted in the summary)")
        self.check()

    def too_small(self, message: str) -> None:
        self.small += 1
        if "small" not in self._warned:
            self._warned.add("small")
            self._warn(f"{message}; skipping images smaller than the HR patch")

    def check(self) -> None:
        if self.seen >= 20 and self.unreadable > self.max_fraction * self.seen:
            raise DataError(f"{self.unreadable} of {self.seen} images could not be read (more than "
                            f"data.max_bad_fraction = {self.max_fraction}); fix or remove them")


def small_message(name: str, w: int, h: int, hp: int) -> str:
    return f"{name} is {w}x{h}: its shorter side is below the {hp} px HR patch"


def _decode_one(source, i: int, resize_shorter: int):
    try:
        img, caps = source.load(i)
        return pil_to_uint8(img, resize_shorter), caps, None
    except DataError as e:
        return None, None, str(e)
    except (OSError, ValueError) as e:  # decoder errors not wrapped by the source
        return None, None, f"cannot read image {i}: {e}"


def decode_all(source: ImageSourceLike, *, min_side: int, resize_shorter: int, bad: BadImages,
               threads: int = 1) -> tuple[list[torch.Tensor], list[tuple[str, ...]]]:
    """Decode every image of ``source`` once (``threads`` in parallel: PIL decodes without the
    GIL), in order; skip (and count) unreadable and too-small ones."""
    from concurrent.futures import ThreadPoolExecutor

    images, captions = [], []
    n = len(source)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(lambda i: _decode_one(source, i, resize_shorter), range(n))
        for i, (t, caps, err) in enumerate(results):
            bad.seen += 1
            if err is not None:
                bad.bad(err)
                continue
            if min(t.shape[-2:]) < min_side:
                bad.small_sides.append(min(t.shape[-2:]))
                bad.too_small(small_message(image_name(source, i), t.shape[-1], t.shape[-2],
                                            min_side))
                continue
            images.append(t)
            captions.append(tuple(c for c in (caps or ()) if c and c.strip()))
    if bad.seen and bad.unreadable > bad.max_fraction * bad.seen:
        raise DataError(f"{bad.unreadable} of {bad.seen} images could not be read (more than "
                        f"data.max_bad_fraction = {bad.max_fraction}); fix or remove them")
    return images, captions


# -- augmentation on the device ---------------------------------------------------------------------
def augment(hr: torch.Tensor, g: torch.Generator, *, hflip: bool, vflip: bool, rot90: bool) -> torch.Tensor:
    """Per-sample random flips / transposes (with flips: all 8 rotations and mirrorings) of a
    (B, C, P, P) batch. ``g`` lives on the batch's device (no host round trip); it is drawn from
    in the same order whatever is switched on."""
    b = hr.shape[0]
    r = torch.rand(3, b, generator=g, device=hr.device)
    if hflip:
        hr = torch.where((r[0] < 0.5)[:, None, None, None], hr.flip(-1), hr)
    if vflip:
        hr = torch.where((r[1] < 0.5)[:, None, None, None], hr.flip(-2), hr)
    if rot90 and hr.shape[-1] == hr.shape[-2]:
        hr = torch.where((r[2] < 0.5)[:, None, None, None], hr.transpose(-1, -2), hr)
    return hr


class MemorySampler:
    """Random aligned crops from images held in memory (uint8, on ``device``)."""

    def __init__(self, images: Sequence[torch.Tensor], captions: Sequence[tuple[str, ...]], *,
                 scale: int, patch: int, batch: int, device: torch.device, seed: int,
                 hflip: bool, vflip: bool, rot90: bool, caption_dropout: float,
                 degradation: str = "bicubic"):
        if not images:
            raise DataError("no usable training images")
        self.images = [im.to(device) for im in images]
        self.captions = list(captions)
        self.scale, self.patch, self.batch, self.device = scale, patch, batch, device
        self.hp = patch * scale
        self.flags = dict(hflip=hflip, vflip=vflip, rot90=rot90)
        self.caption_dropout = caption_dropout
        self.degrade = Degrader(scale, kind=degradation)
        self.gen = torch.Generator().manual_seed(seed)  # host-side choices: image, crop, caption
        self.dev_gen = torch.Generator(device=device).manual_seed(seed + 1)  # flips, dropout, LR
        # crop positions on the LR grid: (H//s - P + 1) choices per axis
        self.ny = torch.tensor([im.shape[-2] // scale - patch + 1 for im in images])
        self.nx = torch.tensor([im.shape[-1] // scale - patch + 1 for im in images])

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "dev_gen": self.dev_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.dev_gen.set_state(state["dev_gen"])

    def next_batch(self) -> Batch:
        g, b, hp, s = self.gen, self.batch, self.hp, self.scale
        idx = torch.randint(len(self.images), (b,), generator=g)
        u = torch.rand(2, b, generator=g, dtype=torch.float64)
        ys = (u[0] * self.ny[idx]).long().clamp_max(self.ny[idx] - 1) * s
        xs = (u[1] * self.nx[idx]).long().clamp_max(self.nx[idx] - 1) * s
        crops = [self.images[i][:, y:y + hp, x:x + hp]
                 for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())]
        hr = torch.stack(crops).float().div_(255)
        hr = augment(hr, self.dev_gen, **self.flags)
        caps = _pick_captions([self.captions[i] for i in idx.tolist()], g)
        drop = torch.rand(b, generator=self.dev_gen, device=self.device) < self.caption_dropout
        lr = self.degrade(hr, self.dev_gen)
        return Batch(hr, lr, caps, drop)


def _pick_captions(caps: list[tuple[str, ...]], g: torch.Generator) -> list[str | None]:
    r = torch.rand(len(caps), generator=g, dtype=torch.float64).tolist()
    return [c[min(int(u * len(c)), len(c) - 1)] if c else None for c, u in zip(caps, r)]


# -- streaming from disk ----------------------------------------------------------------------------
class _CropDataset(torch.utils.data.Dataset):
    def __init__(self, source, *, scale: int, patch: int, resize_shorter: int, seed: int):
        self.source, self.scale, self.patch = source, scale, patch
        self.resize_shorter, self.seed = resize_shorter, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        i, salt = key
        hp, s = self.patch * self.scale, self.scale
        try:
            img, caps = self.source.load(i)
            t = pil_to_uint8(img, self.resize_shorter)
        except (DataError, OSError, ValueError) as e:
            return torch.zeros(3, hp, hp, dtype=torch.uint8), (), 1, str(e)
        if min(t.shape[-2:]) < hp:
            msg = small_message(image_name(self.source, i), t.shape[-1], t.shape[-2], hp)
            return torch.zeros(3, hp, hp, dtype=torch.uint8), (), 2, msg
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + salt)
        ny, nx = t.shape[-2] // s - self.patch + 1, t.shape[-1] // s - self.patch + 1
        y = int(torch.randint(ny, (1,), generator=g)) * s
        x = int(torch.randint(nx, (1,), generator=g)) * s
        caps = tuple(c for c in (caps or ()) if c and c.strip())
        return t[:, y:y + hp, x:x + hp].contiguous(), caps, 0, ""


class _IndexStream(torch.utils.data.Sampler):
    """Endless random (index, salt) pairs: per-rank seed; ``skip`` batches already consumed."""

    def __init__(self, n: int, seed: int, start: int = 0):
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed)
        k = 0
        while True:
            perm = torch.randperm(self.n, generator=g).tolist()
            for i in perm:
                if k >= self.start:
                    yield i, k
                k += 1


def _collate(items):
    return items


class StreamSampler:
    """HR crops read by DataLoader workers; flips, captions, dropout and LR made on the device."""

    def __init__(self, source, *, scale: int, patch: int, batch: int, device: torch.device,
                 seed: int, workers: int, resize_shorter: int, hflip: bool, vflip: bool,
                 rot90: bool, caption_dropout: float, bad: BadImages, degradation: str = "bicubic"):
        if len(source) == 0:
            raise DataError("the training dataset is empty")
        self.source, self.scale, self.patch, self.batch, self.device = source, scale, patch, batch, device
        self.flags = dict(hflip=hflip, vflip=vflip, rot90=rot90)
        self.caption_dropout, self.bad = caption_dropout, bad
        self.degrade = Degrader(scale, kind=degradation)
        self.seed, self.workers, self.resize_shorter = seed, workers, resize_shorter
        self.gen = torch.Generator().manual_seed(seed)
        self.dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.consumed = 0
        self._iter = None
        self._pending: list = []

    def _start(self) -> None:
        ds = _CropDataset(self.source, scale=self.scale, patch=self.patch,
                          resize_shorter=self.resize_shorter, seed=self.seed)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch, sampler=_IndexStream(len(self.source), self.seed, self.consumed),
            num_workers=self.workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers else None)
        self._iter = iter(loader)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "dev_gen": self.dev_gen.get_state(),
                "consumed": torch.tensor(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.dev_gen.set_state(state["dev_gen"])
        self.consumed = int(state["consumed"])
        self._iter = None

    def next_batch(self) -> Batch:
        if self._iter is None:
            self._start()
        good: list = self._pending
        while len(good) < self.batch:
            for crop, caps, status, msg in next(self._iter):
                self.consumed += 1
                self.bad.seen += 1
                if status == 1:
                    self.bad.bad(msg)
                elif status == 2:
                    self.bad.too_small(msg)
                    if self.bad.small >= self.bad.seen and self.bad.seen >= 100:
                        raise DataError("every image read so far is smaller than the HR patch; "
                                        "use a smaller `patch_size`")
                else:
                    good.append((crop, caps))
        items, self._pending = good[:self.batch], good[self.batch:]
        hr = torch.stack([c for c, _ in items])
        if self.device.type == "cuda":
            hr = hr.pin_memory()
        hr = hr.to(self.device, non_blocking=True).float().div_(255)
        hr = augment(hr, self.dev_gen, **self.flags)
        caps = _pick_captions([c for _, c in items], self.gen)
        drop = torch.rand(len(items), generator=self.dev_gen, device=self.device) < self.caption_dropout
        lr = self.degrade(hr, self.dev_gen)
        return Batch(hr, lr, caps, drop)


# -- validation set -------------------------------------------------------------------------------
@dataclass
class ValImage:
    hr: torch.Tensor
    lr: torch.Tensor
    caption: str | None


def load_val(source, *, scale: int, multiple: int, max_images: int, max_size: int,
             device: torch.device, warn) -> list[ValImage]:
    """Up to ``max_images`` validation pairs: HR centre-cropped to <= max_size and to a multiple of
    scale x the model's pad multiple, LR by the training degradation (bicubic, no extras)."""
    out = []
    step = scale * multiple
    skipped = 0
    for i in range(len(source)):
        if len(out) >= max_images:
            break
        try:
            img, caps = source.load(i)
            t = pil_to_uint8(img)
        except (DataError, OSError, ValueError):
            skipped += 1
            continue
        h, w = t.shape[-2:]
        ch = min(h, max_size) // step * step
        cw = min(w, max_size) // step * step
        if ch < step or cw < step:
            skipped += 1
            continue
        y, x = (h - ch) // 2, (w - cw) // 2
        hr = t[:, y:y + ch, x:x + cw].to(device).float().div_(255).unsqueeze(0)
        lr = make_lr(hr, scale)
        caps = tuple(c for c in (caps or ()) if c and c.strip())
        out.append(ValImage(hr, lr, caps[0] if caps else None))
    if skipped:
        warn(f"validation: skipped {skipped} unreadable or too small image(s)")
    return out

