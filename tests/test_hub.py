"""The hub as a library: explicit ``offline``, the ``progress`` callback, notes through the
``clipsr`` logger (never printed), the User-Agent, and the one-way split
registry ← store ← transfer ← fetch ← resolve."""

from __future__ import annotations

import importlib.metadata
import logging

import pytest
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import DownloadError, log
from clipsr_cli.hub import fetch, registry, resolve, store
from tests.test_download import PAYLOAD, _cache_files, _entry_toml, _registry, home, server  # noqa: F401


@pytest.fixture
def foo(server, home, tmp_path, monkeypatch):  # noqa: F811
    server.files["/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml("foo", [server.url + "/foo.safetensors"]))
    return registry.load_registry().get("foo")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_explicit_offline_wins_over_the_environment(server, foo, home, monkeypatch):
    with pytest.raises(DownloadError) as e:
        resolve.resolve_model("foo", offline=True)
    assert "offline (`offline=True`)" in str(e.value)  # a Python caller reads its keyword
    assert server.hits == [] and _cache_files(home) == []
    monkeypatch.setenv("CLIPSR_OFFLINE", "1")
    with pytest.raises(DownloadError, match="CLIPSR_OFFLINE=1"):
        resolve.resolve_model("foo")  # None: the environment decides
    assert resolve.resolve_model("foo", offline=False).read_bytes() == PAYLOAD
    assert len(server.hits) == 1


def test_progress_callback_and_notes_go_to_the_caller(server, foo, monkeypatch, capsys):
    rec = _Records()
    monkeypatch.setattr(log, "handlers", [rec])  # no CLI handler: nothing may be printed
    calls = []
    path = fetch.ensure(foo, progress=lambda *a: calls.append(a))
    assert path.read_bytes() == PAYLOAD
    assert calls[0] == ("foo.safetensors", 0, len(PAYLOAD))
    assert calls[-1] == ("foo.safetensors", len(PAYLOAD), len(PAYLOAD))
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and len(calls) > 2
    assert any(r.levelno == logging.INFO and "downloading foo from" in r.getMessage()
               for r in rec.records)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    calls.clear()
    assert fetch.ensure(foo, progress=lambda *a: calls.append(a)) == path and calls == []


def test_mirror_fallback_is_a_warning_record(server, home, tmp_path, monkeypatch):  # noqa: F811
    server.files["/b/foo.safetensors"] = PAYLOAD
    _registry(tmp_path, monkeypatch, _entry_toml(
        "foo", [server.url + "/a/foo.safetensors", server.url + "/b/foo.safetensors"]))
    rec = _Records()
    monkeypatch.setattr(log, "handlers", [rec])
    resolve.resolve_model("foo")
    warnings = [r.getMessage() for r in rec.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "404" in warnings[0] and "next mirror" in warnings[0]


def test_user_agent_names_clipsr_and_its_version(server, foo):
    resolve.resolve_model("foo")
    assert server.agents == [f"clipsr/{importlib.metadata.version('clipsr')}"]
    assert "http" not in fetch._USER_AGENT  # no made-up project URL


def test_quiet_download_draws_no_bar(server, foo):
    r = CliRunner().invoke(app, ["download", "foo", "-q"])
    assert r.exit_code == 0, r.output
    assert "kB" not in r.stderr and "downloading" not in r.stderr
    assert store.install_status(foo) == "installed"


def test_install_from_file_names_its_parameter(home, foo, tmp_path):
    with pytest.raises(Exception, match="`src`: file not found"):
        store.install_from_file(foo, tmp_path / "nope")
    r = CliRunner().invoke(app, ["download", "foo", "--from", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "error: --from: file not found" in r.stderr


def test_hub_modules_import_one_way():
    import ast
    from pathlib import Path

    order = ["weightfiles", "entries", "registry", "store", "transfer", "fetch", "resolve"]
    hub = Path(registry.__file__).parent
    for i, name in enumerate(order):
        tree = ast.parse((hub / f"{name}.py").read_text())
        used = {n.module.rsplit(".", 1)[-1] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("clipsr_cli.hub.")}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and n.module == "clipsr_cli.hub" for a in n.names}
        assert used <= set(order[:i]), (name, used)
