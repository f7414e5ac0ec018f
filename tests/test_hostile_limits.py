"""Issue #20, memory and size decided before work (items 4-7).

* a third-party state dict that makes spandrel build a huge network is refused before the
  network is allocated (every command: inspect, upscale, the Python API);
* a ``.pth`` zip whose entries inflate to GiBs is refused from its declared sizes;
* devices, FIFOs and folders are refused by the one reader (images, list, registry, caption,
  model files, ``file://`` sources), never read or waited on;
* output size and memory are judged up front, with one limit, for every command.

Tests that would allocate GiBs on a regression run under :func:`memory_cap` (a lowered
``RLIMIT_DATA``), so a regression fails the test instead of the machine; tests that would hang
on a FIFO get a writer that lets go after a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import InputError, ModelError

runner = CliRunner()
spandrel = pytest.importorskip("spandrel")


@contextlib.contextmanager
def memory_cap(extra: int = 1 << 30):
    """At most ``extra`` more bytes of heap for this process (RLIMIT_DATA), restored after."""
    with open("/proc/self/status") as f:
        data = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmData:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (data + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def fifo(path, release_after: float = 4.0):
    """A FIFO at ``path``; if some reader blocks on it (a regression), a writer opens and closes
    it after ``release_after`` s so the test fails instead of hanging."""
    os.mkfifo(path)
    stop = threading.Event()

    def release():
        deadline = time.monotonic() + release_after
        while not stop.is_set():
            time.sleep(0.05)
            if time.monotonic() < deadline:
                continue
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        t.join()


def _png(path, size=16):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)).save(path)
    return path


# -- item 4: a state dict that describes a huge network ------------------------------------------
def _widened_compact():
    from spandrel.architectures.Compact import Compact

    sd = {k: v.clone() for k, v in Compact(num_feat=8, num_conv=2, upscale=4).state_dict().items()}
    sd["body.0.weight"] = torch.randn(20000, 3, 3, 3)  # num_feat is read from this shape
    sd["body.0.bias"] = torch.randn(20000)
    sd["body.1.weight"] = torch.randn(20000)
    return sd  # 2.3 MB of tensors; the network it describes: 3.6 G parameters


def _widened_esrgan():
    from spandrel.architectures.ESRGAN import ESRGAN

    sd = {k: v.clone() for k, v in ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1,
                                          scale=4).state_dict().items()}
    sd["model.0.weight"] = torch.randn(20000, 3, 3, 3)
    sd["model.0.bias"] = torch.randn(20000)
    return sd


@pytest.mark.parametrize("arch,suffix,command", [("compact", ".pth", "inspect"),
                                                 ("compact", ".safetensors", "upscale"),
                                                 ("esrgan", ".pth", "upscale")])
def test_a_state_dict_describing_a_huge_network_is_refused_before_it_is_built(
        tmp_path, arch, suffix, command):
    from safetensors.torch import save_file

    sd = _widened_compact() if arch == "compact" else _widened_esrgan()
    model = tmp_path / f"wide{suffix}"
    if suffix == ".pth":
        torch.save({"params": sd}, model)
    else:
        save_file(sd, str(model))
    assert model.stat().st_size < 4 << 20
    args = (["inspect", str(model)] if command == "inspect" else
            ["upscale", str(_png(tmp_path / "a.png")), "-m", str(model), "-o",
             str(tmp_path / "out.png"), "--device", "cpu"])
    with memory_cap():
        r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "crafted" in r.stderr and "parameters" in r.stderr, r.stderr
    assert "enforce fail" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_build_budget_judges_each_allocation_before_it_happens():
    from clipsr_cli.model.limits import BuildBudget

    with BuildBudget(1 << 20, "x") as b:
        torch.nn.Conv2d(8, 8, 3)  # 2.3 KB
        with pytest.raises(ModelError, match="crafted"):
            torch.empty(1 << 40)  # 4 TiB: refused, never attempted
        with pytest.raises(ModelError):
            torch.zeros(600, 600)  # over the budget once added up
    assert b.total > 1 << 20


# -- item 5: a zip whose entries inflate to more than a weights file may hold ---------------------
def _zip_bomb(path, inflated: int):
    """A torch.save-like archive whose tensor record is ``inflated`` bytes of zeros, deflated."""
    torch.save({"params": {"w": torch.zeros(2)}}, path.with_suffix(".src"))
    with zipfile.ZipFile(path.with_suffix(".src")) as src, \
            zipfile.ZipFile(path, "w", compresslevel=1) as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with z.open(zi, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 22)
                    for _ in range(inflated // len(chunk)):
                        f.write(chunk)
            else:
                z.writestr(info, data)
    return path


@pytest.mark.parametrize("suffix,command", [(".pth", "inspect"), (".ckpt", "upscale")])
def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch, suffix, command):
    bomb = _zip_bomb(tmp_path / f"bomb{suffix}", 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr("clipsr_cli.model.limits.MAX_WEIGHTS_BYTES", 32 << 20)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    args = (["inspect", str(bomb)] if command == "inspect" else
            ["upscale", str(_png(tmp_path / "a.png")), "-m", str(bomb), "-o",
             str(tmp_path / "o.png")])
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "once unpacked" in r.stderr and "crafted" in r.stderr, r.stderr


# -- item 6: devices, FIFOs and folders are refused, never read ---------------------------------
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_the_input_image_is_refused(tmp_path, tiny_ckpt, device):
    with memory_cap():
        r = runner.invoke(app, ["upscale", device, "-m", str(tiny_ckpt(2)), "-o",
                                str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "character device, not a regular file" in r.stderr, r.output


def test_a_device_or_fifo_as_a_list_file_is_refused(tmp_path, tiny_ckpt):
    with memory_cap():
        r = runner.invoke(app, ["batch", "@/dev/zero", "-o", str(tmp_path / "o"), "-m",
                                str(tiny_ckpt(2))])
    assert r.exit_code == 1 and "character device" in r.stderr and "list file" in r.stderr
    with fifo(tmp_path / "list.txt") as f:
        r = runner.invoke(app, ["batch", f"@{f}", "-o", str(tmp_path / "o"), "-m",
                                str(tiny_ckpt(2))])
    assert r.exit_code == 1 and "FIFO" in r.stderr, r.output


@pytest.mark.parametrize("which", ["device", "fifo"])
def test_a_device_or_fifo_as_the_registry_is_refused(tmp_path, monkeypatch, which):
    with contextlib.ExitStack() as stack:
        path = "/dev/zero" if which == "device" else str(stack.enter_context(
            fifo(tmp_path / "models.toml")))
        monkeypatch.setenv("CLIPSR_REGISTRY", path)
        with memory_cap():
            r = runner.invoke(app, ["models"])
    assert r.exit_code == 1 and "not a regular file" in r.stderr and "registry" in r.stderr, \
        r.output


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_fifo_as_the_model_file_is_refused_by_what_it_is(tmp_path, suffix):
    with fifo(tmp_path / f"m{suffix}") as f:
        r = runner.invoke(app, ["inspect", str(f)])
    assert r.exit_code == 1 and "FIFO" in r.stderr, r.output
    assert "not found" not in r.stderr


def test_a_fifo_as_captions_or_download_source_is_refused(tmp_path, tiny_ckpt):
    from clipsr_cli.io.files import read_regular

    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png")
    with fifo(tmp_path / "caps.csv") as f:
        r = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "o"), "-m",
                                str(tiny_ckpt(2)), "--captions", str(f)])
    assert r.exit_code == 1 and "FIFO" in r.stderr, r.output
    with pytest.raises(InputError, match="a folder, not a regular file"):
        read_regular(tmp_path, max_bytes=10)
    with pytest.raises(InputError, match="more than"):
        read_regular(src / "a.png", max_bytes=10)


def test_a_fifo_as_a_file_url_download_source_is_refused(tmp_path, monkeypatch):
    from clipsr_cli.errors import DownloadError
    from clipsr_cli.hub import fetch
    from clipsr_cli.hub.registry import load_registry

    with fifo(tmp_path / "weights.bin") as f:
        toml = tmp_path / "reg.toml"
        toml.write_text(f'[[model]]\nname = "x"\nkind = "generator"\nscale = 4\nfile = "x.safetensors"'
                        f'\nsha256 = "{"0" * 64}"\nurls = ["file://{f}"]\ndescription = "x"\nlicense = "MIT"\ntext_guided = false\n')
        monkeypatch.setenv("CLIPSR_REGISTRY", str(toml))
        entry = load_registry().get("x")
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="FIFO"):
            fetch.ensure(entry, offline=False)
        assert time.monotonic() - t0 < 60  # refused, not read until the writer let go


# -- item 7: output size and memory, judged up front ---------------------------------------------
def test_passes_that_make_a_giant_output_are_refused_before_the_model_runs(tmp_path, tiny_ckpt,
                                                                           monkeypatch):
    from clipsr_cli.infer.engine import Upscaler

    monkeypatch.setattr(Upscaler, "bands", lambda *a, **k: pytest.fail("the model ran"))
    img = _png(tmp_path / "a.png", 64)
    r = runner.invoke(app, ["upscale", str(img), "-m", str(tiny_ckpt(2)), "--passes", "12",
                            "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "megapixels" in r.stderr and "limit" in r.stderr, r.output
    r = runner.invoke(app, ["batch", str(img), "-m", str(tiny_ckpt(2)), "--passes", "12",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 3 and "megapixels" in r.stderr, r.output


def test_an_output_size_beyond_the_limit_is_refused_before_work(tmp_path, tiny_ckpt, monkeypatch):
    from clipsr_cli.infer.engine import Upscaler

    monkeypatch.setattr(Upscaler, "bands", lambda *a, **k: pytest.fail("the model ran"))
    img = _png(tmp_path / "a.png", 16)
    r = runner.invoke(app, ["upscale", str(img), "-m", str(tiny_ckpt(2)), "--width", "2000000",
                            "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 2 and "megapixels" in r.stderr, r.output  # the option, for this input
    monkeypatch.setenv("CLIPSR_MAX_PIXELS", "300")  # inputs up to 300 px, outputs 1200 px
    r = runner.invoke(app, ["upscale", str(img), "-m", str(tiny_ckpt(4)), "-o",
                            str(tmp_path / "o.png")])  # 64×64 out
    assert r.exit_code == 1 and "limit of 0.0012 MP" in r.stderr, r.output


def test_a_thin_compare_crop_never_makes_a_giant_grid(tmp_path, tiny_ckpt):
    from clipsr_cli.infer.options import EngineOptions
    from clipsr_cli.tasks.compare import PANEL, compare

    img = _png(tmp_path / "a.png", 64)
    res = compare(input=img, models=[str(tiny_ckpt(2))], crop="0,0,1,64",
                  options=EngineOptions(device="cpu"), output=tmp_path / "g.png")
    h, w = res.grid.shape[:2]
    assert h < 128 + PANEL + 100, (h, w)  # panel + zoomed crop box + labels
    res = compare(input=img, models=[str(tiny_ckpt(2))], crop="0,0,64,1",
                  options=EngineOptions(device="cpu"))
    assert res.grid.shape[0] < 128 + PANEL + 100


def test_batch_size_is_bounded_and_planned_in_a_few_steps(tmp_path, tiny_ckpt):
    from clipsr_cli.infer.engine import Upscaler

    r = runner.invoke(app, ["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--batch-size",
                            "1000000"])
    assert r.exit_code == 2 and "--batch-size" in r.stderr, r.output
    up = Upscaler.load(str(tiny_ckpt(2)), device="cpu")
    calls = []
    real = up._tile_size
    up._tile_size = lambda h, w: calls.append(h) or real(h, w)
    n = up.batch_limit(64, 64, 256)
    assert 1 <= n <= 256 and len(calls) <= 10
    assert real(64 * n, 64) == 0 and (n == 256 or real(64 * (n + 1), 64) != 0)
