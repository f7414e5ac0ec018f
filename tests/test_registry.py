"""The registry: schema (frozen dataclasses, unknown keys and missing fields rejected with the
file and entry named), merging, lookups, built-in package entries, offline detection."""

from __future__ import annotations

import hashlib
import os
import textwrap
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsr_cli.hub import fetch, registry, resolve, store
from clipsr_cli.cli.app import app
from clipsr_cli.errors import DownloadError, ModelError

SHA = "ab" * 32

GOOD = textwrap.dedent(f"""
    [[model]]
    name = "foo-x4"
    kind = "generator"
    description = "a test model"
    license = "MIT"
    file = "foo-x4.safetensors"
    size = 10
    sha256 = "{SHA}"
    urls = ["https://example.invalid/foo-x4.safetensors"]
    scale = 4
    text_guided = true
    clip = "ViT-B-32:openai"
""")


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("CLIPSR_HOME", str(h))
    for var in ("CLIPSR_REGISTRY", "CLIPSR_MIRROR", "CLIPSR_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


def _write(tmp_path: Path, text: str, name: str = "reg.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builtin_registry_has_the_clip_backbones(home):
    reg = registry.load_registry()
    for arch, sha in [("ViT-B-32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
                      ("ViT-B-16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
                      ("ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
                      ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762")]:
        e = reg.clip_entry(arch, "openai")
        assert e is not None and e.kind == "clip" and e.sha256 == sha
        assert e.urls and all(f"/{sha}/{arch}.pt" in u for u in e.urls)  # the URL names the hash
        assert reg.find(f"{arch}:openai") == e
    assert not reg.get("clip-rn50").usable and "not usable" in reg.get("clip-rn50").description
    assert reg.get("clip-vit-b-32").usable


def test_repo_root_models_toml_is_the_package_file():
    root = Path(__file__).resolve().parents[1] / "models.toml"
    assert root.is_symlink() and root.resolve() == registry.BUILTIN_REGISTRY.resolve()


def test_entry_parses_into_a_frozen_dataclass(tmp_path):
    (e,) = registry.parse_registry_file(_write(tmp_path, GOOD))
    assert (e.name, e.kind, e.scale, e.text_guided, e.clip, e.size) == (
        "foo-x4", "generator", 4, True, "ViT-B-32:openai", 10)
    assert e.urls == ("https://example.invalid/foo-x4.safetensors",) and e.source == "url"
    with pytest.raises(FrozenInstanceError):
        e.name = "bar"


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('license = "MIT"', 'license = "MIT"\ncolour = "red"'), "unknown keys ['colour']"),
    (lambda t: t.replace('license = "MIT"\n', ""), "missing keys ['license']"),
    (lambda t: t.replace('name = "foo-x4"\n', ""), "missing keys ['name']"),
    (lambda t: t.replace(SHA, "abc"), "64 lower-case hex"),
    (lambda t: t.replace("size = 10", "size = -1"), "positive integer"),
    (lambda t: t.replace("foo-x4.safetensors\"\n", "foo-x4.pth\"\n", 1), ".safetensors"),
    (lambda t: t.replace("scale = 4", "scale = 3"), "'scale' must be one of"),
    (lambda t: t.replace('clip = "ViT-B-32:openai"', ""), "needs 'clip'"),
    (lambda t: t.replace('kind = "generator"', 'kind = "lora"'), "'kind' must be"),
    (lambda t: t.replace("https://example", "ftp://example"), "must start with"),
    (lambda t: t.replace('urls = ["https://example.invalid/foo-x4.safetensors"]', ""), "needs at least one URL"),
    (lambda t: t.replace('file = "foo-x4.safetensors"', 'file = "../foo.safetensors"'), "plain file name"),
    (lambda t: t.replace('name = "foo-x4"', 'name = "a/b"'), "may only contain"),
    (lambda t: t.replace('clip = "ViT-B-32:openai"', 'clip = "ViT-B-32:openai"\narch = "ViT-B-32"'), "only for CLIP entries"),
    (lambda t: t + t, "defined twice"),
    (lambda t: "version = 2\n" + t, "unknown top-level keys"),
    (lambda t: t.replace("[[model]]", "[[model]"), "not valid TOML"),
])
def test_bad_entries_are_rejected_naming_file_and_entry(tmp_path, edit, message):
    path = _write(tmp_path, edit(GOOD))
    with pytest.raises(ModelError) as e:
        registry.parse_registry_file(path)
    assert message in str(e.value) and str(path) in str(e.value)
    if "top-level" not in message and "TOML" not in message:  # the entry is named too
        entry = {"may only contain": "model 'a/b'", "missing keys ['name']": "model entry #1"}
        assert entry.get(message, "model 'foo-x4'") in str(e.value)


def test_clip_entry_schema(tmp_path):
    text = textwrap.dedent(f"""
        [[model]]
        name = "my-clip"
        kind = "clip"
        description = "d"
        license = "MIT"
        file = "c.pt"
        sha256 = "{SHA}"
        urls = ["file:///srv/c.pt"]
        arch = "ViT-B-16"
        weights = "mine"
    """)
    (e,) = registry.parse_registry_file(_write(tmp_path, text))
    assert e.clip_spec == "ViT-B-16:mine" and e.size is None  # size is optional
    with pytest.raises(ModelError, match="needs 'weights'"):
        registry.parse_registry_file(_write(tmp_path, text.replace('weights = "mine"', "")))
    with pytest.raises(ModelError, match="only for generator entries"):
        registry.parse_registry_file(_write(tmp_path, text + "scale = 4\n"))


def test_a_bad_registry_is_one_error_line_on_the_cli(home, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, GOOD.replace("scale = 4", "scale = 5"))))
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 1
    assert r.stderr.startswith("error:") and "'foo-x4'" in r.stderr and "reg.toml" in r.stderr
    assert "Traceback" not in r.output
    monkeypatch.setenv("CLIPSR_REGISTRY", str(tmp_path / "missing.toml"))
    r = CliRunner().invoke(app, ["download", "--list"])
    assert r.exit_code == 1 and "registry file not found" in r.stderr


def test_cache_dir_default_and_clipsr_home(home, monkeypatch):
    assert registry.cache_dir() == home
    monkeypatch.delenv("CLIPSR_HOME")
    import platformdirs

    assert registry.cache_dir() == Path(platformdirs.user_data_dir("clipsr", appauthor=False))


def test_later_registry_files_win(home, tmp_path, monkeypatch):
    home.mkdir()
    (home / "models.toml").write_text(GOOD)
    assert registry.load_registry().get("foo-x4").origin == str(home / "models.toml")
    extra = _write(tmp_path, GOOD.replace('description = "a test model"', 'description = "newer"'))
    monkeypatch.setenv("CLIPSR_REGISTRY", str(extra))
    reg = registry.load_registry()
    assert reg.get("foo-x4").description == "newer" and reg.get("foo-x4").origin == str(extra)
    assert "clip-vit-b-32" in reg


def test_unknown_names_suggest_close_matches(home):
    with pytest.raises(ModelError, match=r"did you mean 'clip-vit-b-16'"):
        resolve.resolve_model("clip-vit-b-61")
    with pytest.raises(ModelError, match="clipsr models"):
        resolve.resolve_model("zzzzzz")


def test_resolve_model_paths(home, tmp_path):
    f = tmp_path / "mine.safetensors"
    f.write_bytes(b"x")
    assert resolve.resolve_model(str(f)) == f
    with pytest.raises(ModelError, match="not found"):
        resolve.resolve_model(str(tmp_path / "nope.safetensors"))
    # a .pt is a third-party file, read only with weights_only (never a full unpickle): one
    # rule with Upscaler.load, which refuses a pickle of objects (tests/test_resolve.py)
    pt = tmp_path / "evil.pt"
    pt.write_bytes(b"x")
    assert resolve.resolve(str(pt)) == resolve.ForeignFile(pt, "torch", str(pt))


def test_offline_detection(home, monkeypatch):
    assert fetch.is_offline() and fetch.offline_reason() == "HF_HUB_OFFLINE=1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not fetch.is_offline()
    monkeypatch.setenv("CLIPSR_OFFLINE", "true")
    assert fetch.offline_reason() == "CLIPSR_OFFLINE=1"
    monkeypatch.delenv("CLIPSR_OFFLINE")
    # an explicit `offline` wins over the environment, and is named as the parameter it is
    assert fetch.offline_reason(True) == "`offline=True`" and fetch.is_offline(True)
    monkeypatch.setenv("CLIPSR_OFFLINE", "1")
    assert not fetch.is_offline(False) and fetch.offline_reason(False) is None
    assert fetch.is_offline()  # None: the environment decides


def test_clip_weights_path_offline_and_unknown(home):
    assert resolve.clip_weights_path("ViT-B-32", "laion2b_s34b_b79k") is None
    with pytest.raises(DownloadError) as e:
        resolve.clip_weights_path("ViT-B-32", "openai")
    msg = str(e.value)
    assert "'clipsr download clip-vit-b-32'" in msg and "openaipublic.azureedge.net" in msg


def _package_entry(sha: str, size: int, name: str = "clipsr-lite-x4", scale: int = 4) -> str:
    return textwrap.dedent(f"""
        [[model]]
        name = "{name}"
        kind = "generator"
        source = "package"
        description = "built-in"
        license = "MIT"
        file = "{name}.safetensors"
        size = {size}
        sha256 = "{sha}"
        scale = {scale}
        text_guided = false
    """)


def test_default_model_and_package_entries(home, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="no built-in model for scale 2x"):
        registry.default_model(2)
    weights = tmp_path / "weights"
    weights.mkdir()
    data = b"pretend safetensors"
    (weights / "clipsr-lite-x4.safetensors").write_bytes(data)
    monkeypatch.setattr(store, "PACKAGE_WEIGHTS", weights)
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, _package_entry(sha, len(data)))))
    assert registry.default_model(4) == "clipsr-lite-x4"
    # package files need no network, even offline, and are checked
    assert resolve.resolve_model("clipsr-lite-x4") == weights / "clipsr-lite-x4.safetensors"
    assert store.install_status(registry.load_registry().get("clipsr-lite-x4")) == "installed"
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, _package_entry("0" * 64, len(data)))))
    with pytest.raises(ModelError, match="damaged"):
        resolve.resolve_model("clipsr-lite-x4")
    monkeypatch.setenv("CLIPSR_REGISTRY", str(_write(tmp_path, _package_entry(sha, 3))))
    with pytest.raises(ModelError, match="reinstall clipsr"):
        resolve.resolve_model("clipsr-lite-x4")
    with pytest.raises(ModelError, match="no built-in model for scale 2x"):
        registry.default_model(2)
    with pytest.raises(ModelError, match="takes no 'urls'"):
        registry.parse_registry_file(_write(
            tmp_path, _package_entry(sha, 3) + 'urls = ["https://x.invalid/a"]\n'))


def test_registry_and_downloads_import_no_torch(home):
    import subprocess
    import sys

    code = ("import sys, clipsr_cli.hub.registry, clipsr_cli.hub.fetch, clipsr_cli.hub.resolve; "
            "import clipsr_cli.hub.store as d; "
            "e = clipsr_cli.hub.registry.load_registry().get('clip-vit-b-32'); "
            "p = d.installed_path(e); p.parent.mkdir(parents=True); "
            "d._write_marker(p, e.sha256) if p.write_bytes(b'x') else None; "
            "sys.exit('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_each_kind_parses_into_its_own_frozen_class(tmp_path):
    from clipsr_cli.hub.entries import (TOML_KEYS, ClipEntry, FileEntry, GeneratorEntry,
                                        PipelineEntry, SpandrelEntry)

    spandrel = textwrap.dedent(f"""
        [[model]]
        name = "span-x4"
        kind = "spandrel"
        description = "d"
        license = "MIT"
        file = "span.pth"
        sha256 = "{SHA}"
        urls = ["file:///srv/span.pth"]
        scale = 4
    """)
    clip = GOOD.replace('"foo-x4"', '"c"').replace('kind = "generator"', 'kind = "clip"').replace(
        "scale = 4\ntext_guided = true\nclip = \"ViT-B-32:openai\"",
        'arch = "RN50"\nweights = "openai"')
    pipe = ('[[model]]\nname = "p"\nkind = "pipeline"\ndescription = "d"\nlicense = "MIT"\n'
            'scale = 8\nstages = ["foo-x4", "bicubic:2"]\n')
    g, s, c, p = registry.parse_registry_file(_write(tmp_path, GOOD + spandrel + clip + pipe))
    assert [type(e) for e in (g, s, c, p)] == [GeneratorEntry, SpandrelEntry, ClipEntry,
                                                PipelineEntry]
    assert [e.kind for e in (g, s, c, p)] == ["generator", "spandrel", "clip", "pipeline"]
    assert all(isinstance(e, FileEntry) for e in (g, s, c)) and not isinstance(p, FileEntry)
    assert (s.scale, s.text_guided, s.file) == (4, False, "span.pth")
    assert (c.scale, c.text_guided, c.clip_spec, c.usable) == (None, None, "RN50:openai", False)
    assert (p.scale, p.text_guided, p.stages) == (8, False, ("foo-x4", "bicubic:2"))
    assert not hasattr(p, "sha256") and not hasattr(s, "degradation_model")
    with pytest.raises(FrozenInstanceError):
        p.stages = ()
    # the keys a table may have are those of the TOML format, whatever the kind
    assert TOML_KEYS == {"name", "kind", "description", "license", "file", "sha256", "size",
                         "urls", "source", "scale", "text_guided", "clip", "degradation_model",
                         "arch", "weights", "stages"}
    with pytest.raises(ModelError, match="'degradation_model' is only for generator entries"):
        registry.parse_registry_file(_write(tmp_path, spandrel + 'degradation_model = "x"\n'))
    with pytest.raises(ModelError, match="a spandrel file must be .safetensors or .pth or .pt"):
        registry.parse_registry_file(_write(tmp_path, spandrel.replace("span.pth", "span.bin")))
