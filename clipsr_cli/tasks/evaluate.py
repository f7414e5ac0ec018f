"""``clipsr eval``: the standard SR protocol on your own HR images, bicubic beside the model.

For every HR image: crop to a multiple of the scale, LR = the training degradation (MATLAB
bicubic, antialiased, 8-bit; or, with ``resizer``, Pillow's bicubic or Lanczos downscale of the
8-bit HR, to check that a model does not depend on one resizer), bicubic baseline = MATLAB bicubic
upscale of that LR, model output through the inference engine. With ``degrade`` (``jpeg:75``,
``noise:5``, ...; ``clipsr_cli.data.lr_file``) the LR is first made into the file a user would
have (JPEG at that quality, or noisy PNG) and read back, and both the model and bicubic start
from that same degraded LR; one report per condition. Metrics
(``clipsr_cli.data.metrics``): PSNR and SSIM on the Y channel (ITU-R BT.601) with ``scale`` pixels
of border cropped, plus RGB PSNR, and the smooth-region check (``clipsr_cli.data.smooth``: is the
output worse than bicubic where the scene is smooth, i.e. does it invent texture?). Deterministic.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clipsr_cli.data.datasets import open_dataset
from clipsr_cli.data.degrade import crop_to_multiple, degrade, imresize
from clipsr_cli.data.lr_file import FileDegradation, lr_file
from clipsr_cli.data.metrics import psnr, ssim
from clipsr_cli.data.smooth import smooth_region_check
from clipsr_cli.errors import DataError, InputError, UsageError
from clipsr_cli.io.images import read_image
from clipsr_cli.io.quantise import quantise
from clipsr_cli.tasks.checks import RESIZERS, check_eval  # noqa: F401 (RESIZERS: API)

REPORT_VERSION = 3  # 3: one entry per LR condition (`degrade`) under "conditions"
CSV_FIELDS = ("degrade", "name", "width", "height", "caption", "bicubic_psnr", "model_psnr", "gain",
              "bicubic_ssim", "model_ssim", "bicubic_psnr_rgb", "model_psnr_rgb", "clip_score",
              "smooth_fraction", "smooth_delta", "invented_texture", "denoise", "denoise_reason")


@dataclass(frozen=True)
class ImageScores:
    name: str
    size: tuple[int, int]  # HR (width, height) after cropping to a multiple of the scale
    caption: str | None
    bicubic_psnr: float
    model_psnr: float
    bicubic_ssim: float
    model_ssim: float
    bicubic_psnr_rgb: float
    model_psnr_rgb: float
    clip_score: float | None = None
    smooth_fraction: float = 0.0
    """Share of the image the smooth-region check judged (smooth HR blocks)."""
    smooth_delta: float | None = None
    """Model minus bicubic Y-PSNR on those blocks (None: none)."""
    invented_texture: bool = False
    """The smooth-region check flagged the output (worse than bicubic where the scene is smooth)."""
    denoise: float = 0.0
    """The degradation strength the engine chose for this LR file (``--degradation``)."""
    denoise_reason: str = ""
    """Why (e.g. "JPEG quality 75", "noise σ 4.8", "--denoise")."""

    @property
    def gain(self) -> float:
        return self.model_psnr - self.bicubic_psnr


@dataclass
class EvalReport:
    model: str
    scale: int
    data: str
    resizer: str = "matlab"
    degrade: str = "clean"
    """How the LR file was made (``clipsr_cli.data.lr_file.FileDegradation`` as text)."""
    images: list[ImageScores] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def mean(self, attr: str) -> float:
        vals = [getattr(i, attr) for i in self.images if getattr(i, attr) is not None]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def improved(self) -> int:
        return sum(1 for i in self.images if i.gain > 0)

    @property
    def flagged(self) -> list[str]:
        """Images whose output the smooth-region check flagged (invented texture)."""
        return [i.name for i in self.images if i.invented_texture]

    def summary(self) -> dict:
        keys = ("bicubic_psnr", "model_psnr", "bicubic_ssim", "model_ssim", "bicubic_psnr_rgb",
                "model_psnr_rgb", "clip_score")
        out = {k: self.mean(k) for k in keys}
        out["gain"] = out["model_psnr"] - out["bicubic_psnr"]
        out["improved"] = f"{self.improved}/{len(self.images)}"
        out["invented_texture"] = f"{len(self.flagged)}/{len(self.images)}"
        return out

    def condition_json(self) -> dict:
        """This condition's part of the JSON report (NaN, a metric that could not be computed, is
        written as null by the report writer)."""
        return {"degrade": self.degrade, "mean": self.summary(),
                "images": [dict(asdict(i), gain=i.gain) for i in self.images]}

    def csv_rows(self) -> list[dict]:
        rows = []
        for i in self.images:
            d = asdict(i)
            d["width"], d["height"] = d.pop("size")
            rows.append(dict(d, gain=i.gain, degrade=self.degrade))
        return rows


def report_json(reports: EvalReport | Sequence[EvalReport]) -> dict:
    """The JSON report of one model at one scale under one or more LR conditions."""
    reps = [reports] if isinstance(reports, EvalReport) else list(reports)
    if not reps:
        raise ValueError("report_json needs at least one EvalReport")
    r0 = reps[0]
    notes = list(dict.fromkeys(n for r in reps for n in r.notes))
    return {"version": REPORT_VERSION, "model": r0.model, "scale": r0.scale, "data": r0.data,
            "resizer": r0.resizer,
            "protocol": f"PSNR/SSIM on Y (ITU-R BT.601) and PSNR on RGB, both images 8-bit, "
                        f"border {r0.scale} px cropped; LR by {r0.resizer}, 8-bit, then per "
                        f"condition made into a file (clean/noise: PNG; jpeg:Q: Pillow JPEG at "
                        f"quality Q, 4:2:0) and read back; bicubic upscales that same LR",
            "conditions": [r.condition_json() for r in reps], "notes": notes}


def _to_tensor(img) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def _lr_of(hr: torch.Tensor, scale: int, resizer: str) -> torch.Tensor:
    """The LR image of ``hr`` (8-bit, (1, 3, h/s, w/s)) made by ``resizer``."""
    if resizer == "matlab":
        return degrade(hr, scale)
    from PIL import Image

    arr = quantise(hr[0].permute(1, 2, 0), 8)
    im = Image.fromarray(arr)
    filt = Image.Resampling.BICUBIC if resizer == "pil-bicubic" else Image.Resampling.LANCZOS
    small = im.resize((im.width // scale, im.height // scale), filt)
    return _to_tensor(small)


def evaluate(*, upscaler, data: str | os.PathLike, text: str | None = None,
             captions: str | os.PathLike | None = None, format: str = "auto", split: str = "test",
             limit: int | None = None, resizer: str = "matlab",
             degrade: FileDegradation | str = "clean", progress=None) -> EvalReport:
    """Score ``upscaler`` against bicubic on the HR images of ``data``, the LR made into a file
    as ``degrade`` says (``"clean"``, ``"jpeg:75"``, ``"noise:5"``)."""
    cond = FileDegradation.parse(degrade)
    check_eval(resizer=resizer, text=text, captions=captions)
    source = open_dataset(data, format, split=split)
    table = None
    if captions is not None:
        from clipsr_cli.data.captions import CaptionTable

        table = CaptionTable.load(captions)
    s = upscaler.scale
    report = EvalReport(model=upscaler.name, scale=s, data=str(data), resizer=resizer,
                        degrade=str(cond))
    text_model = upscaler.info.text_conditioned
    n = len(source) if limit is None else min(limit, len(source))
    clip_note = None
    for i in range(n):
        sample = source[i]
        try:
            img, caps = source.load(i)
        except DataError as e:
            report.notes.append(f"skipped {sample.path.name}: {e}")
            continue
        caption = text
        if table is not None:
            caption = table.first(sample.path)
        elif caption is None and caps:
            caption = caps[0]
        try:
            hr = crop_to_multiple(_to_tensor(img), s)
        except DataError:  # smaller than the scale (a 1×1 image): this file only
            hr = torch.zeros(1, 3, 0, 0)
        h, w = hr.shape[-2:]
        if min(h, w) <= 2 * s + 10:
            report.notes.append(f"skipped {sample.path.name}: too small for ×{s} ({img.size[0]}×"
                                f"{img.size[1]})")
            continue
        data, _ = lr_file(_lr_of(hr, s, resizer), cond, seed=Path(sample.path).name)
        lr_image = read_image(data)  # what `clipsr upscale` would read: a JPEG keeps its tables
        lr = lr_image.rgb
        strength = upscaler.strength_for(lr_image)
        bic = imresize(lr, s).clamp(0, 1)
        sr = upscaler.upscale_tensor(lr, caption if text_model else None, strength=strength)
        smooth = smooth_region_check(sr, hr, bic, border=s)
        clip_score = None
        if text_model and caption:
            clip_score = _clip_score(upscaler, sr, caption)
        report.images.append(ImageScores(
            name=Path(sample.path).name, size=(int(w), int(h)), caption=caption,
            bicubic_psnr=float(psnr(bic, hr, border=s)), model_psnr=float(psnr(sr, hr, border=s)),
            bicubic_ssim=float(ssim(bic, hr, border=s)), model_ssim=float(ssim(sr, hr, border=s)),
            bicubic_psnr_rgb=float(psnr(bic, hr, border=s, y_channel=False)),
            model_psnr_rgb=float(psnr(sr, hr, border=s, y_channel=False)),
            clip_score=clip_score, smooth_fraction=smooth.fraction, smooth_delta=smooth.delta_db,
            denoise=strength.value, denoise_reason=strength.reason,
            invented_texture=smooth.flagged))
        if progress is not None:
            progress(i + 1, n)
    if not report.images:
        raise DataError(f"no image of {data} could be evaluated at ×{s}; see the notes above"
                        if report.notes else f"no images in {data}")
    report.notes.append(_lpips_note())
    if not text_model:
        clip_note = "CLIP score: not computed (the model is image-only; it needs a text-guided model and captions)"
    elif not any(i.caption for i in report.images):
        clip_note = "CLIP score: not computed (no captions: pass --text or --captions)"
    if clip_note:
        report.notes.append(clip_note)
    return report


@torch.inference_mode()
def _clip_score(upscaler, sr: torch.Tensor, caption: str) -> float:
    """Cosine similarity between CLIP's embedding of the SR image and of the caption."""
    return upscaler.clip_similarity(sr, caption)


def _lpips_note() -> str:
    try:
        import lpips  # noqa: F401  (only whether it is installed)
    except ImportError:
        return ("LPIPS: not computed (needs the 'lpips' package and its network weights, which "
                "clipsr does not download)")
    return "LPIPS: not computed (the lpips package is installed but clipsr does not fetch its weights)"


def check_report(path: str | os.PathLike, *, data: str | os.PathLike | None = None,
                 captions: str | os.PathLike | None = None) -> Path:
    """The report path, judged before any work: ``.json`` or ``.csv``, its folder existing
    (UsageError otherwise, exit status 2), and never the dataset's manifest or the captions
    file (:func:`clipsr_cli.io.outputs.check_report`)."""
    from clipsr_cli.io.outputs import check_report as check

    path = Path(path).expanduser()
    if path.suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"`report` {path}: use a .json or .csv file name", param="report")
    return check(path, keep=(data, captions))


def write_report(reports: EvalReport | Sequence[EvalReport], path: str | os.PathLike) -> Path:
    """``reports`` (one per LR condition) as FILE.json (strict JSON) or FILE.csv, atomically (an
    old report is replaced)."""
    from clipsr_cli.io.reports import write_csv, write_json

    reps = [reports] if isinstance(reports, EvalReport) else list(reports)
    path = check_report(path, data=reps[0].data if reps else None)
    ext = path.suffix.lower()
    if ext == ".json":
        return write_json(path, report_json(reps), version=REPORT_VERSION, overwrite=True)
    if ext == ".csv":
        return write_csv(path, [row for r in reps for row in r.csv_rows()], fields=CSV_FIELDS,
                         overwrite=True)
    raise InputError(f"`report` {path}: use a .json or .csv file name")
