"""``video``: upscale a whole video, keep its sound, survive a stop, split across machines.

:func:`upscale_video` is what ``clipsr video`` calls. The order of work:

1. every option is checked, the input indexed (:func:`~clipsr_cli.io.video_read.probe`: header
   and packets, no frame decoded) and the output size judged against the limits, the encoder
   chosen and the streams to copy checked against the output container: every bad input fails
   here, with one line, before a model is loaded or a frame decoded;
2. the settings are decided once per video (:func:`decide_settings`, from the first frames),
   so every segment (and every shard) is made the same way and nothing flickers;
3. the segments (:mod:`~clipsr_cli.tasks.video_plan`) of this shard that are not finished yet
   stream through the engine in batches (bounded memory whatever the video's length; no folder
   of images is ever written) and are written atomically into the work folder;
4. whoever finds every segment finished joins them (:mod:`~clipsr_cli.tasks.video_run`).

Nothing here prints: notes go to :data:`~clipsr_cli.errors.log`, progress to a callback.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from clipsr_cli.errors import InputError, UsageError, log
from clipsr_cli.io.memory import check_output
from clipsr_cli.io.outputs import check_destination
from clipsr_cli.io.video_read import probe
from clipsr_cli.io.video_write import CONTAINERS, EncoderChoice, check_copyable, choose_encoder
from clipsr_cli.io.video_write import legal_size
from clipsr_cli.tasks.outsize import OutputSize, beyond_note
from clipsr_cli.tasks.sources import resolve_shard
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.tasks.checks import check_values
from clipsr_cli.tasks.upscale import DEFAULT_SCALE, check_device_here, check_text
from clipsr_cli.tasks.upscale import load_upscaler
from clipsr_cli.tasks import video_run
from clipsr_cli.tasks.video_plan import (PlanMismatch, Segment, WorkFolder, plan_document,
                                         plan_segments, shard_segments)
from clipsr_cli.tasks.video_run import DiskFullError, VideoProgress

__all__ = ["DiskFullError", "REPORT_VERSION", "VideoProgress", "VideoResult", "VideoSettings", "decide_settings",
           "default_output", "upscale_video", "write_video_report"]

REPORT_VERSION = 1
#: Segment length (seconds, at least; segments start on keyframes): the most work a stop loses.
SEGMENT_SECONDS = 4.0
#: Frames :func:`decide_settings` looks at.
FIRST_FRAMES = 8


@dataclass(frozen=True)
class VideoSettings:
    """Decided once per video and stored in ``plan.json``: every segment, every shard and a
    resumed run use exactly these (see :func:`decide_settings`)."""

    model: str
    scale: int  # the model's (× passes)
    text: str | None
    width: int  # output frame size (encoder-legal)
    height: int
    codec: str
    pix_fmt: str
    crf: int | None
    preset: str | None
    rotation: int  # display rotation of the input, carried to the output
    colour: tuple[int, int, int, int]  # the input's colour tags (space, range, primaries, trc)
    denoise: float  # the degradation strength, one for every frame (see `decide_settings`)
    degradation: str  # why that strength


@dataclass
class VideoResult:
    input: Path
    output: Path
    work_dir: Path
    frames: int  # in the video
    segments: int  # in the video
    shard: tuple[int, int] | None
    settings: VideoSettings | None
    segments_made: list[int] = field(default_factory=list)  # by this run
    segments_resumed: int = 0  # of this shard, finished before this run
    frames_made: int = 0
    corrupt_packets: int = 0
    joined: bool = False
    missing: list[int] = field(default_factory=list)  # segments still to make (other shards)
    seconds: float = 0.0

    def to_report(self) -> dict:
        fps = self.frames_made / self.seconds if self.seconds > 0 else None
        return {"input": str(self.input), "output": str(self.output),
                "work_dir": str(self.work_dir), "frames": self.frames,
                "segments": self.segments,
                "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
                "segments_made": self.segments_made, "segments_resumed": self.segments_resumed,
                "frames_made": self.frames_made, "corrupt_packets": self.corrupt_packets,
                "joined": self.joined, "missing_segments": self.missing,
                "seconds": round(self.seconds, 3), "fps": fps,
                "settings": asdict(self.settings) if self.settings else None}


ProgressFn = Callable[[VideoProgress], None]


def default_output(input: str | os.PathLike, scale: int, suffix: str | None = None) -> Path:
    """``<stem>_x<s>`` (or ``suffix``) beside the input, in its container when clipsr writes
    that one, else ``.mkv``."""
    p = Path(input)
    ext = p.suffix.lower() if p.suffix.lower() in CONTAINERS else ".mkv"
    return p.with_name(f"{p.stem}{suffix if suffix is not None else f'_x{scale}'}{ext}")


def _check_output_size(width: int, height: int, name: str) -> None:
    """The output frames are judged as every output is (:func:`clipsr_cli.io.memory.check_output`:
    the output pixel limit and the memory of one 8-bit RGB frame)."""
    check_output(width, height, bytes_per_pixel=3, what=f"the frames of {name}",
                 hint="use a smaller `scale` or `width`")


def _strength(up, first_frames) -> tuple[float, str]:
    """The one place the degradation strength is chosen for a whole video: ``degradation``'s
    choice (auto: judged on each of the first frames, the median taken), so it never changes
    from frame to frame."""
    from clipsr_cli.tasks.video_run import frame_image

    if not up.blendable or not first_frames:
        s = up.strength_for(frame_image(first_frames[0][1], "frame")) if first_frames else None
        return (s.value, s.reason) if s is not None else (0.0, "no frames")
    found = [up.strength_for(frame_image(rgb, f"frame {pts}")) for pts, rgb, _ in first_frames]
    if len({s.value for s in found}) == 1:
        return found[0].value, found[0].reason
    values = sorted(s.value for s in found)
    return values[len(values) // 2], f"median of the first {len(found)} frames' strengths"


def decide_settings(*, index, up, text: str | None, target: tuple[int, int],
                    choice: EncoderChoice, first_frames) -> VideoSettings:
    """The settings of one video, decided once (see :class:`VideoSettings`): ``first_frames``
    are (pts, rgb, look) of the video's first frames."""
    look = first_frames[0][2] if first_frames else None
    rotation = look.rotation if look else 0
    denoise, why = _strength(up, first_frames)
    return VideoSettings(model=up.name, scale=up.scale, text=text or None, width=target[0],
                         height=target[1], codec=choice.codec, pix_fmt=choice.pix_fmt,
                         crf=choice.crf, preset=choice.preset, rotation=rotation,
                         colour=look.colour if look else (0, 0, 0, 0),
                         denoise=denoise, degradation=why)


def upscale_video(*, input: str | os.PathLike, output: str | os.PathLike | None = None,
                  scale: int | None = None, model: str | None = None, text: str | None = None,
                  outscale: float | None = None, width: int | None = None,
                  height: int | None = None, options: EngineOptions | None = None,
                  codec: str | None = None, crf: int | None = None, preset: str | None = None,
                  pix_fmt: str | None = None, shard: str | tuple[int, int] | None = None,
                  join: bool = False, work_dir: str | os.PathLike | None = None,
                  segment_seconds: float = SEGMENT_SECONDS, overwrite: bool = False,
                  keep_parts: bool = False, progress: ProgressFn | None = None,
                  env: Mapping[str, str] | None = None) -> VideoResult:
    """Upscale the video ``input`` into ``output`` (see the module docstring).

    ``shard`` (``"K/N"``, ``"auto"``): make only shard K's segments; the run that finds every
    segment finished joins them. ``join``: only join (every segment must be finished), with
    the settings the segments were made with (the model and encoder options are not needed).
    ``work_dir``: where segments wait (default ``OUTPUT.parts``; shared storage for shards);
    removed after the join unless ``keep_parts``. Running the same call again resumes.
    ``options``: how the model runs (:class:`EngineOptions`); its ``degradation`` strength is
    decided once, from the first frames, for the whole video."""
    t0 = time.perf_counter()
    # values that can never work: refused before torch loads (tasks.checks), then the device
    check_values(scale=scale)
    options = options or EngineOptions()
    passes, batch_size = options.passes, options.batch_size
    _check_segment_seconds(segment_seconds)
    size = OutputSize.parse(outscale=outscale, width=width, height=height)
    shard_kn = resolve_shard(shard, os.environ if env is None else env)
    src = Path(input).expanduser()
    known_scale = (scale or (DEFAULT_SCALE if model is None else None))
    if known_scale is not None:
        known_scale = known_scale ** passes
    dest0 = Path(output).expanduser() if output is not None else default_output(
        src, known_scale or DEFAULT_SCALE, size.suffix if size else None)
    choice = choose_encoder(output=dest0, codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
    check_device_here(options)
    if output is not None:  # an existing output fails before any work
        check_destination(dest0, source=src, overwrite=overwrite)
    if join:
        return _join_only(src, dest0, work_dir, container=choice.container, shard=shard_kn,
                          overwrite=overwrite, keep_parts=keep_parts, started=t0)

    def header_check(w: int, h: int) -> None:
        from clipsr_cli.io.formats import check_dimensions

        check_dimensions(w, h, src.name)
        if known_scale is not None:
            _check_output_size(*_target(size, w, h, known_scale, choice, src.name), src.name)

    index = probe(src, check_size=header_check)
    check_copyable(src, [s.index for s in index.streams], choice.container)
    up = load_upscaler(model=model, scale=scale, options=options)
    check_text(up, text)
    dest = Path(output).expanduser() if output is not None else default_output(
        src, up.scale, size.suffix if size else None)
    target = _frame_size(size, index, up.scale, choice, src.name)
    folder = WorkFolder(Path(work_dir).expanduser() if work_dir is not None
                        else dest.with_name(dest.name + ".parts"))
    check_destination(dest, source=src, overwrite=overwrite)
    segments = plan_segments(index, segment_seconds)
    first = video_run.first_frames(index, segments, FIRST_FRAMES)
    settings = decide_settings(index=index, up=up, text=text, target=target, choice=choice,
                               first_frames=first)
    if up.blendable:
        log.info(f"denoise {settings.denoise:.2f} for every frame ({settings.degradation})")
    result = VideoResult(input=src, output=dest, work_dir=folder.path, frames=index.frames,
                         segments=len(segments), shard=shard_kn, settings=settings)
    resumed = folder.prepare(plan_document(index, segments, settings))
    mine = shard_segments(segments, shard_kn)
    video_run.make_segments(up, index, folder, mine, settings, choice, result,
                            batch_size=batch_size, resumed=resumed, progress=progress,
                            started=t0)
    video_run.finish(folder, index, segments, settings, choice.container, result, join=False,
                     overwrite=overwrite, keep_parts=keep_parts)
    result.seconds = time.perf_counter() - t0
    return result


def _check_segment_seconds(segment_seconds: float) -> None:
    if isinstance(segment_seconds, bool) or not isinstance(segment_seconds, (int, float)) \
            or not 0 < segment_seconds < float("inf"):
        raise UsageError(f"`segment_seconds` must be > 0, not {segment_seconds!r}",
                         param="segment_seconds")


def _frame_size(size: OutputSize | None, index, scale: int, choice: EncoderChoice,
                name: str) -> tuple[int, int]:
    """The output frames' (width, height), checked; a note says when it differs from the size
    asked for (even sides for the pixel format) or goes beyond the model's scale."""
    target = _target(size, index.width, index.height, scale, choice, name)
    _check_output_size(*target, name)
    asked = (size.target(index.width, index.height) if size is not None
             else (index.width * scale, index.height * scale))
    if target != asked:
        log.info(f"{choice.pix_fmt} needs even sides: frames are {target[0]}×{target[1]}, not "
                 f"{asked[0]}×{asked[1]} (resized to it)")
    if (note := beyond_note(size, scale)) is not None:
        log.info(note)
    return target


def _join_only(src: Path, dest: Path, work_dir, *, container: str, shard, overwrite: bool,
               keep_parts: bool, started: float) -> VideoResult:
    """``join``: the settings and segments come from the work folder's ``plan.json`` (what the
    shards decided), so no model is loaded and no option has to be repeated."""
    folder = WorkFolder(Path(work_dir).expanduser() if work_dir is not None
                        else dest.with_name(dest.name + ".parts"))
    plan = folder.read_plan()
    index = probe(src)
    if plan.get("fingerprint") != index.fingerprint:
        raise PlanMismatch(f"{folder.path} holds segments of another input video than "
                           f"{src.name}; pass the video the segments were made from")
    check_destination(dest, source=src, overwrite=overwrite)
    check_copyable(src, [s.index for s in index.streams], container)
    try:
        settings = VideoSettings(**plan["settings"])
        segments = tuple(Segment(i, int(a), None if b is None else int(b), int(n))
                         for i, (a, b, n) in enumerate(plan["segments"]))
    except (TypeError, ValueError, KeyError):
        raise PlanMismatch(f"{folder.plan_file} is not a plan this clipsr wrote; delete "
                           f"{folder.path} and run again") from None
    result = VideoResult(input=src, output=dest, work_dir=folder.path, frames=index.frames,
                         segments=len(segments), shard=shard, settings=settings)
    video_run.finish(folder, index, segments, settings, container, result, join=True,
                     overwrite=overwrite, keep_parts=keep_parts)
    result.seconds = time.perf_counter() - started
    return result


def _target(size: OutputSize | None, w: int, h: int, scale: int, choice: EncoderChoice,
            name: str) -> tuple[int, int]:
    """The output frame size: the model's (or the asked) size, made encoder-legal."""
    try:
        tw, th = size.target(w, h, name=name) if size is not None else (w * scale, h * scale)
    except InputError as e:  # both `width` and `height`, another shape: the options conflict
        raise UsageError(str(e), param="height") from None
    return legal_size(tw, th, choice.pix_fmt)


def write_video_report(path: str | os.PathLike, result: VideoResult) -> Path:
    """``result`` as strict JSON (atomic; replaces an old report). ``{shard}`` in ``path``
    becomes ``KofN``, as in ``batch``."""
    from clipsr_cli.io.reports import write_json

    if "{shard}" in os.fspath(path):
        k, n = result.shard or (1, 1)
        path = os.fspath(path).replace("{shard}", f"{k}of{n}")
    return write_json(path, result.to_report(), version=REPORT_VERSION, overwrite=True)
