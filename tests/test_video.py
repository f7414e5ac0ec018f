"""`clipsr video`: tiny videos made with PyAV through a tiny random model.

Frame count, timestamps (variable frame rate too), duration, rotation and the audio packets are
kept; a stopped run resumes to the same frames; two shards plus the join equal one run; every
bad input of issue #23 gets its one line and exit status.
"""

from __future__ import annotations

import errno
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.infer.options import EngineOptions
from clipsr_cli.tasks.video import upscale_video

runner = CliRunner()
av.logging.set_level(av.logging.PANIC)  # the corrupt clip makes FFmpeg complain


def make_video(path, *, w=40, h=30, n=24, fps=24, vfr=False, audio=True, rotate=None, gop=6,
               codec="libx264", pix="yuv420p"):
    """n frames of w×h (a moving bar over a colour ramp), a 440 Hz tone when ``audio``."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, pix
        v.codec_context.gop_size = gop
        tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
        v.codec_context.time_base = tb
        if rotate is not None:
            v.set_display_rotation(rotate)
        a = c.add_stream("aac", rate=8000, layout="mono") if audio else None
        t = 0
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (i * 10) % 256
            img[..., 2] = np.arange(w, dtype=np.uint8)[None, :] * 5
            img[:, i % w] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = (t if vfr else i), tb
            t += 30 if i % 2 else 50
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            sr, s = 8000, 0
            total = int(sr * n / fps)
            while s < total:
                k = min(1024, total - s)
                x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(s, s + k) / sr)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = sr, s
                for p in a.encode(af):
                    c.mux(p)
                s += k
            for p in a.encode(None):
                c.mux(p)
    return path


def frames_of(path):
    """(times in seconds, RGB arrays, rotation of the first frame) of the first video stream."""
    with av.open(str(path)) as c:
        fr = list(c.decode(video=0))
    return ([f.pts * f.time_base for f in fr], [f.to_ndarray(format="rgb24") for f in fr],
            fr[0].rotation)


def audio_packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts * p.time_base) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {"a": make_video(d / "a.mp4"), "vfr": make_video(d / "vfr.mkv", vfr=True),
            "odd": make_video(d / "odd.mp4", w=41, h=31, pix="yuv444p", audio=False, n=8),
            "rot": make_video(d / "rot.mp4", rotate=90, audio=False, n=6)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random ×4 checkpoint (fast on 40×30 frames)."""
    import torch

    from clipsr_cli.model.checkpoint import save_checkpoint
    from clipsr_cli.model.network import build_model
    from tests.conftest import perturb, tiny_model_config

    torch.manual_seed(0)
    cfg = tiny_model_config(4)
    path = tmp_path_factory.mktemp("model") / "tiny_x4.safetensors"
    save_checkpoint(path, perturb(build_model(cfg)), cfg)
    return str(path)


def run(clip, out, model, **kw):
    kw.setdefault("segment_seconds", 0.2)
    kw.setdefault("preset", "ultrafast")  # the fastest x264: these tests are about the plumbing
    return upscale_video(input=clip, output=out, model=model,
                         options=EngineOptions(device="cpu", precision="fp32"), **kw)


@pytest.fixture(scope="module")
def reference(clips, model, tmp_path_factory):
    """One uninterrupted, unsharded run of clip ``a``."""
    out = tmp_path_factory.mktemp("ref") / "a_x4.mp4"
    result = run(clips["a"], out, model)
    return out, result


def test_frames_timestamps_duration_and_audio_kept(clips, reference):
    out, result = reference
    assert result.joined and result.frames == 24 and result.frames_made == 24
    assert result.segments == 5 and not (out.parent / "a_x4.mp4.parts").exists()
    t_in, f_in, _ = frames_of(clips["a"])
    t_out, f_out, _ = frames_of(out)
    assert len(f_out) == 24 and f_out[0].shape == (120, 160, 3)
    assert t_out == t_in  # every frame at its time, exactly
    with av.open(str(clips["a"])) as a, av.open(str(out)) as b:
        assert abs(b.duration - a.duration) <= 1e6 / 24  # µs: within one frame
        assert b.streams.video[0].average_rate == 24
        assert [s.type for s in b.streams] == ["video", "audio"]
    assert audio_packets(out) == audio_packets(clips["a"])  # packet for packet, same times
    # the model's frames went in: the output is not a plain resize of the input
    assert f_out[5].std() > 0


def test_variable_frame_rate_kept(clips, model, tmp_path):
    out = tmp_path / "vfr_x4.mkv"
    run(clips["vfr"], out, model)
    t_in, _, _ = frames_of(clips["vfr"])
    t_out, f_out, _ = frames_of(out)
    assert t_out == t_in and len(set(np.diff(t_in))) == 2  # 50 ms and 30 ms steps
    assert audio_packets(out) == audio_packets(clips["vfr"])


def test_odd_size_and_rotation(clips, model, tmp_path, caplog):
    out2 = tmp_path / "odd_w101.mp4"
    with caplog.at_level("INFO", logger="clipsr"):
        result = run(clips["odd"], out2, model, width=101)  # 101×76: yuv420p needs even sides
    assert frames_of(out2)[1][0].shape == (76, 100, 3)
    assert (result.settings.width, result.settings.height) == (100, 76)
    assert "needs even sides" in caplog.text
    out3 = tmp_path / "odd444.mp4"
    run(clips["odd"], out3, model, width=101, pix_fmt="yuv444p")  # no subsampling: as asked
    assert frames_of(out3)[1][0].shape == (76, 101, 3)
    rot = tmp_path / "rot.mov"
    run(clips["rot"], rot, model)
    assert frames_of(rot)[2] == 90 == frames_of(clips["rot"])[2]


def test_stopped_run_resumes_to_the_same_frames(clips, model, reference, tmp_path):
    out = tmp_path / "a.mp4"

    def stop(p):  # Ctrl-C in the middle of the third segment
        if p.frames_done == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(clips["a"], out, model, progress=stop)
    parts = tmp_path / "a.mp4.parts"
    assert not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == [
        "plan.json", "seg-00000.nut", "seg-00001.nut"]  # no partial segment left
    result = run(clips["a"], out, model)
    assert result.segments_resumed == 2 and result.segments_made == [2, 3, 4]
    assert result.frames_made == 14 and result.joined
    ref = frames_of(reference[0])
    got = frames_of(out)
    assert got[0] == ref[0]
    assert all(np.array_equal(a, b) for a, b in zip(got[1], ref[1])) and len(got[1]) == 24


def test_two_shards_and_join_equal_one_run(clips, model, reference, tmp_path):
    out, work = tmp_path / "a.mp4", tmp_path / "shared"
    r2 = run(clips["a"], out, model, shard="2/2", work_dir=work)
    assert not r2.joined and r2.segments_made == [1, 3] and r2.missing == [0, 2, 4]
    with pytest.raises(Exception, match="cannot join yet: 3 of 5 segments"):
        run(clips["a"], out, model, join=True, work_dir=work)
    r1 = run(clips["a"], out, model, shard="1/2", work_dir=work, keep_parts=True)
    assert r1.segments_made == [0, 2, 4] and r1.joined  # the last shard joins
    assert r1.frames_made + r2.frames_made == 24  # each frame upscaled exactly once
    ref = frames_of(reference[0])
    got = frames_of(out)
    assert got[0] == ref[0] and all(np.array_equal(a, b) for a, b in zip(got[1], ref[1]))
    out.unlink()  # --join by hand, from the kept segments
    # no model or encoder options: the join takes the settings the shards stored
    r = runner.invoke(app, ["video", str(clips["a"]), "-o", str(out), "--join", "--work-dir",
                            str(work)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out) and not work.exists()
    assert frames_of(out)[0] == ref[0]


def test_cli_progress_report_and_quiet(clips, model, tmp_path):
    out, rep = tmp_path / "o.mkv", tmp_path / "r.json"
    args = ["video", str(clips["odd"]), "-m", model, "--device", "cpu", "--precision", "fp32",
            "--segment-seconds", "0.2", "--crf", "30", "--preset", "ultrafast"]
    r = runner.invoke(app, args + ["-o", str(out), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "frames 8/8" in r.stderr and "fps" in r.stderr and "ETA" in r.stderr
    assert frames_of(out)[1][0].shape == (124, 164, 3)  # ×4 of 41×31: even already
    doc = json.loads(rep.read_text())
    assert doc["frames"] == 8 and doc["frames_made"] == 8 and doc["joined"] is True
    assert doc["settings"]["crf"] == 30 and doc["settings"]["preset"] == "ultrafast"
    q = runner.invoke(app, args + ["-o", str(tmp_path / "q.mkv"), "-q"])
    assert q.exit_code == 0 and q.stderr == "" and q.stdout.strip().endswith("q.mkv")


def _cli(args, model=None):
    extra = ["-m", model] if model else []
    return runner.invoke(app, ["video", *args, *extra, "--device", "cpu"])


def _one_error_line(r, code, text, *, alone=True):
    """Exit status ``code`` and one ``error:`` line saying ``text`` (``alone``: nothing else on
    stderr, i.e. it failed before any work)."""
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], r.stderr
    assert not alone or lines == errors, r.stderr
    assert "Traceback" not in r.output


def test_bad_inputs_one_line_each(tmp_path, clips, model):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    _one_error_line(_cli([str(text)], model), 1, "is not a video file")
    audio = tmp_path / "tone.mka"
    with av.open(str(audio), "w") as c:
        a = c.add_stream("aac", rate=8000, layout="mono")
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                        layout="mono")
        af.sample_rate, af.pts = 8000, 0
        for p in list(a.encode(af)) + list(a.encode(None)):
            c.mux(p)
    _one_error_line(_cli([str(audio)], model), 1, "has no video stream")
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as c:
        v = c.add_stream("mpeg4", rate=24)
        v.width, v.height, v.pix_fmt = 40, 30, "yuv420p"
        c.start_encoding()  # the header, and no frame
    _one_error_line(_cli([str(empty)], model), 1, "no frames")
    _one_error_line(_cli([str(clips["a"]), "-o", str(tmp_path / "x.mp4"), "--codec", "nope"],
                         model), 2, "unknown video encoder 'nope'")
    _one_error_line(_cli([str(clips["a"]), "-o", str(tmp_path / "x.avi")], model), 2,
                    "end --output with")
    _one_error_line(_cli([str(clips["a"]), "-o", str(tmp_path / "x.mp4"), "--codec", "mpeg4",
                          "--crf", "20"], model), 2, "has no CRF setting")
    (tmp_path / "exists.mp4").write_bytes(b"x")
    _one_error_line(_cli([str(clips["a"]), "-o", str(tmp_path / "exists.mp4")], model), 1,
                    "exists")
    assert not list(tmp_path.glob("*.parts"))  # nothing started


def test_output_over_the_size_limit_fails_before_any_frame(clips, model, tmp_path,
                                                           monkeypatch):
    from clipsr_cli.io import video_read

    def no_decoding(*a, **k):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(video_read, "decode_frames", no_decoding)
    monkeypatch.setattr("clipsr_cli.tasks.video_run.decode_frames", no_decoding)
    monkeypatch.setenv("CLIPSR_MAX_PIXELS", "4000")  # outputs: 4 × 4000 < 160×120 = 19200
    r = _cli([str(clips["a"]), "-o", str(tmp_path / "big.mp4")], model)
    _one_error_line(r, 1, "would be 160×120")
    assert "CLIPSR_MAX_PIXELS" in r.stderr and not (tmp_path / "big.mp4.parts").exists()


def test_corrupt_packets_are_skipped_and_counted(tmp_path, model):
    src = make_video(tmp_path / "png.mov", codec="png", pix="rgb24", audio=False, n=12, gop=1)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[6]
    mid = pos + size // 2
    data[mid:mid + 16] = b"\xff" * 16  # frame 6: its compressed pixels damaged
    src.write_bytes(bytes(data))
    out = tmp_path / "png_x4.mkv"
    r = _cli([str(src), "-o", str(out), "--segment-seconds", "0.2"], model)
    assert r.exit_code == 0, r.output
    assert "1 corrupt packet(s) skipped, 1 frame(s) left out" in r.stderr
    assert "Traceback" not in r.output
    assert len(frames_of(out)[1]) == 11


def test_full_disk_keeps_finished_segments(clips, model, tmp_path, monkeypatch):
    from clipsr_cli.io.video_write import SegmentEncoder

    real_add = SegmentEncoder.add
    calls = {"n": 0}

    def add(self, rgb, pts):
        calls["n"] += 1
        if calls["n"] == 8:  # in the second segment
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, rgb, pts)

    monkeypatch.setattr(SegmentEncoder, "add", add)
    out = tmp_path / "a.mp4"
    r = _cli([str(clips["a"]), "-o", str(out), "--segment-seconds", "0.2"], model)
    _one_error_line(r, 1, "is full", alone=False)
    assert "finishing needs about" in r.stderr and "1 finished segment(s) are kept" in r.stderr
    parts = tmp_path / "a.mp4.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["plan.json", "seg-00000.nut"]
    monkeypatch.setattr(SegmentEncoder, "add", real_add)
    r = _cli([str(clips["a"]), "-o", str(out), "--segment-seconds", "0.2"], model)
    assert r.exit_code == 0, r.output
    assert "resuming: 1 of 5 segments" in r.stderr and len(frames_of(out)[1]) == 24


def test_other_settings_do_not_mix_with_old_segments(clips, model, tmp_path):
    out = tmp_path / "a.mp4"

    def stop(p):
        if p.segment_finished and p.segments_done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(clips["a"], out, model, progress=stop)
    r = _cli([str(clips["a"]), "-o", str(out), "--segment-seconds", "0.2", "--crf", "30",
              "--preset", "ultrafast"], model)
    _one_error_line(r, 1, "holds segments made from other settings (crf differ)")


def test_degradation_strength_decided_once_per_video(clips, model, tmp_path, monkeypatch):
    """Auto strength judged on the first frames (their median), then the same for every frame:
    no flicker from a strength that changes with the content."""
    from clipsr_cli.infer.degradation import Strength
    from clipsr_cli.infer.engine import Upscaler

    judged, used = [], []

    def strength_for(self, image):  # a strength that follows each frame's brightness
        v = round(float(image.rgb.mean()), 3)
        judged.append(v)
        return Strength(v, "test")

    monkeypatch.setattr(Upscaler, "blendable", property(lambda self: True))
    monkeypatch.setattr(Upscaler, "strength_for", strength_for)
    monkeypatch.setattr(Upscaler, "set_strength", lambda self, t: used.append(t))
    result = run(clips["a"], tmp_path / "a.mp4", model)
    assert len(set(judged)) > 1 and len(judged) == 8  # the first frames differ ...
    assert result.settings.denoise == sorted(judged)[4]  # ... their median is taken
    assert len(used) == 24 and set(used) == {result.settings.denoise}  # one value, every frame


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_frames(clips, model, reference, tmp_path):
    """A real SIGKILL mid-run (no cleanup code runs): no output, no partial segment; the same
    command again continues and ends with the frames of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "a.mp4"
    parts = tmp_path / "a.mp4.parts"
    cmd = [sys.executable, "-m", "clipsr_cli", "video", str(clips["a"]), "-o", str(out), "-m",
           model, "--device", "cpu", "--precision", "fp32", "--segment-seconds", "0.2",
           "--preset", "ultrafast", "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (parts / "seg-00001.nut").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    names = sorted(p.name for p in parts.iterdir())
    finished = [n for n in names if n.startswith("seg-")]
    assert finished[:2] == ["seg-00000.nut", "seg-00001.nut"] and len(finished) < 5
    r = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(finished)} of 5 segments" in r.stderr
    ref = frames_of(reference[0])
    got = frames_of(out)
    assert got[0] == ref[0] and all(np.array_equal(a, b) for a, b in zip(got[1], ref[1]))
    assert not parts.exists()  # the stale temporary of the killed write is gone too


@pytest.mark.parametrize("full_range", [False, True])
def test_colour_matrix_range_and_tags_kept(model, tmp_path, monkeypatch, full_range):
    """A BT.709-tagged clip (limited or full range) comes out with the same tags, and a flat
    colour keeps its RGB value through decode -> engine -> encode (the engine replaced by a
    nearest-neighbour ×4, so only the colour conversions are measured)."""
    from av.video.reformatter import ColorRange, Colorspace

    from clipsr_cli.infer.engine import Upscaler

    src = tmp_path / "c709.mp4"
    colour = (200, 50, 30)
    rng = ColorRange.JPEG if full_range else ColorRange.MPEG
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        cc = v.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, int(rng)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour, np.uint8),
                                           format="rgb24")
            f = f.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=rng)
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)

    def nearest(up, images, texts, strength=None):
        out = []
        for im in images:
            a = (im.rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append((a.repeat(4, 0).repeat(4, 1), None))
        return out

    monkeypatch.setattr(Upscaler, "upscale_images", nearest)
    out = tmp_path / "o.mp4"
    result = run(src, out, model)
    assert tuple(result.settings.colour) == (1, int(rng), 1, 1)
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc) == \
            (1, int(rng), 1, 1)
    before = frames_of(src)[1][1][10:38, 10:54].reshape(-1, 3).mean(0)
    after = frames_of(out)[1][1][40:150, 40:200].reshape(-1, 3).mean(0)
    assert np.abs(before - colour).max() < 4  # the input's own encoding
    assert np.abs(after - before).max() < 3, (before, after)  # BT.601 instead: 14 levels off


def test_subtitles_copied_into_mkv_and_refused_by_mp4(model, tmp_path):
    src = tmp_path / "sub.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 40, 30, "yuv420p"
        s = c.add_mux_stream("subrip")  # no encoder needed: packets written as they are
        for i in range(6):
            f = av.VideoFrame.from_ndarray(np.full((30, 40, 3), i * 20, np.uint8), format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        for k, line in enumerate([b"Hello", b"World"]):
            p = av.Packet(line)
            p.stream, p.time_base, p.pts, p.dts, p.duration = s, Fraction(1, 1000), k * 100, \
                k * 100, 80
            c.mux(p)

    def subs(path):
        with av.open(str(path)) as c:
            st = c.streams.subtitles[0]
            return st.codec_context.name, [(bytes(p), p.pts * p.time_base)
                                           for p in c.demux(st) if p.size]

    out = tmp_path / "o.mkv"
    run(src, out, model)
    assert subs(out) == subs(src) == ("srt", [(b"Hello", 0), (b"World", Fraction(1, 10))])
    r = _cli([str(src), "-o", str(tmp_path / "o.mp4")], model)
    _one_error_line(r, 1, "cannot be copied into MP4; write .mkv instead")
