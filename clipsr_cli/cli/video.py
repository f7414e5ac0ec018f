"""``clipsr video``: a whole video upscaled, its sound kept, resumable, split across machines.

Thin: parses options, calls :func:`clipsr_cli.tasks.video.upscale_video` with a progress view,
prints the output path (stdout) and writes the report.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from clipsr_cli.cli import options as o

_CODECS = ("libx264", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1", "mpeg4", "ffv1")
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
            "veryslow")
_PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le")


def _complete(values):
    return lambda incomplete: [v for v in values if v.startswith(incomplete)]


class _ProgressView:
    """Frames done / total, frames per second and ETA on stderr: a live bar on a terminal,
    else one line per finished segment; nothing with -q."""

    def __init__(self, console, *, quiet: bool, name: str):
        self.console, self.quiet, self.name = console, quiet, name
        self.bar = self.task = None
        if not quiet and console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[fps]}"),
                                TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"video {name}", total=None, fps="")

    def __call__(self, p) -> None:
        if self.quiet:
            return
        fps = f"{p.fps:.2f} fps" if p.fps else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=p.frames_done, total=p.frames_total, fps=fps)
        elif p.segment_finished:
            eta = (time.strftime("%H:%M:%S", time.gmtime(p.eta_seconds))
                   if p.eta_seconds is not None else "?")
            self.console.print(f"{self.name}: segment {p.segments_done}/{p.segments_total}, "
                               f"frames {p.frames_done}/{p.frames_total}, {fps or '? fps'}, "
                               f"ETA {eta}", highlight=False, markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def register(app: typer.Typer) -> None:
    @app.command("video")
    def video(
        input: Annotated[str, typer.Argument(metavar="INPUT", show_default=False,
                                             help="Video file to upscale.")],
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", show_default=False, help="Output video: .mp4, .mkv, .mov or "
            ".webm. Default: <stem>_x<s> beside the input (its container, or .mkv).")] = None,
        scale: o.Scale = None,
        model: o.Model = None,
        text: o.Text = None,
        outscale: o.Outscale = None,
        width: o.Width = None,
        height: o.Height = None,
        passes: o.Passes = 1,
        degradation: o.DegradationOpt = "auto",
        denoise: o.Denoise = None,
        codec: Annotated[Optional[str], typer.Option(
            "--codec", help="Video encoder, e.g. libx264, libx265, libvpx-vp9, libsvtav1. "
            "Default: libx264 (.webm: libvpx-vp9), else the best this FFmpeg build has.",
            autocompletion=_complete(_CODECS))] = None,
        crf: Annotated[Optional[int], typer.Option(
            "--crf", help="Constant quality, lower is better (default: 18 for libx264, 20 "
            "libx265, 24 VP9/AV1).", show_default=False)] = None,
        preset: Annotated[Optional[str], typer.Option(
            "--preset", help="Encoder speed preset (libx264/libx265: ultrafast ... veryslow; "
            "default medium).", show_default=False, autocompletion=_complete(_PRESETS))] = None,
        pix_fmt: Annotated[Optional[str], typer.Option(
            "--pix-fmt", help="Pixel format (default yuv420p: plays everywhere; odd sides are "
            "then made even, one pixel smaller).", show_default=False,
            autocompletion=_complete(_PIX_FMTS))] = None,
        shard: Annotated[Optional[str], typer.Option(
            "--shard", metavar="K/N|auto", help="Make only shard K of N of the segments "
            "(round robin), e.g. one per machine with --work-dir on shared storage; the shard "
            "that finishes the last segment joins. auto: as in batch (SLURM arrays, Kubernetes "
            "indexed Jobs, torchrun).")] = None,
        join: Annotated[bool, typer.Option(
            "--join", help="Only join the finished segments into OUTPUT.")] = False,
        work_dir: Annotated[Optional[str], typer.Option(
            "--work-dir", metavar="DIR", help="Where finished segments wait (default: "
            "OUTPUT.parts beside the output); removed after the join.")] = None,
        segment_seconds: Annotated[float, typer.Option(
            "--segment-seconds", metavar="S", help="Segment length (at least; cut on "
            "keyframes): the most work a stop loses.")] = 4.0,
        keep_parts: Annotated[bool, typer.Option(
            "--keep-parts", help="Keep the segments after the join.")] = False,
        batch_size: Annotated[int, typer.Option(
            "--batch-size", metavar="B", help="Frames through the network together (worth it "
            "on a GPU).")] = 1,
        device: o.Device = "auto",
        precision: o.PrecisionOpt = "auto",
        tile: o.Tile = "auto",
        tile_overlap: o.TileOverlap = None,
        overwrite: o.Overwrite = False,
        report: Annotated[Optional[str], typer.Option(
            "--report", metavar="FILE.json", help="Write frames, segments, time and settings "
            "as JSON ({shard} in the name becomes KofN).")] = None,
        quiet: o.Quiet = False,
        verbose: o.Verbose = False,
    ) -> None:
        """Upscale a whole video: frames through the model, audio and subtitles copied packet
        for packet, timestamps (variable frame rate too) and rotation kept.

        The work is cut into segments of a few seconds on keyframes, each written atomically
        into OUTPUT.parts/ as it finishes: after Ctrl-C or a kill, the same command continues
        after the last finished segment; the final file is joined without re-encoding.
        Exit status: 0 done (or this shard's part done), 1 error (bad input, full disk, ...),
        2 usage error, 130 interrupted.
        """
        from pathlib import Path

        from clipsr_cli.cli.console import configure, err_console, state
        configure(verbose=verbose, quiet=quiet)
        options = o.engine_options(device=device, precision=precision, tile=tile,
                                   tile_overlap=tile_overlap, passes=passes,
                                   batch_size=batch_size, degradation=degradation,
                                   denoise=denoise)  # a bad value: exit 2 before torch
        from clipsr_cli.tasks.video import upscale_video, write_video_report

        view = _ProgressView(err_console, quiet=state.quiet, name=Path(input).name)
        try:
            result = upscale_video(
                input=input, output=output, scale=scale, model=model, text=text,
                outscale=outscale, width=width, height=height, options=options, codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt,
                shard=shard, join=join, work_dir=work_dir, segment_seconds=segment_seconds,
                overwrite=overwrite, keep_parts=keep_parts, progress=view)
        finally:
            view.close()
        if report is not None:
            write_video_report(report, result)
        if result.joined:
            typer.echo(str(result.output))  # the result, on stdout
