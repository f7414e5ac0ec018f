"""``video``'s work: frames through the engine segment by segment, and the join.

* :func:`make_segments`: each unfinished segment of this shard is decoded from its keyframe,
  upscaled in batches (:meth:`~clipsr_cli.infer.base.Engine.upscale_images`), resized when a size
  was asked, and encoded into the work folder through the one atomic writer: a stop (Ctrl-C, a
  kill) loses at most the segment being made, and never leaves a partial segment file.
* :func:`finish`: whoever finds every segment finished joins them into the output (atomically,
  under a lock so two shards finishing together join once), then clears the work folder.

A full disk is one line saying about how much more space is needed; finished segments stay.
"""

from __future__ import annotations

import errno
import shutil
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clipsr_cli.errors import ClipsrError, InputError, OutputExistsError, log
from clipsr_cli.io.atomic import atomic_write
from clipsr_cli.io.video_read import DecodeStats, VideoIndex, decode_frames
from clipsr_cli.io.video_write import EncoderChoice, SegmentEncoder, join as join_segments
from clipsr_cli.tasks.video_plan import Segment, WorkFolder

__all__ = ["DiskFullError", "VideoProgress", "finish", "first_frames", "frame_image",
           "make_segments"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@dataclass(frozen=True)
class VideoProgress:
    """What the ``progress`` callback hears after each batch of frames."""

    frames_done: int  # in this run's share (this shard), finished segments included
    frames_total: int
    fps: float  # frames per second so far in this run
    eta_seconds: float | None
    segments_done: int
    segments_total: int  # of this shard
    segment_finished: bool = False  # True once per segment, when its file is written


class DiskFullError(ClipsrError):
    """The disk filled up; finished segments are kept for the next run."""


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GB"


def first_frames(index: VideoIndex, segments: Sequence[Segment], n: int):
    """(pts, rgb, look) of the video's first ``n`` frames (what settings are decided from)."""
    return list(decode_frames(index.path, segments[0].start, None, min(n, index.frames),
                              DecodeStats()))


def _offset(index: VideoIndex) -> int:
    """Added to every pts in segment files, which hold none below 0."""
    return max(0, -index.pts[0])


def frame_image(rgb: np.ndarray, name: str):
    """A decoded frame as the engine takes images (torch imported here: usage errors are
    answered before it loads)."""
    import torch

    from clipsr_cli.io.images import LoadedImage

    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255)
    return LoadedImage(rgb=t, alpha=None, bit_depth=8, grayscale=False, icc_profile=None,
                       exif=None, format=None, source=name)


def _upscaled(up, frames, settings, batch: int):
    """Yield (pts, rgb) of ``frames`` ((pts, rgb, look)) upscaled ``batch`` at a time."""
    from clipsr_cli.tasks.outsize import resize_output

    target = (settings.width, settings.height)
    pending: list = []

    def run(items):
        images = [frame_image(rgb, f"frame {pts}") for pts, rgb, _ in items]
        outs = up.upscale_images(images, [settings.text] * len(images),
                                 strength=settings.denoise)
        for (pts, _, _), (rgb, _) in zip(items, outs):
            if rgb.shape[1] != target[0] or rgb.shape[0] != target[1]:
                rgb, _ = resize_output(rgb, None, target)
            yield pts, rgb

    for item in frames:
        pending.append(item)
        if len(pending) >= batch:
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)


def make_segments(up, index: VideoIndex, folder: WorkFolder, mine: Sequence[Segment], settings,
                  choice: EncoderChoice, result, *, batch_size: int, resumed: bool, progress,
                  started: float) -> None:
    """Make this shard's unfinished segments (see the module docstring)."""
    done = set(folder.done(mine))
    result.segments_resumed = len(done)
    if done:
        log.info(f"resuming: {len(done)} of {len(mine)} segments "
                 f"{'of this shard ' if result.shard else ''}are already in {folder.path}")
    elif resumed:
        log.info(f"using the work folder {folder.path}")
    total = sum(s.frames for s in mine)
    state = {"done": sum(s.frames for s in mine if s.index in done), "made": 0,
             "segments": len(done)}
    batch = up.batch_limit(index.height, index.width, batch_size)
    t_run = time.perf_counter()

    def report(finished: bool = False) -> None:
        if progress is None:
            return
        dt = time.perf_counter() - t_run
        fps = state["made"] / dt if dt > 0 else 0.0
        left = total - state["done"]
        progress(VideoProgress(frames_done=state["done"], frames_total=total, fps=fps,
                               eta_seconds=left / fps if fps > 0 else None,
                               segments_done=state["segments"], segments_total=len(mine),
                               segment_finished=finished))

    report()
    for seg in mine:
        if seg.index in done:
            continue
        stats = DecodeStats()
        written = {"bytes": 0, "frames": 0}

        def encode(f) -> None:
            enc = SegmentEncoder(f, choice=choice, width=settings.width, height=settings.height,
                                 time_base=index.time_base, rate=index.rate,
                                 rotation=settings.rotation, offset=_offset(index),
                                 colour=tuple(settings.colour))
            try:
                frames = decode_frames(index.path, seg.start, seg.end, seg.frames, stats)
                for pts, rgb in _upscaled(up, frames, settings, batch):
                    enc.add(rgb, pts)
                    state["done"] += 1
                    state["made"] += 1
                    written["frames"] += 1
                    written["bytes"] = f.tell()
                    if written["frames"] % batch == 0:
                        report()
                enc.close()
            except BaseException:
                enc.abort()
                raise

        try:
            atomic_write(folder.segment(seg.index), encode, overwrite=True)
        except OSError as e:
            if e.errno not in _FULL:
                raise
            raise _disk_full(folder, index, mine, written, e) from None
        if written["frames"] < seg.frames:  # corrupt packets: their frames are missing
            state["done"] += seg.frames - written["frames"]
        if stats.corrupt_packets:
            log.warning(f"segment {seg.index}: {stats.corrupt_packets} corrupt packet(s) "
                        f"skipped, {seg.frames - written['frames']} frame(s) left out")
        result.corrupt_packets += stats.corrupt_packets
        result.frames_made += written["frames"]
        result.segments_made.append(seg.index)
        state["segments"] += 1
        report(finished=True)


def _disk_full(folder: WorkFolder, index: VideoIndex, mine: Sequence[Segment], written: dict,
               e: OSError) -> DiskFullError:
    """How much more space the work needs, from the finished segments' size per frame."""
    done = [s for s in mine if folder.segment(s.index).is_file()]
    size = sum(folder.segment(s.index).stat().st_size for s in done)
    frames = sum(s.frames for s in done)
    per_frame = size / frames if frames else (written["bytes"] / max(1, written["frames"]))
    left = sum(s.frames for s in mine if s not in done)
    need = per_frame * (left + index.frames)  # the segments still to make, then the joined file
    try:
        free = shutil.disk_usage(folder.path).free
    except OSError:
        free = 0
    return DiskFullError(f"the disk holding {folder.path} is full ({e.strerror or e}); finishing "
                         f"needs about {_mb(need)} ({left} frames still to make, then the joined "
                         f"output; {_mb(free)} free now); free space (or pass `work_dir` on "
                         f"another disk) and run the same command again: the {len(done)} "
                         "finished segment(s) are kept")


def finish(folder: WorkFolder, index: VideoIndex, segments: Sequence[Segment], settings,
           container: str, result, *, join: bool, overwrite: bool,
           keep_parts: bool) -> None:
    """Join the segments into the output when every one is finished (see the module
    docstring); otherwise say what is missing (InputError when ``join`` was asked)."""
    from filelock import FileLock

    done = set(folder.done(segments))
    missing = [s.index for s in segments if s.index not in done]
    result.missing = missing
    if missing:
        some = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        if join:
            raise InputError(f"cannot join yet: {len(missing)} of {len(segments)} segments are "
                             f"not finished (segments {some}); run the shards that make them, "
                             "or run again without `join` to make them here")
        log.info(f"{len(done)} of {len(segments)} segments are finished; the run that finishes "
                 f"the last one joins them into {result.output} (or run again with `join=True`)")
        return
    with FileLock(str(folder.path / "join.lock")):
        if not folder.plan_file.exists():  # another shard joined while this one waited
            log.info(f"{result.output} was joined by another run")
            return
        paths = [folder.segment(s.index) for s in segments]
        try:
            atomic_write(result.output, lambda f: join_segments(
                paths, input=index.path, copy=[s.index for s in index.streams], file=f,
                container=container, time_base=index.time_base, frame_pts=index.pts,
                last_duration=index.last_duration, offset=_offset(index),
                rotation=settings.rotation), overwrite=overwrite)
        except FileExistsError:
            raise OutputExistsError(f"{result.output} appeared meanwhile; pass `overwrite=True` "
                                    "to replace it", path=result.output) from None
        except OSError as e:
            if e.errno not in _FULL:
                raise
            need = sum(p.stat().st_size for p in paths) + index.path.stat().st_size
            raise DiskFullError(f"the disk holding {result.output} is full; joining needs up to "
                                f"{_mb(need)} (the segments plus the copied streams); free space "
                                "and run again with `join=True`: every segment is kept") from None
        result.joined = True
        log.info(f"{result.output}: {index.frames} frames from {len(segments)} segment(s)")
        if not keep_parts:
            _clear(folder, len(segments))


def _clear(folder: WorkFolder, n: int) -> None:
    """Remove what clipsr put in the work folder (only that), and the folder once empty."""
    for p in [folder.segment(i) for i in range(n)] + [folder.plan_file,
                                                       folder.path / "join.lock"]:
        p.unlink(missing_ok=True)
    try:
        folder.path.rmdir()
    except OSError:  # something else is in it (a `work_dir` with other files): kept
        pass

