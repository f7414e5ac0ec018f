"""Every text route of CLIP-SR carries the text (issues #13, #21), shown by ablation on the
stripes task (tests/synthetic.py: the HR texture is named only in the caption, the LR cannot show
it):

* a model whose text reaches the image **only through the prompt tokens** in CLIP's ViT (the
  paper's route: ``tif_text=False``, ``fu_film=False``) and one whose text reaches it **only
  through the TIFBlocks** (``fu_fusion=False``) each beat a wrong caption by a wide margin;
* the default full model (the session's shared ``stripes_text_model``) loses measurably when
  either route alone gets a wrong caption (``CLIPSR.condition(text_prompt=…, text_tif=…)``) or
  the null text, and when F_U is removed.

Also: the prompt tokens join CLIP from block 2 and stay, every block runs, F_U depends on the
text, the per-route ablation API, the zero-initialised last layers receive gradients, ``tif_text``
and ``fu_film`` are ``[model]`` keys. Measured numbers: docs/text-path.md
(``benchmarks/text_routes.py``).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from clipsr_cli.errors import ModelError
from clipsr_cli.model.clip import ClipBackbone, load_clip
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.model.network import build_model
from tests.conftest import perturb
from tests.conftest import tiny_model_config
from tests.synthetic import KINDS, SHARED_TRAINING, caption_psnr, make_stripes_dataset, one_thread

# Measured (docs/text-path.md, benchmarks/text_routes.py; SHARED_TRAINING, seeds 0/1/2): see the
# table there. Thresholds well below the measured margins, far above seed noise.
MIN_PATH_MARGIN_DB = {"prompt_only": 6.0, "tif_only": 20.0}
MIN_CUT_LOSS_DB = 5.0  # the full model without F_U, or with the null text in one route
MIN_SWAP_LOSS_DB = 3.0  # the full model with a wrong caption in one route only


def _wrong(i: int, kind: str) -> str:
    return KINDS[(KINDS.index(kind) + 1) % len(KINDS)]


def _train_variant(out, **model_changes):
    from clipsr_cli.model.checkpoint import load_checkpoint
    from clipsr_cli.train.trainer import train
    from tests.synthetic import stripes_train_config

    kw = dict(SHARED_TRAINING)
    cfg = stripes_train_config(out, text=True, batch_size=kw.pop("batch_size"), **kw)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_changes))
    with one_thread():
        return load_checkpoint(train(cfg, source=make_stripes_dataset()).export)


@pytest.fixture(scope="module")
def test_set():
    return make_stripes_dataset(12, seed=123)  # unseen images


@pytest.mark.slow
@pytest.mark.parametrize("path", ["prompt_only", "tif_only"])
def test_each_text_route_alone_carries_the_caption(tmp_path, test_set, path):
    changes = ({"tif_text": False, "fu_film": False} if path == "prompt_only"
               else {"fu_fusion": False})
    model = _train_variant(tmp_path, **changes)
    if path == "prompt_only":  # the prompt tokens are the only text route
        assert not any(".aff" in n or "fu_projection.film." in n
                       for n, _ in model.named_parameters())
    with one_thread():
        true = caption_psnr(model, test_set, lambda i, k: k)
        wrong = caption_psnr(model, test_set, _wrong)
    print(f"{path}: true {true:.2f} dB, wrong {wrong:.2f} dB")
    assert true - wrong > MIN_PATH_MARGIN_DB[path]


@torch.inference_mode()
def _route_psnr(model, source, route: str | None = None, give: str = "true") -> float:
    """Mean Y-PSNR with the true caption, except that ``route`` (``"tif"``, ``"prompt"``,
    ``"film"``; ``"fu"``: F_U removed) gets ``give`` (``"wrong"`` or ``"null"``)."""
    from clipsr_cli.data.degrade import degrade
    from clipsr_cli.data.metrics import psnr

    vals = []
    for i in range(len(source)):
        hr = source.tensor(i)
        lr = degrade(hr, 8)
        true = model.text_embedding([source.kinds[i]])
        other = model.text_embedding([_wrong(i, source.kinds[i]) if give == "wrong" else None])
        own = {f"text_{route}": other} if route not in (None, "fu") else {}
        cond = model.condition(lr, true, **own)
        if route == "fu":
            cond = dataclasses.replace(cond, fu=None)
        vals.append(float(psnr(model(lr, cond).clamp(0, 1), hr, border=8).mean()))
    return sum(vals) / len(vals)


def test_the_full_model_needs_every_route(stripes_text_model, test_set):
    """The default full model (TIFBlocks + prompt tokens; ``fu_film`` off): a wrong caption given
    to the prompt tokens alone, or to the TIFBlocks alone, costs it; so does the null text in
    either, or removing F_U."""
    from clipsr_cli.model.checkpoint import load_checkpoint

    model = load_checkpoint(stripes_text_model)
    assert model.config.tif_text and model.config.fu_fusion and not model.config.fu_film
    with one_thread():
        true = _route_psnr(model, test_set)
        got = {(r, g): _route_psnr(model, test_set, r, g)
               for r in ("prompt", "tif") for g in ("wrong", "null")}
        no_fu = _route_psnr(model, test_set, "fu")
    print(f"full: true {true:.2f} dB, F_U cut {no_fu:.2f} dB, "
          + ", ".join(f"{r} {g} {v:.2f} dB" for (r, g), v in got.items()))
    assert true - got["prompt", "wrong"] >= MIN_SWAP_LOSS_DB
    assert true - got["tif", "wrong"] >= MIN_SWAP_LOSS_DB
    assert true - got["prompt", "null"] > MIN_CUT_LOSS_DB
    assert true - got["tif", "null"] > MIN_CUT_LOSS_DB
    assert true - no_fu > MIN_CUT_LOSS_DB
    # and F_U itself differs between captions (it was 0.2 % of its size before issue #13)
    from clipsr_cli.data.degrade import degrade

    lr = degrade(test_set.tensor(0), 8)
    with torch.inference_mode():
        fa, fb = (model.condition(lr, model.text_embedding([k])).fu for k in KINDS[:2])
    rel = [float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()) for a, b in zip(fa, fb)]
    assert min(rel) > 0.1, rel


# -- structure (fast) ---------------------------------------------------------------------------

def test_prompt_tokens_join_from_block_2_stay_and_every_block_runs():
    clip = load_clip("clipsr-tiny:random")
    depth = clip.visual_layers
    assert depth == 4
    assert clip.prompt_blocks(3) == [1, 2, 3]  # 1-based blocks 2, 3, 4
    assert clip.prompt_blocks(6) == [1, 2, 3, 3, 3, 3]  # more tokens than blocks: the last
    # ViT-B/32 (12 blocks) with K = 8: 1-based blocks 2-9, as the authors
    vit_b = SimpleNamespace(blocks=[None] * 12)
    assert [b + 1 for b in ClipBackbone.prompt_blocks(vit_b, 8)] == list(range(2, 10))
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o: calls.append(o.shape[1])) for b in clip.blocks]
    g = clip.grid
    x = clip.embed_patches(torch.rand(2, 3, 16, 16))
    prompts = torch.randn(2, 3, clip.visual_width)
    with torch.no_grad():
        seq = clip.prompted_sequence(x, prompts)
        seq2 = clip.prompted_sequence(x, prompts * 2)
    for h in hooks:
        h.remove()
    base = 1 + g * g
    assert calls == [base, base + 1, base + 2, base + 3] * 2  # every block; the tokens stay
    assert seq.shape == (2, base + 3, clip.visual_width)
    assert (seq[:, 1:base] - seq2[:, 1:base]).abs().max() > 1e-3  # patch tokens attend to them


def test_fu_reads_the_text_through_the_prompts_alone_and_the_switches():
    torch.manual_seed(0)
    cfg = tiny_model_config(8, text=True, tif_text=False, fu_film=False, clip_view=8)
    model = perturb(build_model(cfg, load_clip(cfg.clip)), std=0.05).eval()
    names = [n for n, _ in model.named_parameters()]
    assert not any(".aff" in n for n in names)  # TIFBlocks get no text
    assert not any(n.startswith("fu_projection.film.") for n in names)  # no direct FiLM
    assert any(n.startswith("fu_projection.prompt_film.") for n in names)
    with_film = build_model(tiny_model_config(8, text=True, fu_film=True), load_clip(cfg.clip))
    assert any(n.startswith("fu_projection.film.") for n, _ in with_film.named_parameters())
    assert not ModelConfig().fu_film  # off by default (docs/text-path.md: measured)
    lr = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ca, cb = (model.condition(lr, model.text_embedding([t])) for t in ("a red bird", "a car"))
        assert len(ca.fu) == len(cfg.encoder_widths) + cfg.num_up  # every level, LR/4 ... 8·LR
        rel = min(float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
                  for a, b in zip(ca.fu, cb.fu))
        assert rel > 0.01
        assert (model(lr, ca) - model(lr, cb)).abs().max() > 1e-3  # through F_U alone
        same_fu = dataclasses.replace(cb, fu=ca.fu)
        assert torch.equal(model(lr, same_fu), model(lr, ca))  # the text is in F_U only
    with pytest.raises(ModelError, match="needs a text path"):
        tiny_model_config(8, text=True, tif_text=False, fu_fusion=False)


def test_each_route_can_be_given_its_own_caption():
    """``condition(text_tif=…, text_prompt=…, text_film=…)``: each route reads only its own
    embedding; ``null_mask`` is one mask for all routes, or one column per route."""
    torch.manual_seed(0)
    cfg = tiny_model_config(8, text=True, fu_film=True, clip_view=8)
    model = perturb(build_model(cfg, load_clip(cfg.clip)), std=0.05).eval()
    lr = torch.rand(2, 3, 12, 12)
    a, b = model.text_embedding(["a red bird", "a car"]), model.text_embedding(["a car", "a tree"])
    null = model.text_embedding([None, None])

    def same(x, y):
        return all(torch.allclose(p, q, atol=1e-6) for p, q in zip(x.fu, y.fu))

    with torch.no_grad():
        ca, cb = model.condition(lr, a), model.condition(lr, b)
        tif = model.condition(lr, a, text_tif=b)  # the TIFBlocks get b, F_U keeps a
        assert torch.allclose(tif.text, cb.text) and same(tif, ca)
        prompt = model.condition(lr, b, text_tif=a, text_film=a)  # only the prompts get b
        film = model.condition(lr, a, text_film=b)  # only the direct FiLM gets b
        assert torch.allclose(prompt.text, ca.text) and torch.allclose(film.text, ca.text)
        assert not same(prompt, ca) and not same(film, ca) and not same(prompt, film)
        # each route changes F_U on its own: b in prompts and FiLM together gives cb's F_U
        assert same(model.condition(lr, a, text_prompt=b, text_film=b), cb)
        # one column per route (ROUTES: tif, prompt, film): row 0 drops the prompts' text only
        mask = torch.tensor([[False, True, False], [True, True, True]])
        per = model.condition(lr, a, null_mask=mask)
        want = model.condition(lr, a, text_prompt=torch.stack([null[0], a[1]]))
        assert torch.allclose(per.text[0], ca.text[0]) and same(
            dataclasses.replace(per, fu=tuple(f[:1] for f in per.fu)),
            dataclasses.replace(want, fu=tuple(f[:1] for f in want.fu)))
        assert torch.allclose(per.text[1], model.condition(lr, null).text[1])
        all_rows = model.condition(lr, a, null_mask=torch.tensor([True, False]))
        assert same(dataclasses.replace(all_rows, fu=tuple(f[:1] for f in all_rows.fu)),
                    dataclasses.replace(model.condition(lr, null), fu=tuple(
                        f[:1] for f in model.condition(lr, null).fu)))


def test_zero_initialised_last_layers_receive_gradients():
    """A fresh model starts as bicubic (output conv, F_U projections and the affines' last
    layers at zero), but none of that is a bottleneck that never opens: the output conv gets a
    gradient at step 1, the F_U projections and the affines at step 2, the rest of the F_U branch
    (read-out, both FiLMs, prompt predictor) at step 3."""
    torch.manual_seed(0)
    cfg = tiny_model_config(4, text=True, clip_view=8, fu_film=True)
    model = build_model(cfg, load_clip(cfg.clip))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    emb = model.text_embedding(["a red bird", "a car"])

    def step():
        opt.zero_grad()
        (model(lr, model.condition(lr, emb)) - hr).abs().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    def reached(grads, prefix):
        gs = [g for n, g in grads.items() if n.startswith(prefix) and g is not None]
        return bool(gs) and max(float(g.abs().max()) for g in gs) > 0

    order = [("upsampler.out.",),
             ("fu_projection.proj.0.", "fu_projection.proj.4.", "refinement.body.0.aff1.gamma.2.",
              "upsampler.blocks.1.aff2.beta.2."),
             ("fu_projection.attn.", "fu_projection.prompt_film.", "fu_projection.film.",
              "prompt_predictor.")]
    for k, prefixes in enumerate(order, start=1):
        grads = step()
        for prefix in prefixes:
            assert reached(grads, prefix), (k, prefix)
        opt.step()


def test_tif_text_and_fu_film_are_model_settings_of_training_and_clip_view_the_patch():
    from clipsr_cli.train.config import parse_set, resolve_config
    from clipsr_cli.train.schema import model_config as train_model_config

    cfg = resolve_config(preset="psnr", flags=parse_set(["model.tif_text=false",
                                                         "model.fu_film=true",
                                                         "data.patch_size=32"]))
    assert cfg.model.tif_text is False and cfg.model.fu_film is True
    mcfg = train_model_config(cfg)
    assert mcfg.tif_text is False and mcfg.fu_film and mcfg.clip_view == 32  # patch = window
    with pytest.raises(ModelError, match="needs a text path"):
        train_model_config(resolve_config(preset="psnr", flags=parse_set(
            ["model.tif_text=false", "model.fu_fusion=false"])), load_clip("clipsr-tiny:random"))
    with pytest.raises(Exception, match="clip_view"):  # set by data.patch_size, not a key
        resolve_config(preset="psnr", flags=parse_set(["model.clip_view=16"]))
