"""Writing videos with PyAV (torch-free): the encoder, segment files and the final join.

* :func:`choose_encoder` decides the codec, pixel format and options once, from the output's
  container and ``codec`` / ``crf`` / ``preset`` / ``pix_fmt``; a value that can never work is
  one :class:`~clipsr_cli.errors.UsageError` line, before any frame is decoded.
* :func:`legal_size`: an encoder-legal frame size. Chroma-subsampled pixel formats (``yuv420p``:
  both sides, ``yuv422p``: the width) need even sides: an odd side is made one pixel smaller (the
  frame is resized to it, never stretched by more than that pixel).
* :class:`SegmentEncoder` encodes frames into one segment file (NUT: FFmpeg's own container,
  which keeps any time base exactly) with the input's timestamps, so variable frame rates survive.
* :func:`join` copies the segments' video packets and the input's audio and subtitle packets,
  unchanged, into the output container (no re-encoding), interleaved by time.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from clipsr_cli.errors import InputError, UsageError

__all__ = ["CONTAINERS", "EncoderChoice", "SegmentEncoder", "check_copyable", "choose_encoder",
           "container_format", "join", "legal_size"]

#: Output extensions and the FFmpeg muxer for each.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
#: Encoders tried in order when none is asked for: the best the installed FFmpeg build has.
_DEFAULT_ENCODERS = {"webm": ("libvpx-vp9", "libsvtav1", "libaom-av1"),
                     "other": ("libx264", "libx265", "libopenh264", "mpeg4")}
#: Defaults for encoders with a CRF: 18 is "visually lossless" for x264 (what an upscale wants;
#: FFmpeg's own default, 23, visibly softens the detail the model adds).
_DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libsvtav1": 24, "libaom-av1": 24}
_DEFAULT_PRESET = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8"}
_SEGMENT_FORMAT = "nut"
#: Colour matrices (FFmpeg's AVColorSpace numbers) swscale converts with: BT.709, FCC, BT.601
#: (470BG, SMPTE 170M), SMPTE 240M, BT.2020.
_SWS_SPACES = {1, 4, 5, 6, 7, 9, 10}


@dataclass(frozen=True)
class EncoderChoice:
    """How every segment of a video is encoded (decided once, stored with the segments)."""

    codec: str
    pix_fmt: str
    crf: int | None
    preset: str | None
    container: str  # the output's muxer

    def options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.crf is not None:
            opts["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                opts["b"] = "0"  # constant quality, no bitrate cap
        if self.preset is not None:
            opts["preset"] = self.preset
        return opts


def container_format(path: str | os.PathLike) -> str:
    """The muxer for ``path``'s extension; UsageError for one clipsr does not write."""
    fmt = CONTAINERS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the video container of {Path(path).name}; end `output` "
                         f"with {', '.join(CONTAINERS)}", param="output")
    return fmt


def _video_encoders() -> list[str]:
    import av

    found = []
    for name in sorted(av.codecs_available):
        try:
            c = av.codec.Codec(name, "w")
        except Exception:  # decoders only, or unavailable
            continue
        if c.type == "video" and not c.name.endswith(("_vaapi", "_v4l2m2m", "_qsv")):
            found.append(c.name)
    return found


def _private_options(codec: str) -> set[str]:
    import av

    return {o.name for o in av.CodecContext.create(codec, "w").supported_options.private}


def choose_encoder(*, output: str | os.PathLike, codec: str | None = None,
                   crf: int | None = None, preset: str | None = None,
                   pix_fmt: str | None = None) -> EncoderChoice:
    """The encoder for ``output`` (see the module docstring); UsageError for an unknown codec,
    one that is not a video encoder, a ``crf``/``preset`` it has no such setting for, or a
    pixel format it cannot take."""
    import av

    container = container_format(output)
    if codec is None:
        candidates = _DEFAULT_ENCODERS["webm" if container == "webm" else "other"]
        codec = next((c for c in candidates if c in av.codecs_available), None)
        if codec is None:
            raise UsageError(f"this FFmpeg build has none of the encoders {', '.join(candidates)}"
                             "; pass `codec`", param="codec")
    try:
        found = av.codec.Codec(codec, "w")
    except Exception:
        common = [c for c in ("libx264", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1",
                              "mpeg4", "ffv1") if c in _video_encoders()]
        raise UsageError(f"unknown video encoder {codec!r}; this FFmpeg build has e.g. "
                         f"{', '.join(common)}", param="codec") from None
    if found.type != "video":
        raise UsageError(f"{codec!r} is an {found.type} encoder; pass a video encoder such as "
                         "libx264", param="codec")
    codec = found.name
    private = _private_options(codec)
    if crf is not None:
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 63:
            raise UsageError(f"`crf` must be a whole number from 0 to 63, not {crf!r}",
                             param="crf")
        if "crf" not in private:
            raise UsageError(f"encoder {codec} has no CRF setting; drop `crf` or pick libx264, "
                             "libx265, libvpx-vp9 or libsvtav1", param="crf")
    else:
        crf = _DEFAULT_CRF.get(codec) if "crf" in private else None
    if preset is not None:
        if "preset" not in private:
            raise UsageError(f"encoder {codec} has no preset setting; drop `preset`",
                             param="preset")
        preset = str(preset)
    else:
        preset = _DEFAULT_PRESET.get(codec) if "preset" in private else None
    formats = [f.name for f in (found.video_formats or ())]
    if pix_fmt is None:
        pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
    elif formats and pix_fmt not in formats:
        raise UsageError(f"encoder {codec} cannot take pixel format {pix_fmt!r}; it takes "
                         f"{', '.join(formats[:8])}", param="pix_fmt")
    else:
        try:
            av.VideoFormat(pix_fmt)
        except Exception:
            raise UsageError(f"unknown pixel format {pix_fmt!r} (e.g. yuv420p, yuv444p)",
                             param="pix_fmt") from None
    return EncoderChoice(codec=codec, pix_fmt=pix_fmt, crf=crf, preset=preset,
                         container=container)


def legal_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """(width, height) made legal for ``pix_fmt``: each side that chroma subsampling halves is
    rounded down to even (at least 2)."""
    import av

    fmt = av.VideoFormat(pix_fmt)
    if fmt.chroma_width(3) * 2 == 4:  # 3 px give 2 chroma px: the width is subsampled
        width = max(2, width - width % 2)
    if fmt.chroma_height(3) * 2 == 4:
        height = max(2, height - height % 2)
    return width, height


class SegmentEncoder:
    """Encode frames (RGB uint8 arrays with pts in ``time_base``) into one segment file."""

    def __init__(self, file: BinaryIO, *, choice: EncoderChoice, width: int, height: int,
                 time_base: Fraction, rate: Fraction | None, rotation: int = 0, offset: int = 0,
                 colour: tuple[int, int, int, int] = (0, 0, 0, 0)):
        import av

        self._av = av
        # NUT keeps pts exactly but stores none below 0 (hence ``offset``) and no dts
        # (:func:`join` makes them again)
        self._out = av.open(file, "w", format=_SEGMENT_FORMAT,
                            options={"avoid_negative_ts": "disabled"})
        self._offset = offset
        stream = self._out.add_stream(choice.codec, rate=rate or Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, choice.pix_fmt
        cc = stream.codec_context
        cc.time_base = time_base  # the input's: every frame keeps its exact timestamp
        stream.time_base = time_base
        cc.options = choice.options()
        if rotation:
            stream.set_display_rotation(rotation)
        # the input's colour tags, and its matrix and range for RGB -> YUV (unset: BT.601,
        # limited range, as FFmpeg assumes for untagged video)
        space, rng, primaries, trc = colour
        cc.colorspace, cc.color_range = space, rng
        cc.color_primaries, cc.color_trc = primaries, trc
        self._space = space if space in _SWS_SPACES else None
        self._range = rng or None
        self._rgb_out = av.VideoFormat(choice.pix_fmt).is_rgb
        self._pix_fmt = choice.pix_fmt
        self._stream = stream
        self._time_base = time_base
        self.frames = 0

    def add(self, rgb: np.ndarray, pts: int) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if not self._rgb_out:
            frame = frame.reformat(format=self._pix_fmt, dst_colorspace=self._space,
                                   dst_color_range=self._range)
        frame.pts, frame.time_base = pts + self._offset, self._time_base
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (call once, after the last frame)."""
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()

    def abort(self) -> None:
        try:
            self._out.close()
        except Exception:  # the file is thrown away anyway
            pass


def check_copyable(input: Path, streams: Sequence[int], container: str) -> None:
    """InputError if a stream to copy cannot go into ``container`` (e.g. SRT subtitles into
    MP4); judged on an empty in-memory file, before any frame is decoded."""
    import io

    import av

    from clipsr_cli.io.video_read import open_input

    with open_input(input) as src:
        for i in streams:
            s = src.streams[i]
            buf = io.BytesIO()
            try:
                with av.open(buf, "w", format=container) as out:
                    out.add_stream_from_template(s)
                    out.start_encoding()
            except (av.error.FFmpegError, ValueError):
                name = s.codec_context.name if s.codec_context else "unknown"
                raise InputError(f"the {s.type} stream #{i} ({name}) of {input.name} cannot be "
                                 f"copied into {container.upper()}; write .mkv instead (it holds "
                                 "any codec)") from None


def _packets(container, streams) -> Iterator:
    for packet in container.demux(streams):
        if packet.size == 0 or packet.dts is None and packet.pts is None:
            continue
        yield packet


def reorder_delay(pts: Sequence[int]) -> int:
    """The least reorder delay ``d`` of packets in decode order (``pts``): the ``i``-th packet is
    shown no earlier than the ``i - d``-th smallest pts."""
    rank = {t: i for i, t in enumerate(sorted(pts))}
    return max([0] + [i - rank[t] for i, t in enumerate(pts)])


def decode_times(pts: Sequence[int], delay: int, after: int | None = None) -> list[int]:
    """Decode timestamps for one segment's packets (``pts`` in decode order), which segment
    files do not keep, as an encoder with reorder ``delay`` makes them: ``dts[i]`` = the
    ``(i - delay)``-th smallest pts, the first ``delay`` ones extrapolated before the first
    frame; each kept above ``after`` (the previous segment's last) so they keep increasing."""
    order = sorted(pts)
    lead = order[min(delay, len(order) - 1)] - order[0]
    out = []
    last = after
    for i, t in enumerate(pts):
        dts = order[i - delay] if i >= delay else order[i] - lead
        if last is not None and dts <= last:
            dts = last + 1
        if dts > t:
            raise InputError("the segments' timestamps overlap; delete the work folder and run "
                             "again")
        out.append(dts)
        last = dts
    return out


def join(segments: Sequence[Path], *, input: Path, copy: Sequence[int], file: BinaryIO,
         container: str, time_base: Fraction, frame_pts: Sequence[int], last_duration: int,
         offset: int = 0, rotation: int = 0) -> int:
    """Write the output: the video packets of ``segments`` (in order; their pts are the input's
    plus ``offset``, in ``time_base``) and the packets of the input's streams ``copy``,
    unchanged, interleaved by time; return the video packets written. Each frame lasts until
    the input's next frame (``frame_pts``, sorted), the last one ``last_duration``."""
    import bisect

    import av

    from clipsr_cli.io.video_read import open_input

    def duration(t: int) -> int:
        i = bisect.bisect_right(frame_pts, t)
        return frame_pts[i] - t if i < len(frame_pts) else last_duration

    def segment_packets(path: Path) -> tuple[list, list[int]]:
        """One segment's packets (a few MB) and their pts in the input's time base (exact:
        the segment's time base is a multiple of it)."""
        with av.open(str(path), "r") as c:
            packets = list(_packets(c, c.streams.video[0]))
        return packets, [round(p.pts * p.time_base / time_base) - offset for p in packets]

    delay = max(reorder_delay(segment_packets(p)[1]) for p in segments)

    def video() -> Iterator:
        last = None
        for path in segments:
            packets, pts = segment_packets(path)
            dts_list = decode_times(pts, delay, last)
            last = dts_list[-1] if dts_list else last
            for packet, t, dts in zip(packets, pts, dts_list):
                packet.pts, packet.dts, packet.time_base = t, dts, time_base
                packet.duration = duration(t)
                yield packet

    def key(packet) -> float:
        t = packet.dts if packet.dts is not None else packet.pts
        return float(t * packet.time_base)

    with av.open(str(segments[0]), "r") as first, av.open(file, "w", format=container) as out:
        vout = out.add_stream_from_template(first.streams.video[0])
        vout.time_base = time_base
        if rotation:
            vout.set_display_rotation(rotation)
        if not copy:
            written = 0
            for packet in video():
                packet.stream = vout
                out.mux(packet)
                written += 1
            return written
        with open_input(input) as src:
            outs = {i: out.add_stream_from_template(src.streams[i]) for i in copy}
            sources = (((key(p), 0, n), p, vout) for n, p in enumerate(video()))
            others = (((key(p), 1, n), p, outs[p.stream.index])
                      for n, p in enumerate(_packets(src, [src.streams[i] for i in copy])))
            written = 0
            for _, packet, ostream in heapq.merge(sources, others, key=lambda x: x[0]):
                packet.stream = ostream
                out.mux(packet)
                written += ostream is vout
            return written
