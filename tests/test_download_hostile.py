"""Downloads from hostile servers (issue #12, items 1, 6, 8): an endless stream, a trickle, a
lying Content-Length, a full disk. Every failure is one ``DownloadError`` line saying what to do,
and nothing a later run cannot use is left in the cache."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

from clipsr_cli.errors import DownloadError, UsageError
from clipsr_cli.hub import fetch as dl
from clipsr_cli.hub import registry, resolve, store
from tests.test_download import (  # noqa: F401
    PAYLOAD, REPO, SHA, _cache_files, _entry_toml, _registry, _run, home, server,
)

MiB = 1 << 20


def _policy(monkeypatch, **kw) -> None:
    base = dict(attempts=2, backoff=0.01, timeout=5, lock_timeout=60, chunk=64 * 1024)
    monkeypatch.setattr(dl, "POLICY", dl.RetryPolicy(**{**base, **kw}))


def _entry(name: str = "foo"):
    return registry.load_registry().get(name)


# --------------------------------------------------------------------------------------------
# 1. an endless download is cut at the cap (size unknown) or at the size (size known)


def test_an_endless_http_stream_is_cut_at_the_cap(server, home, tmp_path, monkeypatch):
    server.endless.add("/foo.safetensors")
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], size=None))
    _policy(monkeypatch, max_unknown_size=1 * MiB)
    with pytest.raises(DownloadError) as e:
        resolve.resolve_model("foo")
    msg = str(e.value)
    assert "limit for a file of unknown size" in msg and "CLIPSR_MAX_DOWNLOAD_BYTES" in msg
    assert "\n" not in msg
    assert _cache_files(home) == []  # the over-the-cap .part is of no use: removed
    assert server.sent["/foo.safetensors"] < 16 * MiB  # stopped reading (socket buffers aside)
    assert len(server.hits) == 1  # not retried: the same URL would do the same again


def test_file_dev_zero_is_refused_as_a_device(home, tmp_path, monkeypatch):
    """``file:///dev/zero`` is not a regular file: refused at once (issue #20, item 6), never
    read; through the CLI in a child process whose file size is limited to 64 MiB, so that a
    regression fails instead of filling the disk."""
    _registry(tmp_path, monkeypatch, _entry_toml("zero", ["file:///dev/zero"], size=None))
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        from clipsr_cli.cli.app import main
        sys.argv = ["clipsr", "download", "zero"]
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIPSR_MAX_DOWNLOAD_BYTES": str(4 * MiB)}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download zero") and "character device" in last, p.stderr
    assert "Traceback" not in p.stderr
    assert _cache_files(home) == []


def test_a_content_length_over_the_cap_is_refused_before_any_byte(server, home, tmp_path,
                                                                  monkeypatch):
    server.files["/foo.safetensors"] = bytes(2 * MiB)
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], size=None))
    _policy(monkeypatch, max_unknown_size=1 * MiB)
    progress = []
    with pytest.raises(DownloadError, match="the server says it is 2097152 bytes"):
        dl.ensure(_entry(), progress=lambda *a: progress.append(a))
    assert progress == [] and _cache_files(home) == []


def test_a_leftover_part_over_the_cap_is_deleted_unread(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], size=None))
    _policy(monkeypatch, max_unknown_size=1 * MiB)
    dest = store.installed_path(_entry())
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(bytes(2 * MiB))  # an old endless download
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert server.hits == [("/foo.safetensors", None)]  # not resumed from 2 MiB


def test_bad_limits_in_the_environment_are_one_clear_error(server, home, tmp_path,
                                                           monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], size=None))
    for var, value in [("CLIPSR_MAX_DOWNLOAD_BYTES", "lots"), ("CLIPSR_MAX_DOWNLOAD_BYTES", "0"),
                       ("CLIPSR_STALL_SECONDS", "-1"), ("CLIPSR_STALL_SECONDS", "soon")]:
        monkeypatch.setenv(var, value)
        with pytest.raises(DownloadError, match=f"{var}='{value}' .*; fix or unset it"):
            resolve.resolve_model("foo")
        monkeypatch.delenv(var)
    assert server.hits == []
    with pytest.raises(UsageError, match="`stall_seconds` must be >= 0"):
        dl.RetryPolicy(stall_seconds=-1)
    with pytest.raises(UsageError, match="`max_unknown_size`"):
        dl.RetryPolicy(max_unknown_size=0)
    monkeypatch.setenv("CLIPSR_STALL_SECONDS", "0")  # 0 turns the stall limit off
    monkeypatch.setenv("CLIPSR_MAX_DOWNLOAD_BYTES", str(len(PAYLOAD)))  # just enough
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------
# 6. a trickle is a stall: the try fails (retried, then the next mirror, then one error line)


@pytest.mark.parametrize("via", ["policy", "environment"])
def test_a_trickling_server_stalls_out(server, home, tmp_path, monkeypatch, via):
    server.files["/foo.safetensors"] = PAYLOAD
    server.trickle["/foo.safetensors"] = (0.05, 4.0)  # 20 B/s for 4 s, then it hangs up
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    if via == "policy":
        _policy(monkeypatch, stall_seconds=0.3)
    else:
        _policy(monkeypatch)
        monkeypatch.setenv("CLIPSR_STALL_SECONDS", "0.3")
    t0 = time.monotonic()
    r = _run("download", "foo")
    took = time.monotonic() - t0
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download foo") and "stalled" in last, r.stderr
    assert "1 KiB/s" in last and "gave up after 2 tries" in last and "CLIPSR_MIRROR" in last
    assert took < 3.5  # two 0.3-s windows, not the trickle's 4 s per try
    assert len(server.hits) == 2  # POLICY.attempts, although each try added a few bytes


def test_a_stalled_mirror_moves_on_to_the_next(server, home, tmp_path, monkeypatch):
    server.files["/a/foo.safetensors"] = server.files["/b/foo.safetensors"] = PAYLOAD
    server.trickle["/a/foo.safetensors"] = (0.05, 4.0)
    _registry(tmp_path, monkeypatch, _entry_toml(
        "foo", [server.url + "/a/foo.safetensors", server.url + "/b/foo.safetensors"]))
    _policy(monkeypatch, stall_seconds=0.3, attempts=1)
    t0 = time.monotonic()
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD  # b resumed a's bytes
    assert time.monotonic() - t0 < 3.0  # a given up after 0.3 s, not after its 4-s trickle
    assert [h[0] for h in server.hits] == ["/a/foo.safetensors", "/b/foo.safetensors"]
    assert server.hits[1][1] is not None and server.hits[1][1].startswith("bytes=")


# --------------------------------------------------------------------------------------------
# 8. the hash is checked as soon as the file can be complete, whatever Content-Length says


@pytest.mark.parametrize("size", [len(PAYLOAD), None], ids=["size-known", "size-unknown"])
@pytest.mark.parametrize("hang", [0.0, 3.0], ids=["then-close", "then-hang"])
def test_a_content_length_1mb_too_large_still_installs(server, home, tmp_path, monkeypatch,
                                                       size, hang):
    server.files["/foo.safetensors"] = PAYLOAD
    server.lie_length["/foo.safetensors"] = (1_000_000, hang)  # and Range is ignored
    _registry(tmp_path, monkeypatch,
              _entry_toml("foo", [server.url + "/foo.safetensors"], size=size))
    _policy(monkeypatch, stall_seconds=0.3)
    t0 = time.monotonic()
    path = resolve.resolve_model("foo")
    assert time.monotonic() - t0 < 2.5
    assert path.read_bytes() == PAYLOAD
    assert len(server.hits) == 1  # no re-downloads
    assert [p.name for p in _cache_files(home)] == ["foo.safetensors", "foo.safetensors.verified"]


def test_the_right_bytes_with_junk_after_them_are_the_file(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD + b"x" * 300_000
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD  # never more than `size`
    assert len(server.hits) == 1


def test_a_complete_partial_file_is_used_or_removed(server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    dest = store.installed_path(_entry())
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # an interrupted install: the bytes are all there
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert server.hits == []  # verified as it is, no request
    dest.unlink()
    part.write_bytes(b"!" * len(PAYLOAD))  # full size, wrong bytes: cannot be resumed
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert server.hits == [("/foo.safetensors", None)]  # from the start, not a Range
    assert not part.exists()


# --------------------------------------------------------------------------------------------
# a full disk


def test_a_full_disk_removes_the_partial_file_and_says_how_much_is_needed(
        server, home, tmp_path, monkeypatch):
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    real_write, written = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            if written:  # the first block fits, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    r = _run("download", "foo")
    assert written and r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the disk is full") and f"needs {len(PAYLOAD)} bytes" in last
    assert "CLIPSR_HOME" in last and "deleted" in last
    assert _cache_files(home) == []
    monkeypatch.setattr(os, "write", real_write)
    assert resolve.resolve_model("foo").read_bytes() == PAYLOAD
    assert hashlib.sha256(PAYLOAD).hexdigest() == SHA


def test_a_full_disk_with_an_unknown_size(home, tmp_path, monkeypatch):
    src = tmp_path / "foo.safetensors"
    src.write_bytes(PAYLOAD)
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [src.as_uri()], size=None))
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DownloadError, match=f"needs {len(PAYLOAD)} bytes") as e:
        resolve.resolve_model("foo")  # a file:// source knows its size
    assert "free some space" in str(e.value)
    assert _cache_files(home) == []
