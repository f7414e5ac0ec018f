"""How ``video`` cuts its work: segments on keyframes, the work folder, shards (torch-free).

* :func:`plan_segments`: consecutive runs of frames, each starting at a keyframe and lasting at
  least ``segment_seconds`` (the last may be shorter). A segment is the unit of resume and of
  sharding: it is decoded from its keyframe, upscaled and encoded on its own, and written
  atomically as one file.
* :class:`WorkFolder`: ``OUTPUT.parts/`` (or ``work_dir``) holds ``plan.json`` (the input's
  fingerprint, the settings decided once and the segments) and ``seg-NNNNN.nut`` for each
  finished segment. A run, another shard or a resumed run must agree with ``plan.json``
  (``PlanMismatch`` otherwise), so every segment of one output is made the same way.
* :func:`shard_segments`: shard K of N takes segments K-1, K-1+N, ... (round robin: balanced,
  and each segment, so each frame, is made by exactly one shard).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from clipsr_cli.errors import InputError
from clipsr_cli.io.atomic import atomic_write_bytes, remove_stale_temporaries
from clipsr_cli.io.video_read import VideoIndex

__all__ = ["PLAN_VERSION", "PlanMismatch", "Segment", "WorkFolder", "plan_document",
           "plan_segments", "shard_segments"]

PLAN_VERSION = 1


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # pts of its first frame (a keyframe, except possibly segment 0)
    end: int | None  # pts where the next segment starts (None: the last segment)
    frames: int  # frames the index lists in [start, end)


def plan_segments(index: VideoIndex, segment_seconds: float) -> tuple[Segment, ...]:
    """Cut ``index``'s frames into segments on keyframes (see the module docstring)."""
    if not segment_seconds > 0:
        raise ValueError("segment_seconds must be > 0")
    span = segment_seconds / index.time_base  # in pts units
    starts = [index.pts[0]]
    for k in index.keyframes:
        if k > starts[-1] and k - starts[-1] >= span:
            starts.append(k)
    segments = []
    pts = index.pts
    j = 0
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else None
        i0 = j
        while j < len(pts) and (end is None or pts[j] < end):
            j += 1
        segments.append(Segment(n, s, end, j - i0))
    return tuple(seg for seg in segments if seg.frames > 0) or (Segment(0, pts[0], None, len(pts)),)


def shard_segments(segments: Sequence[Segment], shard: tuple[int, int] | None) -> list[Segment]:
    """The segments of shard K of N (all of them without a shard)."""
    if shard is None:
        return list(segments)
    k, n = shard
    return [s for s in segments if s.index % n == k - 1]


class PlanMismatch(InputError):
    """The work folder holds segments of another input or made with other settings."""


class WorkFolder:
    """The segments of one output (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def segment(self, i: int) -> Path:
        return self.path / f"seg-{i:05d}.nut"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    def done(self, segments: Sequence[Segment]) -> list[int]:
        """Indices of the finished segments (their files exist: they are written atomically)."""
        return [s.index for s in segments if self.segment(s.index).is_file()]

    def prepare(self, plan: dict) -> bool:
        """Create the folder and ``plan.json``, or check an existing one agrees with ``plan``
        (PlanMismatch otherwise); remove temporaries a killed run left. True if segments of an
        earlier run (or another shard) may be there."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the work folder {self.path} ({e.strerror or e}); "
                             "pass `work_dir` on writable storage") from None
        text = json.dumps(plan, indent=1, sort_keys=True) + "\n"
        plan = json.loads(text)  # as it reads back: lists, not tuples
        existed = self.plan_file.exists()
        if not existed:
            try:
                atomic_write_bytes(self.plan_file, text.encode("utf-8"), overwrite=False)
            except FileExistsError:  # another shard wrote it first: check it below
                existed = True
        if existed:
            self._check(plan)
        remove_stale_temporaries(self.segment(i) for i in range(len(plan["segments"])))
        return existed

    def read_plan(self) -> dict:
        """``plan.json``; InputError when there is none (nothing was made here yet)."""
        if not self.plan_file.is_file():
            raise InputError(f"{self.path} holds no segments to join; run without `join` first "
                             "(or pass the `work_dir` the shards used)")
        try:
            return json.loads(self.plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PlanMismatch(f"{self.plan_file} cannot be read ({e}); delete {self.path} and "
                               "run again") from None

    def _check(self, plan: dict) -> None:
        try:
            found = json.loads(self.plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PlanMismatch(f"{self.plan_file} cannot be read ({e}); delete {self.path} and "
                               "run again") from None
        for key, what in (("version", "an older clipsr"), ("fingerprint", "another input video"),
                          ("segments", "another segment length"), ("settings", "other settings")):
            if found.get(key) != plan.get(key):
                detail = ""
                if key == "settings" and isinstance(found.get(key), dict):
                    diff = sorted(k for k in set(found[key]) | set(plan[key])
                                  if found[key].get(k) != plan[key].get(k))
                    detail = f" ({', '.join(diff)} differ)"
                raise PlanMismatch(f"{self.path} holds segments made from {what}{detail}; run "
                                   f"with the same options to resume, or delete {self.path} to "
                                   "start afresh")


def plan_document(index: VideoIndex, segments: Sequence[Segment], settings) -> dict:
    """What ``plan.json`` holds (``settings``: a dataclass of plain values)."""
    return {"version": PLAN_VERSION, "input": index.path.name, "fingerprint": index.fingerprint,
            "frames": index.frames,
            "segments": [[s.start, s.end, s.frames] for s in segments],
            "settings": asdict(settings)}
