"""Super-resolution editing (``clipsr edit``): change what a text-guided model draws by changing
the caption, while the result stays consistent with the low-resolution input.

The pieces, each a plain function that tests call directly:

* :func:`prepare_lr` — the LR image to super-resolve: a photo degraded ×S with the training
  degradation (``degrade``: MATLAB bicubic + 8-bit), or the input itself with ``as_lr``.
* :func:`interpolate_embedding` — ``source + A·(target − source)`` between the two
  **L2-normalised** CLIP sentence embeddings (the generator normalises whatever it gets, so this
  is the space it sees; raw CLIP norms differ per text and from the learned null embedding's,
  which would bend the path). A = 0 and A = 1 return the raw source / target unchanged, so an
  edit at A = 1 is bit-identical to ``clipsr upscale -t TARGET``.
* :func:`iter_edits` / :func:`edit_lr` — one super-resolved image per strength.
* :func:`lr_consistency` — Y-PSNR between the edit, degraded again ×S, and the LR it came from.
* :func:`compose_grid`, :func:`compose_gif` — the side-by-side and animated views.
* :func:`plan_outputs`, :func:`edit_file` — file names (never clobbering) and the whole command.

Size contract of the default (photo) mode: the photo is padded at its bottom/right edge by
mirroring to a multiple of S, degraded, super-resolved, and the result cropped back, so the edit
has exactly the input's size (no pixel of the photo is dropped). The LR-consistency metric is
measured on the uncropped result against the LR actually used.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from clipsr_cli.errors import InputError, ModelError

__all__ = [
    "EditFrame",
    "EditOutput",
    "EditPlan",
    "EditResult",
    "compose_gif",
    "compose_grid",
    "edit_file",
    "edit_lr",
    "interpolate_embedding",
    "iter_edits",
    "lr_consistency",
    "plan_outputs",
    "prepare_lr",
    "require_text_model",
    "sweep_strengths",
]

#: Below this LR consistency (dB) ``edit`` warns that the result no longer matches the input.
LOW_CONSISTENCY_DB = 30.0
#: Milliseconds per frame of ``--gif``.
GIF_FRAME_MS = 600
REPORT_VERSION = 1


# -- strengths and embeddings ---------------------------------------------------------------------
def sweep_strengths(n: int) -> list[float]:
    """``n`` >= 2 strengths evenly spaced from 0 to 1 (both included)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InputError(f"--sweep needs at least 2 steps, got {n}; e.g. --sweep 5")
    return [i / (n - 1) for i in range(n)]


def interpolate_embedding(source: torch.Tensor, target: torch.Tensor,
                          strength: float) -> torch.Tensor:
    """``normalise(source) + A·(normalise(target) − normalise(source))`` for (1, D) embeddings.

    ``strength`` A = 1 returns ``target`` and A = 0 ``source`` unchanged (the generator
    normalises them itself); A outside [0, 1] extrapolates. The result is not normalised.
    """
    if not math.isfinite(strength):
        raise InputError(f"--strength must be a finite number, got {strength}")
    if strength == 1.0:
        return target
    if strength == 0.0:
        return source
    s = F.normalize(source.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    e = s + strength * (t - s)
    if float(e.norm()) < 1e-6:
        raise InputError(f"at --strength {strength:g} the source and target embeddings cancel "
                         "out; choose another strength")
    return e


# -- the LR image ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedLR:
    lr: torch.Tensor  # (1, 3, h, w) float in [0, 1]: what the model super-resolves
    out_size: tuple[int, int]  # (H, W) of the written result: the photo's size, or S·h × S·w
    padded: bool  # the photo was padded to a multiple of S (photo mode only)


def prepare_lr(rgb: torch.Tensor, scale: int, *, as_lr: bool) -> PreparedLR:
    """The LR image for an input (1, 3, H, W) in [0, 1].

    ``as_lr``: the input is the LR (output S·H × S·W). Otherwise the input is a photo: it is
    mirror-padded at the bottom/right to a multiple of ``scale`` and degraded ×``scale``
    (``degrade``), and the output is cropped back to H × W.
    """
    from clipsr_cli.data.degrade import degrade

    h, w = int(rgb.shape[-2]), int(rgb.shape[-1])
    if as_lr:
        return PreparedLR(rgb, (h * scale, w * scale), False)
    if h < scale or w < scale:
        raise InputError(f"a {w}×{h} photo is smaller than the ×{scale} scale; pass --as-lr to "
                         "treat it as the low-resolution image")
    ph, pw = -h % scale, -w % scale
    x = rgb.float()
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return PreparedLR(degrade(x, scale), (h, w), bool(ph or pw))


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor, scale: int) -> float:
    """Y-PSNR (dB, 8-bit, whole image) between ``sr`` degraded ×``scale`` and ``lr``: how well the
    edit still explains the input. ``sr``: (1, 3, S·h, S·w); ``lr``: (1, 3, h, w)."""
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr

    return float(psnr(degrade(sr.float(), scale), lr.float(), border=0, y_channel=True)[0])


# -- the model ------------------------------------------------------------------------------------
def _text_guided_entries(scale: int | None) -> list:
    from clipsr_cli.hub.registry import load_registry

    return [e for e in load_registry() if e.kind == "generator" and e.text_guided
            and (scale is None or e.scale == scale)]


def _refusal(name: str, scale: int | None) -> ModelError:
    entries = _text_guided_entries(scale) or _text_guided_entries(None)
    if entries:
        hint = ("use a text-guided model: " + ", ".join(f"-m {e.name} (×{e.scale})"
                                                        for e in entries))
    else:
        hint = ("no text-guided model is registered (see 'clipsr models'); train one with "
                "'clipsr train --clip ViT-B-32 --data DIR --out RUN' and pass "
                "-m RUN/model.safetensors")
    return ModelError(f"model {name} is not text-conditioned, so it cannot edit by text; {hint}")


def require_text_model(model: str | None, scale: int | None) -> str:
    """The model to edit with: ``model``, or the first registered text-guided generator for
    ``scale``. Raises ModelError (naming text-guided models, or how to train one) when the
    choice is known not to be text-conditioned."""
    from clipsr_cli.hub.registry import load_registry

    if model is None:
        entries = _text_guided_entries(scale)
        if entries:
            return entries[0].name
        from clipsr_cli.hub.registry import default_model

        raise _refusal(f"{default_model(scale or 4)} (the default)", scale)
    entry = load_registry().find(model)
    if entry is not None and entry.kind == "generator" and entry.text_guided is False:
        raise _refusal(model, scale)
    return model


# -- editing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditFrame:
    strength: float
    label: str  # e.g. 'A=0.50  (no text) -> "a red bird"'
    sr: torch.Tensor  # (1, 3, S·h, S·w) float32 in [0, 1]: the uncropped output
    lr_psnr: float  # lr_consistency(sr, lr)


def _prompt_label(source_text: str | None, target_text: str, strength: float) -> str:
    src = f'"{source_text}"' if source_text else "(no text)"
    return f'A={strength:.2f}  {src} -> "{target_text}"'  # ASCII: the default font has no →


def iter_edits(up, lr: torch.Tensor, *, target_text: str, source_text: str | None = None,
               strengths: list[float], progress=None) -> Iterator[EditFrame]:
    """Super-resolve ``lr`` once per strength, conditioned on the interpolated embedding; yields
    the frames one at a time (a caller writing each one holds a single float output).

    ``up``: a text-conditioned :class:`~clipsr_cli.infer.engine.Upscaler`; ``source_text`` None means
    the model's learned null embedding (no caption)."""
    if not up.info.text_conditioned:
        raise _refusal(up.name, up.scale)
    if not target_text or not target_text.strip():
        raise InputError("the target text (-t) is empty; describe what the result should show")
    target = up.embed_text(target_text)
    if source_text:
        source = up.embed_text(source_text)
    else:
        source = up.null_text_embedding()
    for a in strengths:
        emb = interpolate_embedding(source, target, a)
        sr = up.upscale_tensor(lr, text_embedding=emb, progress=progress)
        yield EditFrame(a, _prompt_label(source_text, target_text, a), sr,
                        lr_consistency(sr, lr, up.scale))


def edit_lr(up, lr: torch.Tensor, *, target_text: str, source_text: str | None = None,
            strengths: list[float], progress=None) -> list[EditFrame]:
    """All frames of :func:`iter_edits` as a list."""
    return list(iter_edits(up, lr, target_text=target_text, source_text=source_text,
                           strengths=strengths, progress=progress))


# -- views ----------------------------------------------------------------------------------------
def _to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] or (H, W, 3) uint8/uint16 → (H, W, 3) uint8."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).mul(255).add_(0.5).floor_()
        return x.to(torch.uint8).numpy()
    if x.dtype == np.uint16:
        return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.ascontiguousarray(x, dtype=np.uint8)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # bundled (FreeType) or bitmap: no font files


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (over-long words are split)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if draw.textlength(cand, font=font) <= width or not line:
                line = cand
            else:
                lines.append(line)
                line = word
            while draw.textlength(line, font=font) > width and len(line) > 1:
                for cut in range(len(line) - 1, 0, -1):
                    if draw.textlength(line[:cut], font=font) <= width:
                        break
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _labelled(tile: np.ndarray, label: str, *, font_size: int, band: int | None = None):
    """``tile`` with ``label`` written in a white band below it; returns (image, band height)."""
    from PIL import Image, ImageDraw

    h, w = tile.shape[:2]
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(2, font_size // 3)
    lines = _wrap(probe, label, font, max(1, w - 2 * pad))
    line_h = font_size + max(2, font_size // 4)
    need = 2 * pad + line_h * len(lines)
    band = need if band is None else max(band, need)
    img = Image.new("RGB", (w, h + band), (255, 255, 255))
    img.paste(Image.fromarray(tile, "RGB"), (0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((pad, h + pad + i * line_h), line, fill=(0, 0, 0), font=font)
    return img, band


def _font_size(width: int) -> int:
    return int(min(40, max(10, round(width / 22))))


def compose_grid(tiles: list[np.ndarray], labels: list[str], *, gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3 uint8, same height) side by side, each with its label below, separated by
    ``gap`` white pixels; returns an (H', W', 3) uint8 array."""
    from PIL import Image

    if not tiles or len(tiles) != len(labels):
        raise ValueError("compose_grid needs one label per tile")
    size = _font_size(min(t.shape[1] for t in tiles))
    band = max(_labelled(t, lab, font_size=size)[1] for t, lab in zip(tiles, labels, strict=True))
    parts = [_labelled(t, lab, font_size=size, band=band)[0]
             for t, lab in zip(tiles, labels, strict=True)]
    height = max(p.height for p in parts)
    width = sum(p.width for p in parts) + gap * (len(parts) - 1)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for p in parts:
        grid.paste(p, (x, 0))
        x += p.width + gap
    return np.asarray(grid)


def compose_gif(frames: list[np.ndarray], labels: list[str], *,
                duration_ms: int = GIF_FRAME_MS) -> bytes:
    """An endlessly looping GIF of ``frames`` (H, W, 3 uint8), each labelled below. Labels make
    every frame distinct, so Pillow never merges two frames: the GIF has len(frames) frames."""
    if not frames or len(frames) != len(labels):
        raise ValueError("compose_gif needs one label per frame")
    size = _font_size(frames[0].shape[1])
    band = max(_labelled(f, lab, font_size=size)[1] for f, lab in zip(frames, labels, strict=True))
    imgs = [_labelled(f, lab, font_size=size, band=band)[0]
            for f, lab in zip(frames, labels, strict=True)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], loop=0,
                 duration=duration_ms, optimize=False)
    return buf.getvalue()


# -- output names ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditPlan:
    outputs: tuple[Path | None, ...]  # one per strength; None: standard output
    grid: Path | None = None
    gif: Path | None = None
    report: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (*self.outputs, self.grid, self.gif, self.report) if p is not None]


def plan_outputs(input: str, output: str | None, n: int, *, format: str | None = None,
                 grid: bool = False, gif: bool = False, report: str | None = None,
                 overwrite: bool = False) -> EditPlan:
    """Every path ``edit`` will write, checked before any work.

    Default: ``<stem>_edit.<ext>`` beside the input; with ``n`` > 1 ``<stem>_edit_<i>.<ext>``
    (i zero-padded from 0). ``-o DIR`` (an existing folder, or a name ending in ``/``): the same
    names in DIR. ``-o FILE.ext``: that file, or ``FILE_<i>.ext`` for a sweep. ``-o -``: standard
    output (one result, no grid/GIF). Grid: ``<base>_grid.png``; GIF: ``<base>.gif``. Existing
    files (and the input itself) are refused unless ``overwrite``.
    """
    from clipsr_cli.io import images as imageio

    if output == "-":
        if n > 1 or grid or gif:
            raise InputError("-o - (standard output) takes one result; drop --sweep/--grid/--gif "
                             "or write to files")
        if format is None:
            raise InputError("writing to standard output needs --format (png, jpeg, webp, tiff "
                             "or bmp)")
        return EditPlan((None,), report=_report_path(report, overwrite))
    if output is None and input == "-":
        raise InputError("reading from standard input (-) needs -o FILE or -o DIR")
    stem = Path(input).stem if input != "-" else "stdin"
    ref = input if input != "-" else "stdin.png"
    ext = imageio.output_path_for(ref, 1, format=format, suffix="").suffix
    if output is None:
        folder, base, single = Path(input).parent, f"{stem}_edit", None
    else:
        out = Path(output).expanduser()
        if out.is_dir() or output.endswith(("/", os.sep)):
            folder, base, single = out, f"{stem}_edit", None
        else:
            if not imageio.is_image_path(out) and format is None:
                raise InputError(f"cannot tell the image format of {out} from its extension; use "
                                 ".png, .jpg, .webp, .tif or .bmp, or pass --format")
            folder, base, single = out.parent, out.stem, out
            ext = out.suffix or ext
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist; create it first")
    if n == 1:
        outputs = (single if single is not None else folder / f"{base}{ext}",)
    else:
        width = len(str(n - 1))
        outputs = tuple(folder / f"{base}_{i:0{width}d}{ext}" for i in range(n))
    plan = EditPlan(outputs, folder / f"{base}_grid.png" if grid else None,
                    folder / f"{base}.gif" if gif else None, _report_path(report, overwrite))
    paths = plan.paths()
    if len(set(paths)) != len(paths):
        raise InputError("two outputs would have the same name; choose another -o")
    src = Path(input).expanduser().resolve() if input != "-" else None
    for p in paths:
        if src is not None and p.resolve() == src:
            raise InputError(f"refusing to overwrite the input {input}; choose another -o")
        if p.is_dir():
            raise InputError(f"{p} is a folder; choose another -o")
        if p.exists() and not overwrite:
            raise InputError(f"{p} exists; pass --overwrite to replace it or choose another -o")
    return plan


def _report_path(report: str | None, overwrite: bool) -> Path | None:
    if report is None:
        return None
    p = Path(report).expanduser()
    if not p.parent.is_dir():
        raise InputError(f"folder of the report {p} does not exist; create it first")
    if p.exists() and not overwrite:
        raise InputError(f"{p} exists; pass --overwrite to replace it or choose another --report")
    return p


def _write_bytes(path: Path, data: bytes, overwrite: bool) -> None:
    from clipsr_cli.io.images import _atomic_write  # the one atomic, no-clobber writer

    _atomic_write(path, lambda f: f.write(data), overwrite)


# -- the whole command ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EditOutput:
    """What ``edit_file`` wrote for one strength, and how consistent it is."""

    path: Path | None  # None: standard output
    strength: float
    label: str
    lr_consistency: float  # dB, see lr_consistency()
    psnr_vs_input: float | None  # photo mode: Y-PSNR of the edit vs the photo (how much changed)

    def to_json(self) -> dict:
        return {"path": str(self.path) if self.path is not None else "-",
                "strength": self.strength, "label": self.label,
                "lr_consistency_db": round(self.lr_consistency, 3),
                "psnr_vs_input_db": (round(self.psnr_vs_input, 3)
                                     if self.psnr_vs_input is not None else None)}


@dataclass(frozen=True)
class EditResult:
    plan: EditPlan
    outputs: tuple[EditOutput, ...]
    model: str
    scale: int
    seconds: float

    def to_json(self, *, input: str, as_lr: bool, target_text: str,
                source_text: str | None) -> dict:
        return {"version": REPORT_VERSION, "input": input, "mode": "lr" if as_lr else "photo",
                "model": self.model, "scale": self.scale, "target_text": target_text,
                "source_text": source_text, "outputs": [o.to_json() for o in self.outputs],
                "grid": str(self.plan.grid) if self.plan.grid else None,
                "gif": str(self.plan.gif) if self.plan.gif else None}


def edit_file(*, input: str, target_text: str, source_text: str | None = None,
              strength: float | None = None, sweep: int | None = None, grid: bool = False,
              gif: bool = False, scale: int | None = None, as_lr: bool = False,
              model: str | None = None, device: str = "auto", precision: str = "auto",
              tile: str | int = "auto", tile_overlap: int | None = None,
              output: str | None = None, format: str | None = None, quality: int = 95,
              overwrite: bool = False, report: str | None = None) -> EditResult:
    """Read ``input``, edit it with ``target_text`` and write the results (atomically, never
    clobbering without ``overwrite``); messages and the LR-consistency report go to stderr.

    Every destination is checked before the model is loaded. A grayscale input gives colour
    output (an edit may add colour); bit depth, ICC profile and EXIF follow the input."""
    from clipsr_cli.io import images as imageio
    from clipsr_cli.cli.console import info, warn
    from clipsr_cli.infer.engine import upscale_alpha
    from clipsr_cli.data.metrics import psnr
    from clipsr_cli.tasks.upscale import load_upscaler, tile_progress

    t0 = time.perf_counter()
    if not target_text or not target_text.strip():
        raise InputError("the target text (-t) is empty; describe what the result should show")
    if sweep is not None and strength is not None:
        raise InputError("--strength and --sweep exclude each other: a sweep runs A from 0 to 1")
    if gif and sweep is None:
        raise InputError("--gif animates a sweep; add --sweep N (e.g. --sweep 5)")
    strengths = sweep_strengths(sweep) if sweep is not None else [
        1.0 if strength is None else float(strength)]
    if not math.isfinite(strengths[0]):
        raise InputError(f"--strength must be a finite number, got {strengths[0]}")
    if (sweep is not None or strength not in (None, 1.0)) and not source_text:
        info("no --source-text: A = 0 is the model's null text (no caption)")
    plan = plan_outputs(input, output, len(strengths), format=format, grid=grid, gif=gif,
                        report=report, overwrite=overwrite)
    image = imageio.read_image(input)  # fail on a bad input before loading any model
    name = require_text_model(model, scale)
    up = load_upscaler(model=name, scale=scale, device=device, precision=precision, tile=tile,
                       tile_overlap=tile_overlap)
    if not up.info.text_conditioned:
        raise _refusal(name, scale)
    s = up.scale
    prep = prepare_lr(image.rgb, s, as_lr=as_lr)
    w, h = image.size
    if prep.padded:
        info(f"{w}×{h} is not a multiple of ×{s}: mirrored the bottom/right edge for the "
             f"downscale; the edit is cropped back to {w}×{h}")
    oh, ow = prep.out_size
    alpha = image.alpha if not as_lr else (
        upscale_alpha(image.alpha, s) if image.alpha is not None else None)
    like = dataclasses.replace(image, grayscale=False)
    outputs: list[EditOutput] = []
    views: list[np.ndarray] = []  # uint8 copies for the grid / GIF
    with tile_progress(f"edit ×{s} {Path(str(image.source)).name}") as progress:
        frames = iter_edits(up, prep.lr, target_text=target_text, source_text=source_text,
                            strengths=strengths, progress=progress)
        for f, dest in zip(frames, plan.outputs, strict=True):
            out = f.sr[..., :oh, :ow]
            fidelity = None if as_lr else float(psnr(out, image.rgb, border=0)[0])
            imageio.write_image(dest if dest is not None else "-", out, alpha, like=like,
                                format=format, quality=quality, overwrite=overwrite)
            outputs.append(EditOutput(dest, f.strength, f.label, f.lr_psnr, fidelity))
            if plan.grid is not None or plan.gif is not None:
                views.append(_to_uint8(out))
    if plan.grid is not None:
        first = _to_uint8(image.rgb)
        if as_lr:
            first = np.repeat(np.repeat(first, s, axis=0), s, axis=1)
        label = "input" if not as_lr else f"input (LR, nearest x{s})"
        arr = compose_grid([first, *views], [label, *(o.label for o in outputs)])
        imageio.write_image(plan.grid, arr, overwrite=overwrite)
    if plan.gif is not None:
        _write_bytes(plan.gif, compose_gif(views, [o.label for o in outputs]), overwrite)
    result = EditResult(plan, tuple(outputs), up.name, s, time.perf_counter() - t0)
    mode = f"{w}×{h} photo, degraded ×{s}" if not as_lr else f"{w}×{h} LR"
    info(f"{image.source} ({mode}) → {len(outputs)} edit(s) with {up.name} in "
         f"{result.seconds:.1f} s")
    for o in outputs:
        extra = f", {o.psnr_vs_input:.2f} dB vs the input" if o.psnr_vs_input is not None else ""
        info(f"  {o.label}: LR consistency {o.lr_consistency:.2f} dB{extra} → "
             f"{o.path or '<stdout>'}")
    info(f"  (LR consistency: Y-PSNR of the edit, downscaled ×{s} with the training "
         "degradation, vs the LR; high = the edit kept the input's content)")
    worst = min(o.lr_consistency for o in outputs)
    if worst < LOW_CONSISTENCY_DB:
        warn(f"LR consistency is {worst:.1f} dB (< {LOW_CONSISTENCY_DB:.0f} dB): the edit departs "
             "from the input; try a lower --strength")
    if plan.report is not None:
        data = json.dumps(result.to_json(input=input, as_lr=as_lr, target_text=target_text,
                                         source_text=source_text), indent=2,
                          ensure_ascii=False) + "\n"
        _write_bytes(plan.report, data.encode("utf-8"), overwrite)
    return result
