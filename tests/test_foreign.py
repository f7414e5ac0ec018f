"""Third-party SR checkpoints (spandrel architectures) through clipsr's engine: safe loading,
self-description, tiling, the CLI (upscale, batch, inspect), the registry's `spandrel` kind."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli.app import app
from clipsr_cli.errors import ModelError, UsageError
from clipsr_cli.infer.engine import Upscaler

spandrel = pytest.importorskip("spandrel")
warnings.filterwarnings("ignore", message="torch.meshgrid")
runner = CliRunner()


def _arch(name: str):
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SAFMN import SAFMN
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "compact": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=12, num_conv=4, upscale=4,
                                   act_type="prelu"),
        "compact_gray": lambda: Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2,
                                        upscale=2),
        "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
        "esrgan": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4),
        "swinir": lambda: SwinIR(upscale=2, in_chans=3, img_size=16, window_size=8, embed_dim=12,
                                 depths=[2], num_heads=[2], mlp_ratio=2,
                                 upsampler="pixelshuffledirect"),
        "safmn": lambda: SAFMN(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=2),
    }[name]()


#: architecture → (how it is saved, file name): the native layouts of their projects
LAYOUTS = {
    "compact": ("params_ema", "realesr-compact-x4.pth"),   # Real-ESRGAN's release layout
    "span": ("plain", "span-x2.safetensors"),                # OpenModelDB safetensors
    "esrgan": ("params", "rrdb-x4.pth"),                      # BasicSR {"params": ...}
    "swinir": ("state_dict_module", "swinir-x2.pth"),          # DDP-trained, wrapped
    "safmn": ("plain", "safmn-x2.safetensors"),
    "compact_gray": ("plain_pth", "gray-x2.pth"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("foreign")
    out, nets = {}, {}
    for name, (layout, fname) in LAYOUTS.items():
        torch.manual_seed(0)
        net = _arch(name).eval()
        sd = {k: v.contiguous() for k, v in net.state_dict().items()}
        p = root / fname
        if layout == "params_ema":
            torch.save({"params_ema": sd}, p)
        elif layout == "params":
            torch.save({"params": sd, "iter": 1000}, p)
        elif layout == "state_dict_module":
            torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, p)
        elif layout == "plain_pth":
            torch.save(sd, p)
        else:
            save_file(sd, str(p))
        out[name], nets[name] = p, net
    return out, nets


def _photo(path, size=(24, 20), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a, "RGB").save(path)
    return path


@pytest.mark.parametrize("name", ["compact", "span", "esrgan", "swinir", "safmn"])
def test_architectures_load_describe_and_match_their_own_forward(files, name):
    paths, nets = files
    up = Upscaler.load(paths[name], device="cpu", precision="fp32", tile=0)
    info, spec = up.info, up.model.spec
    assert not info.text_conditioned and info.clip is None
    assert info.scale == {"compact": 4, "esrgan": 4}.get(name, 2)
    assert info.parameters == sum(p.numel() for p in nets[name].parameters())
    assert info.tile_overlap % info.pad_multiple == 0 and 0 < info.tile_overlap <= 64
    assert spec.input_channels == 3 and spec.purpose == "SR"
    if name == "swinir":  # no fp16 in spandrel's SwinIR; windows on the tiling grid
        assert info.precisions == ("fp32", "bf16") and info.pad_multiple == 8
    x = torch.rand(1, 3, 24, 32)
    with torch.inference_mode():
        ref = nets[name](x).clamp(0, 1)
    out = up.upscale_tensor(x)
    assert out.shape == (1, 3, 24 * info.scale, 32 * info.scale)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["compact", "span", "esrgan", "swinir"])
def test_tiled_equals_untiled(files, name):
    paths, _ = files
    whole = Upscaler.load(paths[name], device="cpu", precision="fp32", tile=0)
    n = whole.info.tile_overlap * 2 + 8  # room for two tiles per axis with the default overlap
    x = torch.rand(1, 3, n, n + 5, generator=torch.Generator().manual_seed(1))
    tiled = Upscaler(whole.model, device="cpu", precision="fp32", tile=n // 2)
    calls = []
    a = whole.upscale_tensor(x)
    b = tiled.upscale_tensor(x, progress=lambda d, t: calls.append(t))
    assert calls and calls[-1] >= 4  # it really tiled
    assert (a - b).abs().max() <= 1 / 255


def test_compact_overlap_is_its_exact_receptive_field(files):
    up = Upscaler.load(files[0]["compact"], device="cpu")
    assert up.info.tile_overlap == 2 * (4 + 2)  # num_conv + 2 chained 3×3 convolutions


def test_grayscale_model_upscales_each_channel(files):
    paths, nets = files
    up = Upscaler.load(paths["compact_gray"], device="cpu", precision="fp32", tile=0)
    x = torch.rand(1, 3, 10, 12)
    with torch.inference_mode():
        ref = nets["compact_gray"](x.reshape(3, 1, 10, 12)).reshape(1, 3, 20, 24).clamp(0, 1)
    assert (up.upscale_tensor(x) - ref).abs().max() < 1e-5


def test_precision_the_model_lacks_is_refused_or_auto_falls_back(files, caplog):
    up = Upscaler.load(files[0]["compact"], device="cpu")
    model = up.model
    model._info = dataclasses.replace(model.info, precisions=("fp32",))
    with pytest.raises(UsageError, match="does not support bf16") as e:
        Upscaler(model, device="cpu", precision="bf16", name="m")
    assert e.value.param == "precision"
    assert Upscaler(model, device="cpu", precision="auto").settings.dtype == torch.float32


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": {"w": torch.zeros(1)}, "x": _Evil(marker)}, evil)
    with pytest.raises(ModelError, match="full unpickle"):
        Upscaler.load(evil, device="cpu")
    src = _photo(tmp_path / "in.png")
    r = runner.invoke(app, ["upscale", str(src), "-m", str(evil), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "refusing to load" in r.output
    assert not marker.exists() and not (tmp_path / "o.png").exists()


def test_non_sr_and_unknown_files_are_refused_with_one_line(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    dn = tmp_path / "denoise-x1.safetensors"
    save_file(Compact(num_feat=8, num_conv=2, upscale=1).state_dict(), str(dn))
    with pytest.raises(ModelError, match=r"×1 restoration model \(RealESRGAN Compact\)"):
        Upscaler.load(dn, device="cpu")
    junk = tmp_path / "junk.safetensors"
    save_file({"w": torch.zeros(2)}, str(junk))
    with pytest.raises(ModelError, match="no architecture clipsr knows"):
        Upscaler.load(junk, device="cpu")
    script = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 1)), str(script))
    with pytest.raises(ModelError, match="TorchScript"):
        Upscaler.load(script, device="cpu")


def test_cli_upscale_and_batch_with_a_third_party_file(files, tmp_path):
    paths, _ = files
    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out.png"
    r = runner.invoke(app, ["upscale", str(src), "-m", str(paths["compact"]), "-o", str(out),
                            "--text", "a cat", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "not text-conditioned" in r.output and "--text is ignored" in r.output
    assert Image.open(out).size == (96, 80)
    direct = Upscaler.load(paths["compact"], device="cpu").upscale(Image.open(src))
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(direct))

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        _photo(folder / f"{i}.png", size=(16 + i, 12), seed=i)
    r = runner.invoke(app, ["batch", str(folder), "-o", str(tmp_path / "o"), "-m",
                            str(paths["span"]), "--device", "cpu", "--tile", "8"])
    assert r.exit_code == 0, r.output
    assert {p.name: Image.open(p).size for p in (tmp_path / "o").iterdir()
            if p.suffix == ".png"} == {"0_x2.png": (32, 24), "1_x2.png": (34, 24)}


def test_cli_eval_with_a_third_party_file(files, tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(2):
        _photo(folder / f"{i}.png", size=(40, 36), seed=i)
    r = runner.invoke(app, ["eval", "-d", str(folder), "-m", str(files[0]["safmn"]),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "safmn-x2.safetensors ×2" in r.stdout and "mean" in r.stdout


def test_inspect_prints_what_the_model_is(files):
    r = runner.invoke(app, ["inspect", str(files[0]["swinir"])])
    assert r.exit_code == 0, r.output
    for want in ("SwinIR", "×2", "fp32, bf16", "at least 16 px", "tile overlap", "window size",
                 "RGB → RGB", f"{sum(p.numel() for p in files[1]['swinir'].parameters()):,}"):
        assert want in r.stdout, want


def test_registry_spandrel_kind_downloads_and_runs(files, tmp_path, monkeypatch):
    p = files[0]["compact"]
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    reg = tmp_path / "reg.toml"
    reg.write_text(f'''[[model]]
name = "my-compact-x4"
kind = "spandrel"
description = "Real-ESRGAN Compact (test)"
license = "BSD-3-Clause"
file = "{p.name}"
sha256 = "{sha}"
urls = ["{p.as_uri()}"]
scale = 4
''')
    monkeypatch.setenv("CLIPSR_REGISTRY", str(reg))
    up = Upscaler.load("my-compact-x4", device="cpu", scale=4)
    assert up.model.spec.arch_id == "Compact" and up.name == "my-compact-x4"
    bad = tmp_path / "bad.toml"
    bad.write_text(reg.read_text().replace("scale = 4", "scale = 4\ntext_guided = true"))
    monkeypatch.setenv("CLIPSR_REGISTRY", str(bad))
    with pytest.raises(ModelError, match="image-only"):
        Upscaler.load("my-compact-x4", device="cpu")
