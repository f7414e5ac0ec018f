"""Shared fixtures: tiny random-weight models, no network, an isolated clipsr cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("NO_COLOR", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Every test that needs the session's trained text model is ``slow`` (its first user pays
    for the training): ``-m "not slow"`` then skips the training altogether."""
    for item in items:
        if "stripes_text_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own clipsr cache (CLIPSR_HOME) and no user registry."""
    home = tmp_path_factory.mktemp("clipsr_home")
    monkeypatch.setenv("CLIPSR_HOME", str(home))
    monkeypatch.delenv("CLIPSR_REGISTRY", raising=False)
    monkeypatch.delenv("CLIPSR_MIRROR", raising=False)
    from clipsr_cli.cli.console import configure

    configure(verbose=False, quiet=False)
    yield home


def tiny_model_config(scale: int = 4, text: bool = False, **kw):
    """A tiny generator's ``ModelConfig`` (encoder [8, 12, 16], 1 body block; ``text``: with the
    random ``clipsr-tiny`` CLIP); ``kw`` overrides fields. Not a training configuration: that is
    ``tests.synthetic.stripes_train_config``."""
    from clipsr_cli.model.config import ModelConfig

    if text:
        from clipsr_cli.model.clip import clip_dims

        d = clip_dims("clipsr-tiny")
        kw.update(clip="clipsr-tiny:random", text_dim=d.text_dim, clip_width=d.visual_width,
                  prompt_tokens=kw.get("prompt_tokens", 3))
    base = dict(scale=scale, encoder_widths=(8, 12, 16), body_blocks=1, up_widths=(8, 8, 8, 8))
    base.update(kw)
    return ModelConfig(**base)


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give a freshly built model non-trivial weights (identity-initialised γ/β, zero tail and
    zero F_U projection would otherwise hide the text path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Factory: path to a tiny checkpoint with non-trivial random weights."""
    from clipsr_cli.model.network import build_model
    from clipsr_cli.model.checkpoint import save_checkpoint

    made = {}
    root = tmp_path_factory.mktemp("ckpts")

    def make(scale: int = 4, text: bool = False, **kw):
        key = (scale, text, tuple(sorted(kw.items())))
        if key not in made:
            torch.manual_seed(0)
            cfg = tiny_model_config(scale, text, **kw)
            model = perturb(build_model(cfg))
            path = root / f"tiny_x{scale}_{'text' if text else 'img'}_{len(made)}.safetensors"
            save_checkpoint(path, model, cfg)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def stripes_text_model(tmp_path_factory) -> str:
    """Path of a tiny ×8 text-conditioned model trained once per session on the synthetic stripes
    task (tests/synthetic.py, settings ``SHARED_TRAINING``): the texture is named only in the
    caption. Shared by tests/test_train_text.py (the text path learns) and tests/test_edit.py
    (the text sets the drawn texture)."""
    from tests.synthetic import SHARED_TRAINING, one_thread, train_tiny_text_model

    with one_thread():
        path = train_tiny_text_model(tmp_path_factory.mktemp("stripes_text"), text=True,
                                     **SHARED_TRAINING)
    return str(path)
