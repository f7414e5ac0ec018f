"""Downloads against a real HTTP server on 127.0.0.1 (a thread): verify, resume, mirrors, locks,
offline mode, --verify, --from, CLIPSR_HOME, registries, and ``upscale -m NAME`` end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsr_cli.hub import fetch as dl
from clipsr_cli.hub import registry, resolve, store
from clipsr_cli.cli.app import app
from clipsr_cli.errors import DownloadError, ModelError

PAYLOAD = bytes(range(256)) * 2048  # 512 KiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# a small HTTP server: Range support, a connection drop, 404s, 503s, request log, throttling


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        rng = self.headers.get("Range")
        with srv.lock:
            srv.hits.append((self.path, rng))
            srv.agents.append(self.headers.get("User-Agent"))
            fail = srv.fail_first.get(self.path, 0)
            if fail:
                srv.fail_first[self.path] = fail - 1
            drop = self.path in srv.drop_once
            srv.drop_once.discard(self.path)
        if fail:
            self.send_error(503)
            return
        try:
            if self._hostile(srv):
                return
        except OSError:  # the client hung up (as it should, on a hostile server)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:  # promise the whole body, send half of it, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = 64 * 1024
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if srv.throttle:
                time.sleep(srv.throttle)


    def _hostile(self, srv) -> bool:
        """The misbehaving servers of issue #12; True when this request was one of them."""
        if self.path in srv.endless:  # no Content-Length, zeros until the client hangs up
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            block = bytes(64 * 1024)
            while srv.sent.get(self.path, 0) < srv.endless_limit:
                self.wfile.write(block)
                with srv.lock:
                    srv.sent[self.path] = srv.sent.get(self.path, 0) + len(block)
            return True
        if self.path in srv.trickle:  # one byte every `interval` s, for at most `seconds` s
            data, (interval, seconds) = srv.files[self.path], srv.trickle[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            t0 = time.monotonic()
            for i in range(len(data)):
                if time.monotonic() - t0 > seconds:
                    break
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(interval)
            self.close_connection = True
            return True
        if self.path in srv.lie_length:  # Content-Length + extra, Range ignored, then a hang
            data, (extra, hang) = srv.files[self.path], srv.lie_length[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + extra))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            time.sleep(hang)
            self.close_connection = True
            return True
        return False


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.hits, srv.drop_once, srv.fail_first = {}, [], set(), {}
    srv.agents = []
    srv.throttle = 0.0
    srv.endless, srv.endless_limit, srv.sent = set(), 64 << 20, {}
    srv.trickle, srv.lie_length = {}, {}
    srv.lock = threading.Lock()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty cache, no user registry, online, with tiny retry delays."""
    h = tmp_path / "home"
    monkeypatch.setenv("CLIPSR_HOME", str(h))
    for var in ("HF_HUB_OFFLINE", "CLIPSR_OFFLINE", "CLIPSR_REGISTRY", "CLIPSR_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "POLICY", dl.RetryPolicy(attempts=3, backoff=0.01, timeout=5,
                                                     lock_timeout=60, chunk=64 * 1024))
    return h


def _entry_toml(name: str, urls: list[str], sha: str = SHA, size: int | None = len(PAYLOAD),
                file: str | None = None, **extra) -> str:
    lines = ["[[model]]", f'name = "{name}"', 'kind = "generator"',
             f'description = "test model {name}"', 'license = "MIT"',
             f'file = "{file or name + ".safetensors"}"', f'sha256 = "{sha}"',
             f"urls = {json.dumps(urls)}", "scale = 4", "text_guided = false"]
    if size is not None:
        lines.append(f"size = {size}")
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def _registry(tmp_path, monkeypatch, text: str) -> Path:
    p = tmp_path / "extra.toml"
    p.write_text(text)
    monkeypatch.setenv("CLIPSR_REGISTRY", str(p))
    return p


def _cache_files(home: Path) -> list[Path]:
    d = home / "models"
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


# --------------------------------------------------------------------------------------------


def test_download_verifies_and_installs(server, home, tmp_path, monkeypatch):
    server.files["/m/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/m/foo.safetensors"]))
    r = _run("download", "foo")
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip())
    assert path.read_bytes() == PAYLOAD
    assert path.is_relative_to(home)  # CLIPSR_HOME is respected
    assert registry.cache_dir() == home
    assert [p.name for p in _cache_files(home)] == ["foo.safetensors", "foo.safetensors.verified"]
    assert "downloading foo" in r.stderr
    assert "524.3/524.3 kB" in r.stderr  # the progress bar (bytes, speed, ETA) is on stderr
    # second time: no request, same file
    n = len(server.hits)
    r = _run("download", "foo")
    assert r.exit_code == 0 and Path(r.stdout.strip()) == path
    assert len(server.hits) == n and "already installed" in r.stderr
    r = _run("download", "--verify")
    assert r.exit_code == 0, r.output
    assert "ok" in r.stdout and "foo" in r.stdout


def test_resume_after_connection_drop(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    server.drop_once.add("/foo.safetensors")
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    path = resolve.resolve_model("foo")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert server.hits[0] == ("/foo.safetensors", None)
    assert server.hits[1] == ("/foo.safetensors", f"bytes={len(PAYLOAD) // 2}-")  # resumed
    assert len(server.hits) == 2


def test_partial_file_from_an_interrupted_run_is_resumed(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    entry = registry.load_registry().get("foo")
    dest = store.installed_path(entry)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD[:1000])
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert server.hits == [("/foo.safetensors", "bytes=1000-")]
    assert not dest.with_name(dest.name + ".part").exists()


def test_wrong_hash_exits_1_and_leaves_nothing(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    bad = "0" * 64
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], sha=bad, size=None))
    r = _run("download", "foo")
    assert r.exit_code == 1
    assert bad in r.stderr and SHA in r.stderr  # expected and actual
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) >= 1
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert _cache_files(home) == []
    with pytest.raises(DownloadError):
        resolve.resolve_model("foo")
    assert _cache_files(home) == []


def test_oversized_download_is_cut_and_rejected(server, home, tmp_path, monkeypatch):
    # (junk first: the first `size` bytes are not the file; PAYLOAD + junk would verify at
    # `size` bytes and be accepted, see test_download_hostile.py)
    server.files["/foo.safetensors"] = b"x" * 300_000 + PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    with pytest.raises(DownloadError, match="does not match its sha256"):
        resolve.resolve_model("foo")
    assert _cache_files(home) == []


def test_404_on_first_mirror_uses_the_second(server, home, tmp_path, monkeypatch):
    server.files["/b/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml(
        "foo", [server.url + "/a/foo.safetensors", server.url + "/b/foo.safetensors"]))
    r = _run("download", "foo")
    assert r.exit_code == 0, r.output
    assert [h[0] for h in server.hits] == ["/a/foo.safetensors", "/b/foo.safetensors"]
    assert "404" in r.stderr and "next mirror" in r.stderr


def test_transient_errors_are_retried(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    server.fail_first["/foo.safetensors"] = 2  # two 503s, then the file
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert len(server.hits) == 3


def test_every_mirror_failing_is_one_clear_error(server, home, tmp_path, monkeypatch):
    server.fail_first["/foo.safetensors"] = 99
    _registry(tmp_path, monkeypatch, _entry_toml(
        "foo", [server.url + "/gone.safetensors", server.url + "/foo.safetensors"]))
    r = _run("download", "foo")
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download foo") and "404" in last and "503" in last
    assert "--from FILE" in last
    assert len([h for h in server.hits if h[0] == "/foo.safetensors"]) == 3  # POLICY.attempts


def test_clipsr_mirror_is_tried_first_and_file_urls_work(server, home, tmp_path, monkeypatch):
    shared = tmp_path / "shared disk"
    shared.mkdir()
    (shared / "foo.safetensors").write_bytes(PAYLOAD)
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    monkeypatch.setenv("CLIPSR_MIRROR", shared.as_uri())
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert server.hits == []  # served from the file:// mirror


def test_file_urls_work_offline(home, tmp_path, monkeypatch):
    src = tmp_path / "foo.safetensors"
    src.write_bytes(PAYLOAD)
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [src.as_uri()]))
    monkeypatch.setenv("CLIPSR_OFFLINE", "1")
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD


def test_two_concurrent_downloads_end_with_one_good_file(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    server.throttle = 0.03  # ~0.25 s per download, so that the two overlap
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    script = textwrap.dedent("""
        from clipsr_cli.hub import fetch as dl
        from clipsr_cli.hub import resolve
        dl.POLICY = dl.RetryPolicy(backoff=0.01, timeout=10, lock_timeout=60)
        print(resolve.resolve_model("foo"))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert [p.name for p in _cache_files(home)] == ["foo.safetensors", "foo.safetensors.verified"]
    assert server.hits == [("/foo.safetensors", None)]  # the second process waited and reused it


def test_two_concurrent_threads(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    server.throttle = 0.02
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    results: list = []

    def work() -> None:
        try:
            results.append(resolve.resolve_model("foo"))
        except Exception as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and all(isinstance(p, Path) for p in results), results
    assert results[0] == results[1] and results[0].read_bytes() == PAYLOAD
    assert len(server.hits) == 1


def test_offline_gives_the_command_to_run(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    url = server.url + "/foo.safetensors"
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [url]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        resolve.resolve_model("foo")
    msg = str(e.value)
    assert "'clipsr download foo'" in msg and url in msg and "HF_HUB_OFFLINE=1" in msg
    assert "--from FILE" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    r = _run("download", "foo", "--offline")
    assert r.exit_code == 1 and "offline (--offline)" in r.stderr and "clipsr download foo" in r.stderr
    assert server.hits == [] and _cache_files(home) == []


def test_verify_finds_a_corrupted_file_which_is_then_never_loaded(server, home, tmp_path,
                                                                    monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    path = resolve.resolve_model("foo")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # bit rot: same size, same mtime
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    r = _run("download", "--verify")
    assert r.exit_code == 1
    assert "MISMATCH" in r.stdout and SHA in r.stdout
    assert "download foo --force" in r.stderr
    with pytest.raises(DownloadError, match="fails verification"):
        resolve.resolve_model("foo")
    r = _run("download", "foo", "--force")
    assert r.exit_code == 0, r.output
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD


def test_a_truncated_installed_file_is_caught_by_its_size(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    path = resolve.resolve_model("foo")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DownloadError, match="100 bytes, expected"):
        resolve.resolve_model("foo")
    assert store.install_status(registry.load_registry().get("foo")) == "damaged"


def test_from_file_checks_the_hash(home, tmp_path, monkeypatch):
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", ["http://127.0.0.1:9/foo.safetensors"], size=None))
    monkeypatch.setenv("CLIPSR_OFFLINE", "1")  # --from works offline
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(PAYLOAD[:-1] + b"!")
    r = _run("download", "foo", "--from", str(wrong))
    assert r.exit_code == 1 and SHA in r.stderr and "nothing was installed" in r.stderr
    assert _cache_files(home) == []
    good = tmp_path / "ViT-whatever.bin"
    good.write_bytes(PAYLOAD)
    r = _run("download", "foo", "--from", str(good))
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.strip()).read_bytes() == PAYLOAD
    assert resolve.resolve_model("foo") == Path(r.stdout.strip())
    assert _run("download", "foo", "--from", str(tmp_path / "nope")).exit_code == 1


def test_user_registry_is_merged_and_overrides_warn(server, home, tmp_path, monkeypatch, capsys):
    server.files["/bar.safetensors"] = PAYLOAD
    home.mkdir()
    (home / "models.toml").write_text(
        _entry_toml("bar", [server.url + "/bar.safetensors"])
        + _entry_toml("clip-vit-b-32", [server.url + "/x.pt"], file="x.pt").replace(
            'kind = "generator"', 'kind = "clip"').replace(
            "scale = 4\ntext_guided = false\n", 'arch = "ViT-B-32"\nweights = "openai"\n'))
    reg = registry.load_registry()
    assert "bar" in reg and "clip-vit-b-16" in reg  # merged over the built-in entries
    assert reg.get("clip-vit-b-32").origin == str(home / "models.toml")
    assert "overridden" in capsys.readouterr().err
    assert resolve.resolve_model("bar").read_bytes() == PAYLOAD
    # CLIPSR_REGISTRY comes last and wins
    _registry(tmp_path, monkeypatch, _entry_toml("bar", [server.url + "/bar2.safetensors"]))
    assert registry.load_registry().get("bar").urls == (server.url + "/bar2.safetensors",)


def test_clip_weights_are_served_from_the_cache(server, home, tmp_path, monkeypatch):
    server.files["/ViT-B-32.pt"] = PAYLOAD
    _registry(tmp_path, monkeypatch, textwrap.dedent(f"""
        [[model]]
        name = "clip-vit-b-32"
        kind = "clip"
        description = "test CLIP"
        license = "MIT"
        arch = "ViT-B-32"
        weights = "openai"
        file = "ViT-B-32.pt"
        sha256 = "{SHA}"
        urls = ["{server.url}/ViT-B-32.pt"]
    """))
    path = resolve.clip_weights_path("ViT-B-32", "openai")
    assert path is not None and path.read_bytes() == PAYLOAD and path.name == "ViT-B-32.pt"
    assert resolve.clip_weights_path("ViT-B-32", "laion2b_s34b_b79k") is None
    with pytest.raises(ModelError, match="CLIP backbone, not an upscaling model"):
        resolve.resolve_model("clip-vit-b-32")


def test_models_and_list_show_builtin_and_registered_entries(server, home, tmp_path,
                                                              monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    resolve.resolve_model("foo")
    r = CliRunner().invoke(app, ["models"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    for name in ("clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14", "foo"):
        assert name in lines
    assert "yes" in lines["foo"] and "x4" in lines["foo"] and "524.3 kB" in lines["foo"]
    assert lines["clip-vit-b-32"].rstrip().endswith("no")
    # an entry CLIP-SR cannot use is left out, and said so on stderr (-v lists it: issue #22)
    assert "clip-rn50" not in lines and "not listed: clip-rn50" in r.stderr
    # download --list: the table of 'models -v' (a header, every entry, descriptions)
    r = _run("download", "--list")
    assert r.exit_code == 0, r.output
    listed = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    assert set(listed) >= {"name", "clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14",
                           "clip-rn50", "foo"}
    assert "description" in listed["name"] and "not usable by CLIP-SR" in listed["clip-rn50"]
    assert " yes " in listed["foo"] and " no " in listed["clip-vit-b-32"]
    assert r.stdout == CliRunner().invoke(app, ["models", "-v"]).stdout
    names = CliRunner().invoke(app, ["models", "-q"]).stdout.split()
    assert "foo" in names and "clip-rn50" not in names and "name" not in names


def test_download_usage_errors(home):
    assert _run("download").exit_code == 2
    assert _run("download", "--all", "--list").exit_code == 2
    r = _run("download", "clip-vit-b32")
    assert r.exit_code == 1 and "did you mean 'clip-vit-b-32'" in r.stderr


def _tiny_checkpoint(path: Path) -> None:
    import torch

    from clipsr_cli.model.network import build_model
    from clipsr_cli.model.checkpoint import save_checkpoint
    from clipsr_cli.model.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(scale=4, encoder_widths=(8, 8, 8), body_blocks=1, up_widths=(8, 8, 8, 8))
    save_checkpoint(path, build_model(cfg), cfg)


def test_resolve_model_downloads_a_real_checkpoint(server, home, tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.safetensors"
    _tiny_checkpoint(ckpt)
    data = ckpt.read_bytes()
    server.files["/tiny-x4.safetensors"] = data
    _registry(tmp_path, monkeypatch, _entry_toml(
        "tiny-x4", [server.url + "/tiny-x4.safetensors"], sha=hashlib.sha256(data).hexdigest(),
        size=len(data)))
    path = resolve.resolve_model("tiny-x4")
    assert path.read_bytes() == data
    from clipsr_cli.model.checkpoint import read_checkpoint

    assert read_checkpoint(path)[0].scale == 4


def test_upscale_with_a_model_from_clipsr_registry(server, home, tmp_path, monkeypatch):
    pytest.importorskip("clipsr_cli.io.images", reason="clipsr upscale's image I/O is not in yet")
    from PIL import Image

    ckpt = tmp_path / "tiny.safetensors"
    _tiny_checkpoint(ckpt)
    data = ckpt.read_bytes()
    server.files["/models/tiny-x4.safetensors"] = data
    _registry(tmp_path, monkeypatch, _entry_toml(
        "tiny-x4", [server.url + "/models/tiny-x4.safetensors"],
        sha=hashlib.sha256(data).hexdigest(), size=len(data)))
    Image.new("RGB", (16, 12), (100, 150, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    r = _run("upscale", str(tmp_path / "in.png"), "-o", str(out), "-m", "tiny-x4", "-s", "4",
             "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (64, 48)
    assert server.hits == [("/models/tiny-x4.safetensors", None)]


def test_load_clip_reads_registered_weights_from_the_cache(server, home, tmp_path, monkeypatch):
    """The engine's CLIP loader gets its file from the registry/cache (open_clip loads it)."""
    import torch
    from safetensors.torch import save_file

    from clipsr_cli.infer.engine import load_clip_backbone as load_clip

    ref = load_clip("clipsr-tiny:random")
    state = {k: v.clone() + 0.5 for k, v in ref.model.state_dict().items()}  # distinguishable
    f = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(f))
    data = f.read_bytes()
    server.files["/tiny-clip.safetensors"] = data
    _registry(tmp_path, monkeypatch, textwrap.dedent(f"""
        [[model]]
        name = "clip-tiny-test"
        kind = "clip"
        description = "tiny CLIP for tests"
        license = "MIT"
        arch = "clipsr-tiny"
        weights = "test"
        file = "tiny-clip.safetensors"
        sha256 = "{hashlib.sha256(data).hexdigest()}"
        urls = ["{server.url}/tiny-clip.safetensors"]
    """))
    clip = load_clip("clipsr-tiny:test")
    got = clip.model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert server.hits == [("/tiny-clip.safetensors", None)]


def test_download_all_reports_each_failure_and_skips_unusable(home, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "foo.safetensors").write_bytes(PAYLOAD)
    _registry(tmp_path, monkeypatch, _entry_toml("foo", ["http://127.0.0.1:9/foo.safetensors"]))
    monkeypatch.setenv("CLIPSR_MIRROR", shared.as_uri())  # only foo is there
    r = _run("download", "--all", "--offline")  # offline: the file:// mirror only
    assert r.exit_code == 1
    assert "skipping clip-rn50" in r.stderr
    wanted = [e for e in registry.load_registry().entries  # a pipeline is its stages
              if e.name != "clip-rn50" and e.kind != "pipeline"]
    assert r.stderr.strip().splitlines()[-1] == (  # built-ins are checked too (and pass)
        f"error: 3 of {len(wanted)} downloads failed: clip-vit-b-32, clip-vit-b-16, clip-vit-l-14")
    assert store.install_status(registry.load_registry().get("foo")) == "installed"


def test_from_file_refuses_a_pipeline(home, tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    r = _run("download", "clipsr-lite-x8", "--from", str(f))
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "'clipsr-lite-x8' is a pipeline of other models" in r.stderr
    assert "(clipsr-lite-x4)" in r.stderr and _cache_files(home) == []


def test_download_tasks_return_typed_results(server, home, tmp_path, monkeypatch):
    from clipsr_cli.tasks import download as task

    server.files["/m/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [f"{server.url}/m/foo.safetensors"])
              + _entry_toml("bar", [f"{server.url}/m/missing.safetensors"]))
    listing = task.list_models(every=False)
    assert listing.hidden == ("clip-rn50",) and "clip-rn50" not in [e.name for e in listing.shown]
    rows = {r.entry.name: r for r in listing.rows()}
    assert (rows["clipsr-lite-x8"].installed, rows["clipsr-lite-x8"].size) == ("built-in", None)
    assert (rows["foo"].installed, rows["foo"].size) == ("no", len(PAYLOAD))
    reg, entries = task.select(["foo", "bar", "clipsr-lite-x8"])
    files = task.to_download(reg, entries, every=False)
    assert [e.name for e in files] == ["foo", "bar", "clipsr-lite-x4"]  # a pipeline: its stages
    results = []
    with pytest.raises(DownloadError, match="1 of 3 downloads failed: bar"):
        for r in task.download_models(files):
            results.append(r)
    assert [type(r).__name__ for r in results] == ["Fetched", "FetchFailed", "Fetched"]
    assert results[0].path.read_bytes() == PAYLOAD and isinstance(results[1].error, DownloadError)
    seen = []
    report = task.verify_models(reg, [], each=seen.append)  # none named: every installed file
    assert [r.entry.name for r in seen] == [r.entry.name for r in report.results]
    assert {"foo", "clipsr-lite-x4"} <= {r.entry.name for r in seen}
    assert report.failed == [] and report.check() is None
    results[0].path.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(DownloadError, match=r"1 of 1 model file\(s\) failed verification \(foo\)"):
        task.verify_models(reg, [reg.get("foo")]).check()


def test_the_download_and_models_commands_import_no_torch(home, tmp_path):
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from clipsr_cli.cli.app import app
        codes = [CliRunner().invoke(app, args).exit_code for args in (
            ["models"], ["models", "-v"], ["download", "--list"], ["download", "--verify"],
            ["download", "clip-vit-b-32", "--offline"], ["download", "clipsr-lite-x4"])]
        assert codes == [0, 0, 0, 0, 1, 0], codes
        sys.exit(3 if "torch" in sys.modules else 0)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIPSR_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
