"""The paper's training losses as the authors run them (issue #13): the ViT blocks the
discriminator reads, one caption-dropout mask for G, D and the CLIP similarity, and a perceptual
loss whose features are a setting and are announced, never a silent fallback.

Tiny models, the ``clipsr-tiny`` CLIP with random weights, the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipsr_cli.errors import TrainingError
from clipsr_cli.train.config import resolve_config
from clipsr_cli.train.schema import LossSection
from tests.test_train import _cfg, _photos, logged  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny_clip():
    from clipsr_cli.model.clip import load_clip

    return load_clip("clipsr-tiny:random", "cpu")


# -- discriminator blocks ---------------------------------------------------------------------------
def test_discriminator_reads_after_the_2nd_5th_and_9th_block_like_the_authors(tiny_clip):
    """The released code: ``for i in range(12): x = resblocks[i](x); if i in [1, 4, 8]: keep x``
    (i from 0). Our ``d_layers`` count from 1, so the same blocks are (2, 5, 9)."""
    from clipsr_cli.train.discriminator import ClipDiscriminator
    from clipsr_cli.train.losses import clamp_layers

    assert LossSection().d_layers == (2, 5, 9)
    assert resolve_config(preset="gan").loss.d_layers == (2, 5, 9)
    assert clamp_layers((2, 5, 9), 12) == (2, 5, 9)  # ViT-B/32: as written
    # the authors' loop, on the 4-block tiny CLIP with their 0-based selection [1, 2]
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        x = tiny_clip.embed_patches(img)
        theirs = []
        for i, blk in enumerate(tiny_clip.blocks):
            x = blk(x)
            if i in [1, 2]:
                theirs.append(tiny_clip.token_map(x))
        D = ClipDiscriminator(tiny_clip, layers=(2, 3), width=8, text_dim=0)
        ours = D.features(img)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # on a shallower CLIP the blocks are mapped proportionally (2/12, 5/12, 9/12 of the depth)
    assert ClipDiscriminator(tiny_clip, width=8).layers == (1, 2, 3)


# -- caption dropout --------------------------------------------------------------------------------
def _spy_gan_step(monkeypatch, tmp_path, dropout: float):
    """Run 2 gan steps with a text model; record what D and the similarity term receive."""
    from clipsr_cli.train import steps
    from clipsr_cli.train.data import MemorySampler
    from clipsr_cli.train.trainer import train

    seen = {"d": [], "g": [], "batch": [], "losses": []}
    real_d, real_g, real_next = steps.d_loss, steps.g_adv_loss, MemorySampler.next_batch

    def d_spy(D, real, fake, t, **kw):
        seen["d"].append((t.detach().clone(), kw.get("keep")))
        return real_d(D, real, fake, t, **kw)

    def g_spy(D, sr, t, **kw):
        seen["g"].append((t.detach().clone(), kw.get("keep")))
        return real_g(D, sr, t, **kw)

    def next_spy(self):
        b = real_next(self)
        seen["batch"].append(b)
        return b

    monkeypatch.setattr(steps, "d_loss", d_spy)
    monkeypatch.setattr(steps, "g_adv_loss", g_spy)
    monkeypatch.setattr(MemorySampler, "next_batch", next_spy)
    cfg = _cfg(tmp_path, _photos(tmp_path / "p", captions=True), preset="gan",
               clip="clipsr-tiny:random", steps=2, data={"caption_dropout": dropout, "batch_size": 8},
               loss={"d_width": 8, "perceptual": "none"})
    train(cfg, on_step=lambda s, l: seen["losses"].append(l))
    return seen


def test_caption_dropout_one_hides_the_caption_from_d_and_the_similarity(tmp_path, monkeypatch):
    """Was: G got the null text but D and cos(CLIP(SR), t) still got the real caption."""
    seen = _spy_gan_step(monkeypatch, tmp_path, 1.0)
    for (t, keep), (tg, keep_g) in zip(seen["d"], seen["g"]):
        assert not bool(keep.any()) and torch.equal(keep, keep_g) and torch.equal(t, tg)
        assert torch.allclose(t, t[:1].expand_as(t))  # every row: the one null text
        assert torch.allclose(t.norm(dim=-1), torch.ones(len(t)))
    for losses in seen["losses"]:
        assert losses["g_cos"] == 0.0  # no caption: no similarity target
        assert losses["g_adv_total"] == pytest.approx(losses["g_adv"], abs=1e-6)


def test_caption_dropout_applies_one_mask_to_g_d_and_the_similarity(tmp_path, monkeypatch):
    seen = _spy_gan_step(monkeypatch, tmp_path, 0.5)
    mixed = False
    for batch, (t, keep) in zip(seen["batch"], seen["d"]):
        dropped = batch.drop | torch.tensor([c is None for c in batch.captions])
        assert torch.equal(keep, ~dropped)  # G's null mask, D's and the similarity's
        if bool(dropped.any()) and bool(keep.any()):
            mixed = True
            null = t[dropped][0]
            assert torch.allclose(t[dropped], null.expand_as(t[dropped]))
            assert all(not torch.allclose(r, null) for r in t[keep])
    assert mixed


def test_masked_d_and_similarity_terms(tiny_clip):
    from clipsr_cli.train.discriminator import ClipDiscriminator, d_loss, g_adv_loss

    torch.manual_seed(0)
    D = ClipDiscriminator(tiny_clip, width=8, text_dim=tiny_clip.text_dim)
    real, fake = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    t = F.normalize(torch.randn(4, tiny_clip.text_dim), dim=-1)
    with torch.no_grad():
        out_fake = D.logits(D.features(fake), t)
        _, emb = D.features(fake, with_embedding=True)
    # no caption in the batch: no mismatched pair (a real image with the null text is real)
    _, st = d_loss(D, real, fake, t, gp_weight=0.0, gp_power=6.0, keep=torch.zeros(4, dtype=torch.bool))
    assert float(st["d_fake"]) == pytest.approx(float(F.relu(1 + out_fake).mean()), rel=1e-5)
    # all captioned: as without a mask
    _, a = d_loss(D, real, fake, t, gp_weight=0.0, gp_power=6.0, keep=torch.ones(4, dtype=torch.bool))
    _, b = d_loss(D, real, fake, t, gp_weight=0.0, gp_power=6.0)
    assert float(a["d_fake"]) == pytest.approx(float(b["d_fake"]), rel=1e-5)
    # the similarity: mean over the captioned rows only
    keep = torch.tensor([True, False, True, False])
    _, g = g_adv_loss(D, fake, t, clip_weight=4.0, keep=keep)
    cos = F.cosine_similarity(emb, t, dim=-1)
    assert float(g["g_cos"]) == pytest.approx(float(cos[keep].mean()), rel=1e-5)


# -- perceptual features ------------------------------------------------------------------------------
@pytest.fixture
def no_vgg(tmp_path, monkeypatch):
    """An empty torch hub cache (no VGG16 weights)."""
    hub = tmp_path / "hub"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(old)


def test_gan_preset_says_which_perceptual_features_it_uses(tmp_path, logged, no_vgg):  # noqa: F811
    """Was: loss.perceptual = 'auto' fell back to CLIP features (warned only in some cases)."""
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p", captions=True), preset="gan",
               clip="clipsr-tiny:random", steps=1, loss={"d_width": 8})
    assert cfg.loss.perceptual == "clip"  # explicit in the preset
    train(cfg)
    lines = [m for m in logged if "perceptual loss" in m]
    assert lines == ["perceptual loss: L1 between the visual tokens of CLIP clipsr-tiny:random "
                     "after blocks 1, 2, not the paper's VGG16 features"]


def test_vgg16_without_its_weights_stops_at_start_up(tmp_path, no_vgg):
    from typer.testing import CliRunner

    from clipsr_cli.cli.app import app
    from clipsr_cli.train.trainer import train

    cfg = _cfg(tmp_path, _photos(tmp_path / "p"), loss={"perceptual": "vgg16"})
    with pytest.raises(TrainingError, match=r"needs torchvision's VGG16 ImageNet weights at "
                                            r".*hub/checkpoints/vgg16-397923af.pth"):
        train(cfg)
    assert not (tmp_path / "run/metrics.jsonl").exists() or not (tmp_path / "run/metrics.jsonl").read_text()
    # a damaged weights file: one line too
    (no_vgg / "checkpoints").mkdir(parents=True)
    (no_vgg / "checkpoints/vgg16-397923af.pth").write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "r"),
                                 "--clip", "none", "--device", "cpu", "--set", "loss.perceptual=vgg16",
                                 "-q"])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "cannot read the VGG16 weights" in lines[0]


def test_auto_and_image_only_clip_perceptual_are_announced(tmp_path, logged, no_vgg):  # noqa: F811
    """``auto`` (older configs) says why it uses CLIP; an image-only generator's clip perceptual
    loss uses loss.d_clip (was: an error)."""
    from clipsr_cli.train.trainer import train

    data = _photos(tmp_path / "p")
    res = train(_cfg(tmp_path / "a", data, steps=1, loss={"perceptual": "auto",
                                                          "d_clip": "clipsr-tiny:random"}))
    assert res.step == 1
    lines = [m for m in logged if "perceptual loss" in m]
    assert len(lines) == 1 and "clipsr-tiny:random" in lines[0] and "(no VGG16 weights at " in lines[0]
    logged.clear()
    train(_cfg(tmp_path / "b", data, steps=1, loss={"perceptual": "clip", "d_clip": "clipsr-tiny:random"}))
    assert sum("perceptual loss" in m for m in logged) == 1
    logged.clear()
    train(_cfg(tmp_path / "c", data, steps=1))  # psnr: perceptual = "none", nothing to say
    assert not any("perceptual loss" in m for m in logged)
