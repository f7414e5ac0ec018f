"""The package people install: build the wheel, install it into a fresh virtual environment and
run the installed ``clipsr`` from outside the source tree (offline, no network, no source on
``sys.path``). The new environment sees this one's dependencies through a ``.pth`` file that
points at this environment's site-packages (not at the source tree): ``.pth`` files inside that
directory (such as an editable install of clipsr) are not processed, and the new environment's own
site-packages comes first, so the installed wheel is what is imported (checked)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipsr_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# what the wheel is built from: the package and the files pyproject.toml names (a copy, so that
# the build never writes build/ or *.egg-info into the checkout, and no stale build/lib leaks in)
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "clipsr_cli")
WEIGHTS = ("clipsr-lite-x4",)  # the built-in x8 and x16 are pipelines of it (models.toml)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout}\n{r.stderr}"
    return r


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(HF_HUB_OFFLINE="1", NO_COLOR="1", OMP_NUM_THREADS="1", CLIPSR_HOME=str(home),
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs `build` (pip install -e '.[dev]')")
    src = tmp_path_factory.mktemp("wheel_src")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
          str(src)], cwd=src, env={**os.environ, "PIP_NO_INDEX": "1"})
    (whl,) = dist.glob("clipsr-*.whl")
    return whl


def test_the_wheel_holds_the_package_data_and_metadata(wheel):
    assert wheel.name == f"clipsr-{clipsr_cli.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"clipsr-{clipsr_cli.__version__}.dist-info"
        meta = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        for w in WEIGHTS:
            data = z.read(f"clipsr_cli/weights/{w}.safetensors")
            assert data == (ROOT / "clipsr_cli" / "weights" / f"{w}.safetensors").read_bytes()
        assert z.read("clipsr_cli/models.toml") == (ROOT / "clipsr_cli/models.toml").read_bytes()
    assert "clipsr_cli/model/clipsr-tiny.json" in names
    assert f"{info}/licenses/LICENSE" in names
    assert not any(n.startswith("tests/") for n in names)
    assert f"Version: {clipsr_cli.__version__}\n" in meta  # one version, from clipsr_cli
    assert "Name: clipsr\n" in meta and "License-Expression: MIT\n" in meta
    assert "Description-Content-Type: text/markdown" in meta
    assert "clipsr = clipsr_cli.cli.app:main" in entry_points
    if importlib.util.find_spec("twine") is not None:
        r = _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)])
        assert "PASSED" in r.stdout


def test_the_installed_cli_upscales_from_outside_the_source_tree(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_clipsr_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = _clean_env(home)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--no-cache-dir", "-q", str(wheel)], cwd=work, env=env)

    # the installed package is the one imported, and the source tree is not on sys.path
    r = _run([str(py), "-I", "-c", "import sys, clipsr_cli; print(clipsr_cli.__file__); "
              "print(clipsr_cli.__version__); print('\\n'.join(sys.path))"], cwd=work, env=env)
    where, version, *path = r.stdout.splitlines()
    print(f"installed clipsr_cli: {where}")
    assert Path(where).resolve().is_relative_to(site.resolve()), where
    assert version == clipsr_cli.__version__
    assert not any(p and Path(p).resolve() == ROOT for p in path), path

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(work / "small.png")
    clipsr = venv / "bin" / "clipsr"
    r = _run([str(clipsr), "upscale", "small.png", "--device", "cpu", "--precision", "fp32"],
             cwd=work, env=env)
    assert (work / r.stdout.strip()).resolve() == (work / "small_x4.png").resolve()
    with Image.open(work / "small_x4.png") as im:
        assert im.size == (96, 80)
    # the same bytes as the source tree's built-in model gives
    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app

    here_out = tmp_path / "here_x4.png"
    res = CliRunner().invoke(app, ["upscale", str(work / "small.png"), "-o", str(here_out),
                                   "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert here_out.read_bytes() == (work / "small_x4.png").read_bytes()
    # the built-in weights came from the wheel (no download: the cache stayed empty)
    assert not (home.exists() and any(p.is_file() for p in home.rglob("*.safetensors")))
    r = _run([str(clipsr), "--version"], cwd=work, env=env)
    assert clipsr_cli.__version__ in r.stdout
