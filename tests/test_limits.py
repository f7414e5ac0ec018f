"""Limits decided before work starts (issue #12 items 2, 3, 7, 9): an image's size is judged from
its header before it is decoded, a checkpoint's config and tensors from its safetensors header
before anything is built or loaded. Every refusal is one named error (one line in the CLI).

Hostile inputs run in a child process under an 8 GiB address-space limit, so that a regression
fails the test (MemoryError, non-zero exit) instead of exhausting the machine; the child reports
its peak RSS (VmHWM), which must stay under 1 GiB (about half of it is importing torch).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save

from clipsr_cli.errors import InputError, ModelError, UsageError
from clipsr_cli.io import decode, formats
from clipsr_cli.io.images import from_pil, read_image
from clipsr_cli.model import checkpoint, limits
from clipsr_cli.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.network import build_model

from .conftest import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
AS_LIMIT = 8 << 30
RSS_LIMIT_MIB = 1024


# -- helpers --------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int, *, depth: int = 1, colour: int = 0) -> Path:
    """A valid one-colour PNG: a huge IHDR and an IDAT streamed through zlib row by row (a
    30000×30000 bilevel one is 110 KB on disk and takes a few hundred ms and ~0 memory to make)."""
    planes = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\0" * (1 + (width * planes * depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))
    return path


def header_png(width: int, height: int, *, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose header claims ``width``×``height`` and whose pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def limited(code: str, *args: str, env: dict | None = None) -> tuple[int, str, str, float]:
    """Run ``code`` in a child Python under AS_LIMIT: (exit status, stdout, stderr, peak MiB)."""
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak across exec into ru_maxrss
    prelude = ("import atexit, re, resource, sys\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))\n"
               "atexit.register(lambda: sys.stderr.write('\\nPEAK_RSS_KB=%s\\n' % re.search("
               "r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)))\n")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
                **(env or {})}
    r = subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=ROOT, env=full_env,
                       capture_output=True, text=True, timeout=300)
    err, _, peak = r.stderr.rpartition("PEAK_RSS_KB=")
    assert peak.strip().isdigit(), r.stderr[-2000:]
    return r.returncode, r.stdout, err.strip(), int(peak) / 1024


REFUSE = """
import json, time
from clipsr_cli.errors import ClipsrError
from clipsr_cli.io.images import read_image
from clipsr_cli.model.checkpoint import load_checkpoint
what = {"image": read_image, "checkpoint": load_checkpoint}[sys.argv[1]]
out = []
for path in sys.argv[2:]:
    t0 = time.perf_counter()
    try:
        what(path)
        out.append(["accepted", "", time.perf_counter() - t0])
    except ClipsrError as e:
        out.append([type(e).__name__, str(e), time.perf_counter() - t0])
print(json.dumps(out))
"""


def refuse_in_child(kind: str, *paths: Path, env: dict | None = None):
    rc, out, err, peak = limited(REFUSE, kind, *map(str, paths), env=env)
    assert rc == 0, err[-2000:]
    return json.loads(out), peak


def _photo(path: Path, w: int = 40, h: int = 30, **save_kw) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, **save_kw)
    return path


# -- images: decompression bombs ---------------------------------------------------------------
def test_a_decompression_bomb_is_refused_from_its_header_in_little_memory(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200_000
    [(kind, msg, seconds)], peak = refuse_in_child("image", bomb)
    assert kind == "InputError", msg
    assert "30000×30000 (900 megapixels)" in msg and "CLIPSR_MAX_PIXELS" in msg
    assert peak < RSS_LIMIT_MIB, peak  # (no wall-clock limit: timings are in benchmarks/)


def test_the_default_limit_admits_large_photos_and_refuses_bombs(tmp_path):
    assert 200e6 <= formats.MAX_PIXELS < 900e6
    assert decode.MAX_PIXELS == formats.MAX_PIXELS
    (tmp_path / "big.png").write_bytes(header_png(20_000, 12_000))  # 240 MP: passes the limit
    with pytest.raises(InputError, match=r"corrupt|truncated"):
        read_image(tmp_path / "big.png")
    (tmp_path / "bomb.png").write_bytes(header_png(30_000, 30_000))
    with pytest.raises(InputError, match="900 megapixels"):
        read_image(tmp_path / "bomb.png")


def test_the_limit_can_be_lowered_or_raised(tmp_path, monkeypatch):
    src = _photo(tmp_path / "p.png")  # 1200 pixels
    with pytest.raises(InputError, match=r"40×30 \(0.0012 megapixels\), more than the limit "
                                         r"of 0.001 MP"):
        read_image(src, max_pixels=1000)
    assert read_image(src, max_pixels=1200).size == (40, 30)
    with Image.open(src) as im:
        with pytest.raises(InputError, match="megapixels"):
            from_pil(im, max_pixels=1000)
    monkeypatch.setenv("CLIPSR_MAX_PIXELS", "1e3")
    with pytest.raises(InputError, match="limit of 0.001 MP"):
        read_image(src)
    assert read_image(src, max_pixels=5000).size == (40, 30)  # the parameter wins
    (tmp_path / "b.png").write_bytes(header_png(20_000, 15_000))  # 300 MP
    with pytest.raises(InputError, match="300 megapixels"):
        read_image(tmp_path / "b.png")
    monkeypatch.setenv("CLIPSR_MAX_PIXELS", "1_000_000_000")  # raised: only the fake data fails
    with pytest.raises(InputError, match=r"corrupt|truncated"):
        read_image(tmp_path / "b.png")
    for bad in ("lots", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("CLIPSR_MAX_PIXELS", bad)
        with pytest.raises(UsageError, match="CLIPSR_MAX_PIXELS"):
            read_image(src)
    monkeypatch.delenv("CLIPSR_MAX_PIXELS")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UsageError, match="max_pixels"):
            read_image(src, max_pixels=bad)


def test_a_file_longer_than_any_image_within_the_limit_is_not_read(tmp_path, monkeypatch):
    sparse = tmp_path / "sparse.png"
    with sparse.open("wb") as f:  # 12 GiB that take no disk and must take no memory either
        f.write(header_png(4000, 3000))
        f.truncate(12 << 30)
    assert formats.max_file_bytes() < 12 << 30 < formats.max_file_bytes(2 * 10**9)
    [(kind, msg, seconds)], peak = refuse_in_child("image", sparse)
    assert kind == "InputError" and "sparse.png is 12.0 GiB, more than an image within the " \
        "limit of 250 MP can take" in msg, msg
    assert peak < RSS_LIMIT_MIB
    monkeypatch.setenv("CLIPSR_MAX_PIXELS", "1000")
    (tmp_path / "long.png").write_bytes(header_png(20, 20) + b"\0" * (65 << 20))
    with pytest.raises(InputError, match="0.1 GiB"):
        read_image(tmp_path / "long.png")
    with pytest.raises(InputError, match="0.1 GiB"):
        read_image((tmp_path / "long.png").read_bytes())


def test_16bit_files_are_judged_before_their_own_decoders(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("decoded before the size was judged")

    monkeypatch.setattr(decode, "_read_png16", never)
    monkeypatch.setattr(decode, "_read_tiff16", never)
    (tmp_path / "p16.png").write_bytes(header_png(30_000, 30_000, depth=16, colour=6))
    with pytest.raises(InputError, match="900 megapixels"):
        read_image(tmp_path / "p16.png")
    import tifffile

    tif = tmp_path / "t16.tif"
    tifffile.imwrite(tif, np.zeros((30, 40, 3), np.uint16), photometric="rgb")
    with pytest.raises(InputError, match="megapixels"):
        read_image(tif, max_pixels=1000)
    monkeypatch.undo()
    # tifffile's own view of the page is judged too (it decides what asarray allocates)
    with pytest.raises(InputError, match="megapixels"):
        decode._read_tiff16(tif.read_bytes(), "t16.tif", 1000)
    assert decode._read_tiff16(tif.read_bytes(), "t16.tif", 1200).shape == (30, 40, 3)


def test_check_sees_the_upright_size_and_depth_before_decoding(tmp_path, monkeypatch):
    seen = []

    class Refused(Exception):
        pass

    def refuse(w, h, depth):
        seen.append((w, h, depth))
        raise Refused

    jpg = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 40×30, upright 30×40
    _photo(jpg, exif=exif.tobytes())
    p16 = tmp_path / "d.png"
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(p16)
    real_loaded = decode._loaded
    monkeypatch.setattr(decode, "_loaded", lambda *a: pytest.fail("decoded before `check`"))
    for src in (jpg, p16):
        with pytest.raises(Refused):
            read_image(src, check=refuse)
    assert seen == [(30, 40, 8), (40, 30, 16)]
    monkeypatch.setattr(decode, "_loaded", real_loaded)
    assert read_image(jpg, check=lambda w, h, d: seen.append((w, h, d))).size == (30, 40)


def test_batch_fails_only_the_bomb_and_finishes(tmp_path, tiny_ckpt):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    for i in range(2):
        _photo(src / f"a{i}.png", 16, 12)
    bomb_png(src / "b_bomb.png", 30000, 30000)
    _photo(src / "c.png", 16, 12)
    rc, _, err, peak = cli_in_child("batch", str(src), "-o", str(out), "-m", str(tiny_ckpt()),
                               "--device", "cpu", "--report", str(rep))
    assert rc == 3, err[-2000:]  # some files failed
    assert sorted(p.name for p in out.iterdir()) == ["a0_x4.png", "a1_x4.png", "c_x4.png"]
    report = json.loads(rep.read_text())
    assert (report["counts"]["done"], report["counts"]["failed"]) == (3, 1)
    [bad] = [f for f in report["files"] if f["status"] == "failed"]
    assert bad["input"].endswith("b_bomb.png") and "900 megapixels" in bad["reason"]
    assert "Traceback" not in err and peak < RSS_LIMIT_MIB, peak


def cli_in_child(*args: str) -> tuple[int, str, str, float]:
    """The real CLI in a limited child (a regression must not build 14 GB in this process)."""
    code = "from clipsr_cli.cli.app import main\nsys.argv = ['clipsr'] + sys.argv[1:]\nmain()"
    return limited(code, *args)


def test_cli_upscale_refuses_a_bomb_in_one_line(tmp_path):
    bomb = bomb_png(tmp_path / "b.png", 30000, 30000)
    rc, _, err, peak = cli_in_child("upscale", str(bomb), "--device", "cpu")
    assert rc == 1, err[-2000:]
    lines = err.splitlines()
    assert len(lines) == 1 and "900 megapixels" in lines[0] and "CLIPSR_MAX_PIXELS" in lines[0]
    assert peak < RSS_LIMIT_MIB, peak


# -- checkpoints: configs, headers, dtypes -------------------------------------------------------
def _hostile(tmp_path: Path, name: str, *, state=None,
             version: str = str(checkpoint.FORMAT_VERSION), **changes) -> Path:
    """A tiny model's real tensors under a config with ``changes``."""
    cfg = tiny_model_config(4)
    if state is None:
        state = build_model(cfg).state_dict()
    config = {**json.loads(cfg.to_json()), **changes}
    meta = {"format": "clipsr", "format_version": version, "config": json.dumps(config)}
    path = tmp_path / name
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    return path


def _raw(tmp_path: Path, name: str, header, payload: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(len(text).to_bytes(8, "little") + text + payload)
    return path


@pytest.mark.parametrize("changes,field", [
    ({"encoder_widths": [20000] * 3}, "encoder_widths"),
    ({"encoder_widths": [10**6] * 3}, "encoder_widths"),
    ({"encoder_widths": [8] * 9}, "encoder_widths"),
    ({"encoder_widths": [8, 12.5, 16]}, "encoder_widths"),
    ({"body_blocks": 10**7}, "body_blocks"),
    ({"stage_blocks": -1}, "stage_blocks"),
    ({"up_widths": [0, 8]}, "up_widths"),
    ({"up_widths": [True, 8]}, "up_widths"),
    ({"prompt_tokens": 1000}, "prompt_tokens"),
    ({"text_dim": 10**6}, "text_dim"),
    ({"clip_image_size": 0}, "clip_image_size"),
    ({"scale": 4.0}, "scale"),
    ({"negative_slope": "steep"}, "negative_slope"),
    ({"negative_slope": 1e308 * 10}, "negative_slope"),
    ({"fu_fusion": 1}, "fu_fusion"),
    ({"fu_film": "yes"}, "fu_film"),
    ({"clip": ["ViT-B-32"], "text_dim": 16, "clip_width": 8}, "clip"),
])
def test_configs_out_of_range_are_refused_before_building(tmp_path, changes, field):
    path = _hostile(tmp_path, "h.safetensors", **changes)
    with pytest.raises(ModelError, match=f"invalid model config: {field}") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)


def test_hostile_checkpoints_are_refused_in_little_memory_and_time(tmp_path):
    paths = [_hostile(tmp_path, "wide.safetensors", encoder_widths=[20000] * 3),
             _hostile(tmp_path, "mega.safetensors", encoder_widths=[10**6] * 3),
             _hostile(tmp_path, "deep.safetensors", body_blocks=10**7),
             # in range but not what the tensors are: built on the meta device only
             _hostile(tmp_path, "big.safetensors", encoder_widths=[1024] * 3, body_blocks=64,
                      stage_blocks=64, up_widths=[1024] * 4)]
    results, peak = refuse_in_child("checkpoint", *paths)
    for kind, msg, seconds in results:
        assert kind == "ModelError", (kind, msg)
    assert "weights do not match" in results[-1][1]
    assert peak < RSS_LIMIT_MIB, peak


def test_malformed_headers_are_one_line_model_errors(tmp_path):
    small = tiny_model_config(4)
    good = save_checkpoint(tmp_path / "g.safetensors", build_model(small), small)
    n = int.from_bytes(good.read_bytes()[:8], "little")
    header = json.loads(good.read_bytes()[8:8 + n])
    payload = good.read_bytes()[8 + n:]
    first = next(k for k in header if k != "__metadata__")
    cases = {
        "list": (_raw(tmp_path, "list.safetensors", [1, 2, 3]), "header is a JSON list"),
        "string": (_raw(tmp_path, "str.safetensors", "clipsr"), "header is a JSON str"),
        "nested": (_raw(tmp_path, "deep.safetensors", b"[" * 100_000 + b"]" * 100_000),
                   "not JSON"),
        "not-json": (_raw(tmp_path, "nj.safetensors", b"{\xff\xfe"), "not JSON"),
        "meta": (_raw(tmp_path, "m.safetensors", {**header, "__metadata__": {"format": 1}},
                      payload), "metadata"),
        "entry": (_raw(tmp_path, "e.safetensors", {**header, first: {"dtype": "F32"}}, payload),
                  "malformed header entry"),
        "offsets": (_raw(tmp_path, "o.safetensors",
                         {**header, first: {**header[first], "data_offsets": [5, 1]}}, payload),
                    "malformed header entry"),
        "version": (_hostile(tmp_path, "v.safetensors", version="abc"), "format 'abc'"),
        "config": (_raw(tmp_path, "c.safetensors", {**header, "__metadata__": {
            "format": "clipsr", "format_version": "2", "config": "[" * 100_000}}, payload),
            "not valid JSON"),
    }
    big = tmp_path / "huge-header.safetensors"
    big.write_bytes((64 << 20).to_bytes(8, "little") + b" " * (64 << 20))
    cases["huge"] = (big, "MiB")
    for name, (path, words) in cases.items():
        with pytest.raises(ModelError, match=words) as e:
            read_checkpoint(path)
        assert "\n" not in str(e.value), name


def test_non_float_tensors_are_refused_float_ones_load(tmp_path):
    cfg = tiny_model_config(4)
    state = build_model(cfg).state_dict()
    name = "upsampler.out.weight"
    bad = _hostile(tmp_path, "i16.safetensors", state={**state, name: (state[name] * 100)
                                                        .to(torch.int16)})
    with pytest.raises(ModelError, match=f"{name} is stored as I16; it needs F32 or F16 or BF16"):
        load_checkpoint(bad)
    for dtype in (torch.float16, torch.bfloat16):
        path = save_checkpoint(tmp_path / f"{dtype}.safetensors", build_model(cfg), cfg,
                               dtype=dtype)
        assert all(p.dtype == torch.float32 for p in load_checkpoint(path).parameters())
    f64 = _hostile(tmp_path, "f64.safetensors", state={k: v.double() for k, v in state.items()})
    with pytest.raises(ModelError, match="stored as F64"):
        read_checkpoint(f64)


def test_shapes_and_names_are_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    cfg = tiny_model_config(4)
    state = build_model(cfg).state_dict()
    wrong = _hostile(tmp_path, "shape.safetensors", state={**state, "encoder.head.weight":
                                                           torch.zeros(3, 3, 3, 3)})
    extra = _hostile(tmp_path, "extra.safetensors", state={**state, "bogus": torch.zeros(2)})
    fewer = _hostile(tmp_path, "fewer.safetensors", state={
        k: v for k, v in state.items() if not k.startswith("refinement.body.")})
    monkeypatch.setattr(checkpoint, "load", lambda data: pytest.fail("tensors read first"))
    with pytest.raises(ModelError, match=r"weights do not match the model config \(encoder.head"
                                         r".weight has shape \[3, 3, 3, 3\], the config needs"):
        read_checkpoint(wrong)
    with pytest.raises(ModelError, match=r"weights do not match.*unexpected bogus"):
        read_checkpoint(extra)
    with pytest.raises(ModelError, match=r"missing refinement\.body\..* and \d+ more"):
        read_checkpoint(fewer)


def test_real_checkpoints_pass_every_check(tmp_path, tiny_ckpt):
    weights = sorted((ROOT / "clipsr_cli" / "weights").glob("*.safetensors"))
    assert weights
    for path in [*weights, tiny_ckpt()]:
        cfg, state, _ = read_checkpoint(path)
        assert limits.check_config(cfg) is cfg
        assert set(state) == set(limits.expected_tensors(cfg))
    cfg = tiny_model_config(4, text=True)
    path = save_checkpoint(tmp_path / "t.safetensors", build_model(cfg), cfg)
    assert read_checkpoint(path)[0] == cfg
    assert set(load_file(str(path))) == set(limits.expected_tensors(cfg))


def test_expected_tensors_allocate_nothing_and_leave_the_rng_alone():
    cfg = ModelConfig(scale=16, encoder_widths=(1024,) * 3, body_blocks=8, up_widths=(512,) * 4)
    torch.manual_seed(0)
    a = torch.randn(4)
    torch.manual_seed(0)
    shapes = limits.expected_tensors(cfg)
    assert torch.equal(torch.randn(4), a)
    assert shapes["encoder.head.weight"][0] == (1024, 3, 3, 3)
    assert set(limits.RANGES) <= {f for f in ModelConfig.__dataclass_fields__}


def test_cli_refuses_hostile_checkpoints_in_one_line(tmp_path):
    img = _photo(tmp_path / "p.png", 16, 12)
    for ckpt, words in [(_hostile(tmp_path, "w.safetensors", encoder_widths=[20000] * 3),
                         "invalid model config: encoder_widths"),
                        (_hostile(tmp_path, "v.safetensors", version="abc"), "format 'abc'"),
                        (_raw(tmp_path, "l.safetensors", [1]), "JSON list")]:
        rc, _, err, peak = cli_in_child("upscale", str(img), "-m", str(ckpt), "--device", "cpu",
                                        "-o", str(tmp_path / "o.png"))
        assert rc == 1, err[-2000:]
        lines = err.splitlines()
        assert len(lines) == 1 and words in lines[0], err[-2000:]
        assert not (tmp_path / "o.png").exists() and peak < RSS_LIMIT_MIB
