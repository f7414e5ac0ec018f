"""Reading videos with PyAV (FFmpeg's libraries inside the ``av`` wheel; torch-free).

* :func:`probe` opens a file and indexes its video stream **without decoding a frame**: the
  packets' timestamps, sizes and keyframe flags (a demux pass, as fast as reading the file),
  the frame size from the codec parameters, and the other streams (audio, subtitles) to copy.
  Not a video, an audio-only file, a video without frames or without timestamps, a frame size
  over the limits: one :class:`~clipsr_cli.errors.InputError` line each, before any work.
* :func:`decode_frames` decodes the frames whose timestamps lie in ``[start, end)`` (seeking to
  the keyframe at or before ``start``): RGB arrays with their timestamps. A packet the decoder
  refuses (corrupt data) is skipped and counted, never raised.

Timestamps are kept in the stream's own time base (integers), so nothing is rounded: a
variable-frame-rate video keeps every frame's time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from clipsr_cli.errors import InputError

__all__ = ["DecodeStats", "FrameLook", "StreamInfo", "VideoIndex", "decode_frames", "open_input", "probe"]


@dataclass(frozen=True)
class StreamInfo:
    """A non-video stream, copied packet for packet into the output."""

    index: int
    type: str  # "audio", "subtitle", "data", ...
    codec: str


@dataclass(frozen=True)
class VideoIndex:
    """What a video is, from its header and a demux pass (no frame decoded)."""

    path: Path
    width: int
    height: int
    codec: str
    time_base: Fraction  # of the video stream: every pts below is in it
    rate: Fraction | None  # the average frame rate (None if the file does not say)
    pts: tuple[int, ...]  # every frame's presentation timestamp, sorted
    keyframes: tuple[int, ...]  # pts of the keyframe packets, sorted
    streams: tuple[StreamInfo, ...]  # the other streams (audio, subtitles), in file order
    fingerprint: str  # identifies the file's video packets (size, timestamps, packet sizes)
    last_duration: int  # of the last frame, in time_base (from its packet, else the median step)

    @property
    def frames(self) -> int:
        return len(self.pts)

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last."""
        return float((self.pts[-1] - self.pts[0] + self.last_duration) * self.time_base)


@dataclass(frozen=True)
class FrameLook:
    """How a decoded frame is to be shown: carried to the output unchanged."""

    rotation: int  # display rotation in degrees
    colour: tuple[int, int, int, int]  # FFmpeg's colorspace, range, primaries, transfer (0: unset)


@dataclass
class DecodeStats:
    """Counts :func:`decode_frames` keeps while it runs."""

    decoded: int = 0
    corrupt_packets: int = 0  # packets the decoder refused: their frames are skipped


def open_input(path: str | os.PathLike):
    """``av.open`` for reading, with every failure as one InputError line."""
    import av

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"{p} is a folder; pass a video file")
    try:
        return av.open(str(p), "r")
    except (av.error.InvalidDataError, av.error.DemuxerNotFoundError, av.error.EOFError,
            UnicodeDecodeError, ValueError):
        raise InputError(f"{p} is not a video file FFmpeg can read; pass a video (MP4, MKV, "
                         "MOV, WebM, AVI, ...)") from None
    except av.error.FFmpegError as e:
        raise InputError(f"cannot open {p} as a video ({e.strerror or e}); pass a readable "
                         "video file") from None
    except OSError as e:
        raise InputError(f"cannot read {p} ({e.strerror or e})") from None


def probe(path: str | os.PathLike, *, check_size=None) -> VideoIndex:
    """Index the first video stream of ``path`` (see the module docstring).

    ``check_size(width, height)`` is called with the frame size from the header before the
    demux pass, to refuse a video over the limits before anything else is read."""
    import av

    p = Path(path)
    with open_input(p) as container:
        video = next((s for s in container.streams if s.type == "video"
                      and not s.disposition & av.stream.Disposition.attached_pic), None)
        if video is None:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise InputError(f"{p} has no video stream (it holds {', '.join(kinds)}); pass a "
                             "video file")
        cc = video.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise InputError(f"{p}: its video stream states no frame size; the file is damaged")
        if check_size is not None:
            check_size(width, height)
        tb = video.time_base
        if tb is None or tb <= 0:
            raise InputError(f"{p}: its video stream has no time base; the file is damaged")
        pts: list[int] = []
        keys: list[int] = []
        durations: dict[int, int] = {}
        digest = hashlib.sha256(f"{p.stat().st_size}:{width}x{height}:{tb}".encode())
        try:
            for packet in container.demux(video):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    raise InputError(f"{p}: its video packets carry no timestamps (a raw "
                                     "stream); put it in a container first (MKV or MP4)")
                pts.append(int(t))
                if packet.duration:
                    durations[int(t)] = int(packet.duration)
                if packet.is_keyframe:
                    keys.append(int(t))
                digest.update(f"{t},{packet.size};".encode())
        except av.error.FFmpegError as e:
            if not pts:
                raise InputError(f"{p} cannot be read ({e.strerror or e}); the file is damaged "
                                 "or not a video") from None
            # a damaged tail: index what could be read; decoding reports the rest
        if not pts:
            raise InputError(f"{p} has a video stream but no frames; pass a video with frames")
        pts = sorted(set(pts))
        keys = sorted(set(keys)) or [pts[0]]
        rate = video.average_rate or video.guessed_rate
        last = durations.get(pts[-1])
        if not last:
            if len(pts) > 1:
                last = int(np.median(np.diff(np.asarray(pts, dtype=np.int64))))
            else:
                last = max(1, round(1 / (rate * tb))) if rate else 1
        others = tuple(StreamInfo(s.index, s.type, s.codec_context.name if s.codec_context
                                  else "unknown")
                       for s in container.streams if s.index != video.index
                       and s.type in ("audio", "subtitle"))
        return VideoIndex(path=p, width=width, height=height, codec=cc.name, time_base=tb,
                          rate=Fraction(rate) if rate else None, pts=tuple(pts),
                          keyframes=tuple(keys), streams=others,
                          fingerprint=digest.hexdigest()[:32], last_duration=int(last))


def decode_frames(path: str | os.PathLike, start: int, end: int | None, expected: int,
                  stats: DecodeStats) -> Iterator[tuple[int, np.ndarray, FrameLook]]:
    """Yield ``(pts, rgb, look)`` for the frames of the first video stream with
    ``start <= pts < end`` (``end`` None: to the end), in presentation order: ``rgb`` an
    (H, W, 3) uint8 array converted with the frame's own colour matrix and range, ``look`` its
    rotation and colour tags.

    Decoding starts at the keyframe at or before ``start`` and stops once ``expected`` frames
    came out, or (when packets were corrupt) at the second keyframe at or after ``end``, which
    covers frames an open GOP shows before its keyframe."""
    import av

    with open_input(path) as container:
        video = next(s for s in container.streams if s.type == "video"
                     and not s.disposition & av.stream.Disposition.attached_pic)
        video.thread_type = "AUTO"
        container.seek(start, stream=video, backward=True, any_frame=False)
        keys_after_end = 0
        got = 0

        def wanted(frames) -> Iterator[tuple[int, np.ndarray, FrameLook]]:
            nonlocal got
            for frame in frames:
                t = frame.pts
                if t is None or t < start or (end is not None and t >= end):
                    continue
                stats.decoded += 1
                got += 1
                rng = int(frame.color_range or 0)
                rgb = frame.to_ndarray(format="rgb24", src_color_range=rng or None)
                look = FrameLook(int(frame.rotation or 0),
                                 (int(frame.colorspace or 0), rng,
                                  int(frame.color_primaries or 0), int(frame.color_trc or 0)))
                yield int(t), rgb, look

        for packet in container.demux(video):
            if packet.size and end is not None and packet.is_keyframe:
                t = packet.pts if packet.pts is not None else packet.dts
                if t is not None and t >= end:
                    keys_after_end += 1
                    if keys_after_end >= 2:
                        break
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.ExternalError, av.error.BugError):
                stats.corrupt_packets += 1
                continue
            yield from wanted(frames)
            if got >= expected:
                return
        try:
            frames = video.decode(None)  # flush the decoder's delayed frames
        except av.error.EOFError:  # already flushed by the demuxer's last packet
            return
        except (av.error.InvalidDataError, av.error.ExternalError, av.error.BugError):
            stats.corrupt_packets += 1
            return
        yield from wanted(frames)
