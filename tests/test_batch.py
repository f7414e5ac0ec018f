"""``clipsr batch``: discovery, sharding, captions, resumability and the CLI (issue #6)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.tasks import batch as B
from clipsr_cli.cli.app import app
from clipsr_cli.data.captions import CaptionTable
from clipsr_cli.errors import DataError, InputError, UsageError
from clipsr_cli.io import atomic

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, w: int = 20, h: int = 16, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _tree(root: Path) -> Path:
    """images at three depths, a .DS_Store, a text file, a corrupt JPEG, a 16-bit PNG."""
    _png(root / "a.png", 20, 16, seed=1)
    _png(root / "sub" / "b.jpg", 16, 24, seed=2)
    _png(root / "sub" / "deeper" / "c16.png", 18, 22, seed=3, mode="I;16")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1\0junk")
    (root / "notes.txt").write_text("not an image\n")
    (root / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00garbage")
    return root


def _visible(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def _parts(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.part")]


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# -- the done-when items ---------------------------------------------------------------------------
def test_tree_mirrored_junk_ignored_corrupt_reported(tmp_path, tiny_ckpt):
    src, out, rep = _tree(tmp_path / "in"), tmp_path / "out", tmp_path / "r.json"
    ckpt = str(tiny_ckpt())
    r = _invoke(["batch", str(src), "-r", "-o", str(out), "-m", ckpt, "--report", str(rep)])
    assert r.exit_code == 3, r.stderr
    expected = {"a_x4.png", "sub/b_x4.jpg", "sub/deeper/c16_x4.png"}
    assert _visible(out) == expected
    assert not _parts(out) and not list(out.rglob(".*"))
    assert sorted(r.stdout.split()) == sorted(str(out / e) for e in expected)  # results on stdout
    assert "corrupt.jpg" in r.stderr and "corrupt.jpg" not in r.stdout
    with Image.open(out / "sub" / "b_x4.jpg") as im:
        assert im.size == (64, 96)
    from clipsr_cli.io.images import read_image

    deep = read_image(out / "sub" / "deeper" / "c16_x4.png")
    assert deep.bit_depth == 16 and deep.size == (72, 88)
    report = json.loads(rep.read_text())
    assert report["counts"] == {"images": 4, "done": 3, "skipped": 0, "failed": 1, "not_run": 0,
                                "ignored": 2, "other_shards": 0, "stale_removed": 0}
    [bad] = [f for f in report["files"] if f["status"] == "failed"]
    assert bad["input"].endswith("corrupt.jpg") and "corrupt" in bad["reason"]
    assert sorted(Path(p).name for p in report["ignored"]) == [".DS_Store", "notes.txt"]

    # a second run with --skip-existing processes nothing (only the corrupt file fails again)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    r = _invoke(["batch", str(src), "-r", "-o", str(out), "-m", ckpt, "--skip-existing",
                 "--report", str(rep)])
    assert r.exit_code == 3 and r.stdout == ""
    c = json.loads(rep.read_text())["counts"]
    assert (c["done"], c["skipped"], c["failed"]) == (0, 3, 1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    # neither flag: existing outputs are reported as failed and left alone
    r = _invoke(["batch", str(src), "-r", "-o", str(out), "-m", ckpt, "--report", str(rep)])
    assert r.exit_code == 3 and "--skip-existing" in r.stderr
    c = json.loads(rep.read_text())["counts"]
    assert (c["done"], c["skipped"], c["failed"]) == (0, 0, 4)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_nothing_to_do_never_loads_the_model(tmp_path, tiny_ckpt, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        _png(src / f"im{i}.png", seed=i)
    ckpt = str(tiny_ckpt())
    assert _invoke(["batch", str(src), "-o", str(out), "-m", ckpt]).exit_code == 0
    assert len(_visible(out)) == 3

    import clipsr_cli.tasks.upscale

    def boom(**kw):
        raise AssertionError("the model was loaded although every output exists")

    monkeypatch.setattr(clipsr_cli.tasks.upscale, "load_upscaler", boom)
    r = _invoke(["batch", str(src), "-o", str(out), "-m", ckpt, "--skip-existing"])
    assert r.exit_code == 0, r.stderr
    assert "0 done · 3 skipped" in r.stderr


def test_killed_run_resumes_with_skip_existing(tmp_path, tiny_ckpt):
    """SIGKILL the real CLI after its first output; no visible output is ever partial; stale
    temporaries are removed by the re-run, never counted as outputs; only the rest is done."""
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    n = 40
    for i in range(n):
        _png(src / f"im{i:02d}.png", 32, 32, seed=i)
    cmd = [sys.executable, "-m", "clipsr_cli", "batch", str(src), "-o", str(out), "-m",
           str(tiny_ckpt()), "--device", "cpu", "--report", str(rep)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}

    def check_complete(names) -> None:
        for name in names:
            with Image.open(out / name) as im:  # a partial PNG would fail to load
                im.load()
                assert im.size == (128, 128)

    # Kill right after the first result line: each output's path is printed on stdout (flushed,
    # one per line) once the file is complete, so a blocking readline says exactly when; no
    # polling, and 39 more inputs are left, so the run cannot finish before the kill lands.
    err_log = tmp_path / "stderr.txt"
    with err_log.open("wb") as err_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file)
        watchdog = threading.Timer(120, proc.kill)  # a CLI that never prints must not hang the suite
        watchdog.start()
        try:
            first = proc.stdout.readline().decode().strip()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            watchdog.cancel()
            proc.stdout.close()
    assert first, f"no output line appeared: {err_log.read_text()}"
    assert proc.returncode == -signal.SIGKILL
    done_before = _visible(out)
    assert Path(first).name in done_before  # a path is printed only once its file is in place
    assert 0 < len(done_before) < n, "the run finished before it could be killed"
    check_complete(done_before)
    # what a kill during a write leaves behind (hidden, recognisable temporary files)
    todo_name = sorted({f"im{i:02d}_x4.png" for i in range(n)} - done_before)[0]
    (out / f".{todo_name}.k1ll3d.part").write_bytes(b"\x89PNG partial")
    (out / f".{sorted(done_before)[0]}.zzzzzz.part").write_bytes(b"\x89PNG partial")
    foreign = out / ".someone-else.png.abcdef.part"  # not ours: left alone
    foreign.write_bytes(b"x")

    r = subprocess.run(cmd + ["--skip-existing"], cwd=ROOT, env=env, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    written = r.stdout.decode().split()
    assert {Path(p).name for p in written} == {f"im{i:02d}_x4.png" for i in range(n)} - done_before
    report = json.loads(rep.read_text())
    c = report["counts"]
    assert (c["done"], c["skipped"], c["failed"]) == (n - len(done_before), len(done_before), 0)
    assert c["stale_removed"] >= 2
    assert _parts(out) == [foreign]
    assert _visible(out) == {f"im{i:02d}_x4.png" for i in range(n)}
    check_complete(_visible(out))


def test_shards_cover_every_file_exactly_once(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    names = [f"d{i % 3}/img{i:02d}.png" for i in range(14)]
    for i, name in enumerate(names):
        _png(src / name, 16, 16, seed=i)
    ckpt = str(tiny_ckpt())
    got = []
    for k in (1, 2):
        out = tmp_path / f"out{k}"
        r = _invoke(["batch", str(src), "-r", "-o", str(out), "-m", ckpt, "--shard", f"{k}/2"])
        assert r.exit_code == 0, r.stderr
        got.append(_visible(out))
    assert got[0] and got[1] and not got[0] & got[1]
    assert got[0] | got[1] == {n.replace(".png", "_x4.png") for n in names}


def test_shard_is_independent_of_listing_order_and_other_files():
    rels = [PurePosixPath(f"a/{i}.png") for i in range(200)]
    first = {r: B.shard_of(r, 3) for r in rels}
    shuffled = rels[:]
    random.Random(0).shuffle(shuffled)
    assert {r: B.shard_of(r, 3) for r in shuffled[:50]} == {r: first[r] for r in shuffled[:50]}
    assert set(first.values()) == {1, 2, 3}
    counts = [list(first.values()).count(k) for k in (1, 2, 3)]
    assert min(counts) > 40  # roughly balanced
    assert B.parse_shard(" 2 / 5 ") == (2, 5)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(UsageError):
            B.parse_shard(bad)


def test_captions_from_sidecars_and_csv_change_the_output(tmp_path, tiny_ckpt, monkeypatch):
    src = tmp_path / "in"
    _png(src / "x.png", 24, 24, seed=7)
    _png(src / "y.png", 24, 24, seed=7)  # the same pixels: only the caption differs
    _png(src / "z.png", 24, 24, seed=7)  # no caption
    (src / "x.txt").write_text("a red bird\n")
    (src / "y.txt").write_text("a blue  car\non a road")  # one caption per line: the first
    ckpt = str(tiny_ckpt(text=True))

    def run(out: Path, *extra: str) -> dict[str, np.ndarray]:
        rep = out.with_suffix(".json")
        r = _invoke(["batch", str(src), "-o", str(out), "-m", ckpt, "--device", "cpu",
                     "--precision", "fp32", "--report", str(rep), *extra])
        assert r.exit_code == 0, r.stderr
        files = json.loads(rep.read_text())["files"]
        caps = {Path(f["input"]).name: f.get("caption") for f in files}
        assert caps == {"x.png": "a red bird", "y.png": "a blue car", "z.png": None}
        return {n: np.asarray(Image.open(out / f"{n}_x4.png")).astype(int) for n in "xyz"}

    side = run(tmp_path / "side", "--caption-sidecar")
    assert np.abs(side["x"] - side["y"]).max() > 0
    assert np.abs(side["x"] - side["z"]).max() > 0

    csv = tmp_path / "caps.csv"
    csv.write_text('file,caption\nx.png,a red bird\n"in/y.png","a blue  car"\n')
    monkeypatch.chdir(tmp_path)  # "in/y.png" is relative to the CSV's folder (here also the cwd)
    from_csv = run(tmp_path / "csv", "--captions", str(csv))
    for n in "xyz":  # the same captions give the same outputs, whichever the source
        assert np.abs(from_csv[n] - side[n]).max() <= 1


# -- the pieces ------------------------------------------------------------------------------------
def test_discover_inputs_lists_globs_stdin_and_exclusions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "in"
    for rel in ("a.png", "b.JPG", "s/c.webp", "s/t/d.tif", ".hidden.png", ".git/e.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / rel, format=None if rel != "b.JPG" else "JPEG")
    (root / "Thumbs.db").write_bytes(b"x")
    out = root / "out"  # output inside the input tree: never read back
    _png(out / "a_x4.png")

    flat = B.discover([str(root)])
    assert [s.rel.as_posix() for s in flat.sources] == ["a.png", "b.JPG"]
    assert {p.name for p in flat.ignored} == {".hidden.png", "Thumbs.db"}

    deep = B.discover([str(root)], recursive=True, exclude=out)
    assert [s.rel.as_posix() for s in deep.sources] == ["a.png", "b.JPG", "s/c.webp", "s/t/d.tif"]
    only_png = B.discover([str(root)], recursive=True, glob="*.PNG", exclude=out)
    assert [s.rel.as_posix() for s in only_png.sources] == ["a.png"]
    sub = B.discover([str(root)], recursive=True, glob="s/*", exclude=out)
    assert [s.rel.as_posix() for s in sub.sources] == ["s/c.webp", "s/t/d.tif"]

    # globs, @list, stdin: files by name; duplicates once; missing list entries reported
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\n{root / 'a.png'}\n\nin/s/c.webp\nnope.png\n")
    d = B.discover([str(root / "*.png"), f"@{lst}", "-"],
                   stdin=io.StringIO(f"{root / 's' / 't' / 'd.tif'}\0{root / 'a.png'}\0"))
    assert [s.rel.as_posix() for s in d.sources] == ["a.png", "c.webp", "d.tif"]
    assert d.missing == ("nope.png",)
    for bad in ([str(tmp_path / "missing")], [str(root / "*.gif")], ["@nolist.txt"]):
        with pytest.raises(InputError):
            B.discover(bad)


def test_outputs_of_an_earlier_run_in_the_same_folder_are_not_inputs(tmp_path, tiny_ckpt):
    d = tmp_path / "photos"
    _png(d / "a.png")
    ckpt = str(tiny_ckpt())
    assert _invoke(["batch", str(d), "-o", str(d), "-m", ckpt]).exit_code == 0
    r = _invoke(["batch", str(d), "-o", str(d), "-m", ckpt, "--skip-existing"])
    assert r.exit_code == 0 and "0 done · 1 skipped" in r.stderr
    assert _visible(d) == {"a.png", "a_x4.png"}


def test_caption_table_formats_and_errors(tmp_path):
    """batch reads captions with the one shared reader (clipsr_cli.data.captions)."""
    img = tmp_path / "imgs" / "sub" / "p.png"
    src = B.Source(img, PurePosixPath("sub/p.png"))
    other = B.Source(tmp_path / "q.png", PurePosixPath("q.png"))

    jl = tmp_path / "metadata.jsonl"  # the Hugging Face imagefolder convention
    jl.write_text('{"file_name": "sub/p.png", "text": "a  cat"}\n\n'
                  '{"path": "q.png", "caption": "a dog"}\n')
    m = B.caption_source(captions=jl)
    assert m(src) == "a cat" and m(other) == "a dog"
    assert m(B.Source(tmp_path / "x.png", PurePosixPath("x.png"))) is None

    tsv = tmp_path / "c.tsv"
    tsv.write_text(f"{img}\ta fish\n")  # no header, absolute path
    assert B.caption_source(captions=tsv)(src) == "a fish"
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"p.png": "by name"}))
    assert B.caption_source(captions=js)(src) == "by name"

    # an image listed twice gets both captions (merged, in file order); batch uses the first
    (tmp_path / "dup.csv").write_text("a.png,x\na.png,y\n")
    dup = CaptionTable.load(tmp_path / "dup.csv")
    assert dup.lookup(tmp_path / "a.png") == ("x", "y") and dup.first(tmp_path / "a.png") == "x"
    for name, body in [("bad.csv", "only-a-path\n"), ("bad.jsonl", '{"path": "a.png"}\n'),
                       ("c.yaml", "a: b\n"), ("broken.jsonl", "{oops\n")]:
        (tmp_path / name).write_text(body)
        with pytest.raises(DataError, match=name):
            B.caption_source(captions=tmp_path / name)
    with pytest.raises(UsageError):
        B.caption_source(text="t", caption_sidecar=True)


def test_sidecar_caption(tmp_path):
    img = tmp_path / "p.jpg"
    assert B.sidecar_caption(img) is None
    (tmp_path / "p.jpg.txt").write_text("second choice")
    assert B.sidecar_caption(img) == "second choice"
    (tmp_path / "p.txt").write_text("\ufeff first  one\nchoice ")  # one caption per line
    assert B.sidecar_caption(img) == "first one"
    (tmp_path / "p.txt").write_bytes(b"\xff\xfe\x00bad")  # not UTF-8: replaced, never fatal
    assert "\ufffd" in B.sidecar_caption(img)


def test_remove_stale_temporaries_touches_only_stale_ones_of_our_outputs(tmp_path):
    mine, theirs = tmp_path / "a_x4.png", tmp_path / "b_x4.png"
    stale = [tmp_path / ".a_x4.png.x1y2z3.part", tmp_path / ".a_x4.png.q.part"]
    keep = [tmp_path / ".b_x4.png.x1y2z3.part", tmp_path / "a_x4.png.part",
            tmp_path / ".a_x4.png.bak"]
    for p in stale + keep:
        p.write_bytes(b"x")
    # another live process of this host writes a_x4.png right now (a second batch run): kept
    host = atomic._HOST
    live = tmp_path / f".a_x4.png.{host}~{os.getppid()}~abc123.part"
    dead_pid = _dead_pid()
    dead = tmp_path / f".a_x4.png.{host}~{dead_pid}~abc123.part"
    for p in (live, dead):
        p.write_bytes(b"x")
    assert atomic.temporary_writer(live.name) == (host, os.getppid())
    assert sorted(atomic.remove_stale_temporaries([mine])) == sorted(stale + [dead])
    assert all(p.exists() for p in keep + [live]) and not theirs.exists()
    assert atomic.remove_stale_temporaries([tmp_path / "nofolder" / "x.png"]) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_fail_fast_stops_at_the_first_failure(tmp_path, tiny_ckpt):
    src, rep = tmp_path / "in", tmp_path / "r.json"
    (src).mkdir()
    (src / "a_bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    for i in range(4):
        _png(src / f"b{i}.png", seed=i)
    r = _invoke(["batch", str(src), "-o", str(tmp_path / "out"), "-m", str(tiny_ckpt()),
                 "--fail-fast", "--io-threads", "0", "--report", str(rep)])
    assert r.exit_code == 3 and "--fail-fast" in r.stderr
    rep = json.loads(rep.read_text())
    assert rep["stopped_by_fail_fast"] and rep["counts"]["failed"] == 1
    assert rep["counts"]["not_run"] == 4 and rep["counts"]["done"] == 0


def test_scale_option_names_and_sizes(tmp_path, tiny_ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png", 12, 10)
    r = _invoke(["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt(scale=8)), "-s", "8",
                 "--format", "jpeg", "--suffix", "_big"])
    assert r.exit_code == 0, r.stderr
    with Image.open(out / "a_big.jpg") as im:
        assert im.size == (96, 80)
    r = _invoke(["batch", str(src), "-o", str(tmp_path / "o2"), "-m", str(tiny_ckpt(scale=8)),
                 "-s", "4"])
    assert r.exit_code == 1 and "×8" in r.stderr


def test_background_io_gives_the_same_outputs(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    for i in range(5):
        _png(src / f"{i}.png", 16 + i, 20, seed=i)
    outs = []
    for threads in ("0", "3"):
        out = tmp_path / f"out{threads}"
        r = _invoke(["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()), "--precision",
                     "fp32", "--io-threads", threads])
        assert r.exit_code == 0, r.stderr
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert len(outs[0]) == 5 and outs[0] == outs[1]


@pytest.mark.parametrize("args", [["--skip-existing", "--overwrite"],
                                  ["--text", "x", "--caption-sidecar"],
                                  ["--shard", "0/3"], ["--shard", "two"]])
def test_usage_errors_exit_2(tmp_path, args):
    _png(tmp_path / "a.png")
    r = runner.invoke(app, ["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output


def test_missing_input_is_an_error_before_any_work(tmp_path):
    r = runner.invoke(app, ["batch", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "o").exists()


def test_ctrl_c_keeps_finished_outputs_and_exits_130(tmp_path, tiny_ckpt, monkeypatch):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    for i in range(5):
        _png(src / f"{i}.png", seed=i)
    from clipsr_cli.infer.engine import Upscaler

    real, calls = Upscaler.upscale_array, []

    def interrupted_third(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Upscaler, "upscale_array", interrupted_third)
    r = _invoke(["batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()), "--report", str(rep)])
    assert r.exit_code == 130 and "--skip-existing" in r.stderr
    report = json.loads(rep.read_text())
    assert report["interrupted"] and report["counts"]["done"] == 2
    assert report["counts"]["not_run"] == 3 and _visible(out) == {"0_x4.png", "1_x4.png"}
    assert not _parts(out)
