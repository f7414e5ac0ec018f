"""The CLIP-SR generator (Hu et al., arXiv 2412.11609), reimplemented from the paper's design.

Four parts, called by name in ``CLIPSR.forward``:

* the **image encoder** (``encoder``): a conv pyramid of the LR image;
* the **Iterative Refinement Module** (``refinement``): coarse-to-fine stages of TIFBlocks, each
  lifting its level to the next finer one, then TIFBlocks at LR resolution;
* the **upsampler** (``upsampler``): log2(s) pixel-shuffle ×2 stages, each followed by a TIFBlock,
  an output conv and a global bicubic skip;
* the **text path**: the learned null embedding, the prompt predictor and the F_U read-out
  (``null_text``, ``prompt_predictor``, ``fu_projection``; see :mod:`clipsr_cli.model.prompt`):
  the text reaches the image through the TIFBlocks' γ, β (``tif_text``) and through F_U, CLIP's
  prompted visual features added at every refinement level (``fu_fusion``).

Inference contract (``CLIPSR.forward``): ``lr`` is (B, 3, h, w) float in [0, 1] on the model's
device, h and w multiples of ``info.pad_multiple`` (the tiler pads); the result is
(B, 3, s·h, s·w), *not* clamped. Text and CLIP-visual conditioning come from
``CLIPSR.condition`` once per image (in training: once per LR patch), so that tiles of one image
share them; CLIP sees the image as :func:`clipsr_cli.model.view.clip_view` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipsr_cli.errors import ModelError
from clipsr_cli.model.blocks import TIFBlock
from clipsr_cli.model.config import ModelConfig, ModelInfo
from clipsr_cli.model.prompt import ROUTES, Conditioning, FUProjection, PromptPredictor
from clipsr_cli.model.view import clip_view, sample_windows

__all__ = ["CLIPSR", "Conditioning", "FrozenClip", "build_model"]


class ImageEncoder(nn.Module):
    """Conv pyramid of the LR image: level 0 at LR resolution, level i at LR/2^i."""

    def __init__(self, widths: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.head = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1)
                                  for i in range(1, len(widths)))

    def forward(self, lr: torch.Tensor) -> list[torch.Tensor]:
        x = F.leaky_relu(self.head(lr), self.slope)
        feats = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), self.slope)
            feats.append(x)
        return feats


class IterativeRefinement(nn.Module):
    """Coarse to fine: stage i refines level i with TIFBlocks and lifts it (pixel shuffle) onto
    level i-1; then ``body`` TIFBlocks at LR resolution and a conv, with a skip from level 0."""

    def __init__(self, widths: tuple[int, ...], stage_blocks: int, body_blocks: int,
                 cond_dim: int, slope: float):
        super().__init__()
        self.slope = slope
        self.stages = nn.ModuleList(
            nn.ModuleList(TIFBlock(widths[i], cond_dim, slope) for _ in range(stage_blocks))
            for i in range(1, len(widths)))
        self.lift = nn.ModuleList(nn.Conv2d(widths[i], widths[i - 1] * 4, 3, padding=1)
                                  for i in range(1, len(widths)))
        self.body = nn.ModuleList(TIFBlock(widths[0], cond_dim, slope) for _ in range(body_blocks))
        self.body_conv = nn.Conv2d(widths[0], widths[0], 3, padding=1)

    def forward(self, x: torch.Tensor, feats: list[torch.Tensor], t: torch.Tensor | None,
                fuse=None) -> torch.Tensor:
        """``fuse(level, x) -> x``: adds F_U at the start of every level (None: no F_U)."""
        fuse = fuse or (lambda level, x: x)
        x = fuse(len(self.stages), x)
        for i in range(len(self.stages), 0, -1):
            for blk in self.stages[i - 1]:
                x = blk(x, t)
            x = F.leaky_relu(F.pixel_shuffle(self.lift[i - 1](x), 2), self.slope) + feats[i - 1]
            x = fuse(i - 1, x)
        for blk in self.body:
            x = blk(x, t)
        return self.body_conv(x) + feats[0]


class Upsampler(nn.Module):
    """log2(s) ×2 stages (conv → pixel shuffle → LeakyReLU → TIFBlock), an output conv, plus the
    bicubic upscale of the LR input. The output conv starts at zero, so a fresh model is exactly
    bicubic: the network predicts the residual."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], scale: int, cond_dim: int,
                 slope: float):
        super().__init__()
        self.scale, self.slope = scale, slope
        convs, blocks, c = [], [], in_channels
        for w in widths:
            convs.append(nn.Conv2d(c, w * 4, 3, padding=1))
            blocks.append(TIFBlock(w, cond_dim, slope))
            c = w
        self.convs = nn.ModuleList(convs)
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, lr: torch.Tensor, t: torch.Tensor | None,
                fuse=None) -> torch.Tensor:
        """``fuse(stage, x) -> x``: adds F_U after each ×2 stage (stage 1 = 2× LR; None: no F_U)."""
        for j, (conv, blk) in enumerate(zip(self.convs, self.blocks), start=1):
            x = F.leaky_relu(F.pixel_shuffle(conv(x), 2), self.slope)
            if fuse is not None:
                x = fuse(-j, x)
            x = blk(x, t)
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.out(x) + base.to(x.dtype)


def _describe(cfg: ModelConfig, parameters: int) -> ModelInfo:
    m = cfg.pad_multiple
    # theoretical receptive-field radius in LR pixels; the effective one is much smaller
    r = 1 + sum(2 ** (i - 1) for i in range(1, len(cfg.encoder_widths)))
    r += sum(2 ** i * (2 * cfg.stage_blocks + 1) for i in range(1, len(cfg.encoder_widths)))
    r += 2 * cfg.body_blocks + 1 + 2
    overlap = min(-(-r // m) * m, 64)
    return ModelInfo(scale=cfg.scale, text_conditioned=cfg.text_conditioned, clip=cfg.clip,
                     pad_multiple=m, tile_overlap=overlap, parameters=parameters,
                     tail_overlap=_tail_radius(cfg.num_up), two_phase=True)


def _tail_radius(num_up: int) -> int:
    """Exact receptive-field radius of ``reconstruct`` in LR pixels: an output pixel depends only
    on the features and LR pixels within this distance of the LR pixel it lies in. Walked back
    from the output: the output conv (3×3), then per ×2 stage a TIFBlock (two 3×3 convs), the
    pixel shuffle (a radius r at 2× is ⌈r/2⌉ one level down) and the stage's 3×3 conv; the
    bicubic skip reaches 2 LR px. F_U is sampled pointwise, in absolute coordinates."""
    r = 1
    for _ in range(num_up):
        r = -(-(r + 2) // 2) + 1
    return max(r, 2)


class FrozenClip:
    """The generator's frozen CLIP, held outside its module tree.

    A plain object (not an ``nn.Module`` attribute), so the CLIP is in none of the generator's
    ``state_dict()`` (checkpoints never copy it), ``parameters()`` (never trained, counted or
    broadcast by DDP), ``modules()`` or ``train()``/``eval()`` (it is always frozen, in eval
    mode). Instead it follows the generator: :meth:`follow` gives it the device, floating dtype
    and memory format of a generator weight, so ``model.to(device)``, ``.cuda()``, ``.double()``
    or ``.to(memory_format=...)`` reach it the first time the generator uses it. A CLIP shared
    by two generators (training's model and its EMA copy) is where the last one to use it is.
    """

    __slots__ = ("backbone",)

    def __init__(self, backbone: nn.Module | None = None):
        self.backbone = backbone

    def follow(self, like: torch.Tensor) -> nn.Module | None:
        """The CLIP, first moved to where ``like`` (a 4-D conv weight of the generator) is;
        outside inference mode, since training back-propagates through the CLIP."""
        clip = self.backbone
        if clip is None:
            return None
        conv = clip.model.visual.conv1.weight
        fmt = (torch.channels_last if like.is_contiguous(memory_format=torch.channels_last)
               and not like.is_contiguous() else torch.contiguous_format)
        if conv.device != like.device or conv.dtype != like.dtype \
                or not conv.is_contiguous(memory_format=fmt):
            with torch.inference_mode(False):
                clip.to(device=like.device, dtype=like.dtype, memory_format=fmt)
        return clip


class CLIPSR(nn.Module):
    """CLIP-SR generator. Build with ``CLIPSR(config)``; attach a CLIP backbone with
    ``attach_clip`` for text-conditioned configs (CLIP is frozen and held outside the module
    tree: :class:`FrozenClip`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        widths = cfg.encoder_widths
        d = cfg.text_dim if cfg.text_conditioned else 0
        d_tif = d if cfg.tif_text else 0
        slope = cfg.negative_slope
        self.encoder = ImageEncoder(widths, slope)
        self.refinement = IterativeRefinement(widths, cfg.stage_blocks, cfg.body_blocks, d_tif, slope)
        self.upsampler = Upsampler(widths[0], cfg.up_widths[:cfg.num_up], cfg.scale, d_tif, slope)
        if cfg.text_conditioned:
            null = torch.randn(d)
            self.null_text = nn.Parameter(null / null.norm())
            self.prompt_predictor = PromptPredictor(d, cfg.clip_width, cfg.prompt_tokens)
            self.fu_projection = FUProjection(cfg.clip_width, widths + cfg.up_widths[:cfg.num_up], d,
                                              film=cfg.fu_film)
        self._frozen_clip = FrozenClip()
        self._info = _describe(cfg, sum(p.numel() for p in self.parameters()))

    # -- description ---------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """Scale, padding multiple, tile-overlap hint, parameter count (computed once)."""
        return self._info

    def bytes_per_lr_pixel(self, elem_size: int = 4, part: str = "all") -> int:
        """Rough peak activation memory per LR pixel of a tile (for choosing tile sizes).

        ``part``: ``"all"`` (the whole forward), ``"lr"`` (``lr_features``: encoder and Iterative
        Refinement Module), ``"tail"`` (``reconstruct``, with the float32 output and its blend
        buffers) or ``"features"`` (one stored pixel of the feature map ``lr_features`` returns).
        """
        cfg, s = self.config, 1
        fu = cfg.text_conditioned and cfg.fu_fusion  # F_U is blended in fp32: 2 more maps
        c0 = cfg.encoder_widths[0]
        if part == "features":
            return c0 * elem_size
        lr = 6 * c0 * elem_size + (8 * c0 if fu else 0)
        lr += sum(6 * w * elem_size // 4 ** i for i, w in enumerate(cfg.encoder_widths[1:], 1))
        tail = 2 * c0 * elem_size
        for w in cfg.up_widths[:cfg.num_up]:
            s *= 2
            tail = max(tail, 6 * w * s * s * elem_size + (8 * w * s * s if fu else 0))
        out = 3 * cfg.scale ** 2 * 4 * 3
        if part == "lr":
            return lr
        if part == "tail":
            return tail + out
        if part != "all":
            raise ValueError(f"unknown part {part!r}")
        # the whole forward: as estimated before the split (kept: it decides when to tile)
        peak = 6 * c0 * elem_size + (8 * c0 if fu else 0)
        s = 1
        for w in cfg.up_widths[:cfg.num_up]:
            s *= 2
            peak = max(peak, 6 * w * s * s * elem_size + (8 * w * s * s if fu else 0))
        return peak + out

    # -- CLIP ----------------------------------------------------------------------------------
    def attach_clip(self, clip) -> None:
        """Attach a frozen CLIP backbone (kept out of ``state_dict`` and of ``parameters()``)."""
        if self.config.text_conditioned:
            if clip.text_dim != self.config.text_dim or clip.visual_width != self.config.clip_width:
                raise ModelError(f"CLIP {clip.spec} does not match this model (needs text_dim "
                                 f"{self.config.text_dim}, visual width {self.config.clip_width})")
            if self.config.prompt_tokens > clip.visual_layers:
                raise ModelError(f"CLIP {clip.spec} has {clip.visual_layers} visual blocks, fewer "
                                 f"than the model's {self.config.prompt_tokens} prompt tokens")
        self._frozen_clip.backbone = clip

    @property
    def clip(self):
        """The attached CLIP (None: none), on the generator's device (:class:`FrozenClip`)."""
        return self._frozen_clip.follow(self.encoder.head.weight)

    def _need_clip(self):
        clip = self.clip
        if clip is None:
            raise ModelError("this text-conditioned model has no CLIP attached")
        return clip

    def text_embedding(self, texts: list[str | None] | None, batch: int = 1) -> torch.Tensor | None:
        """Sentence embeddings for ``texts`` (None entries → null); raw, not normalised."""
        if not self.config.text_conditioned:
            return None
        clip = self._need_clip()
        texts = texts if texts is not None else [None] * batch
        out = self.null_text.detach().unsqueeze(0).repeat(len(texts), 1)
        real = [i for i, t in enumerate(texts) if t]
        if real:
            emb = clip.encode_text([texts[i] for i in real]).to(out.dtype)
            out[real] = emb
        return out

    def condition(self, lr_full: torch.Tensor, text_emb: torch.Tensor | None = None,
                  *, null_mask: torch.Tensor | None = None, text_tif: torch.Tensor | None = None,
                  text_prompt: torch.Tensor | None = None,
                  text_film: torch.Tensor | None = None) -> Conditioning:
        """Per-image conditioning from the whole LR image (in training: the LR patch) and
        (optional) sentence embeddings.

        ``text_emb``: (B, D) from ``text_embedding`` (or any CLIP-space vector; None → null text).
        ``null_mask``: (B,) bool, rows that use the learned null embedding (caption dropout), or
        (B, len(ROUTES)) bool, one column per route (``prompt.ROUTES``: per-route dropout).
        ``text_tif``, ``text_prompt``, ``text_film`` (ablations): give one route its own
        embedding instead of ``text_emb`` (the TIFBlocks, the prompt predictor, the F_U
        read-out's FiLM; ``text_embedding([None])`` is the null text).
        """
        h, w = lr_full.shape[-2:]
        if not self.config.text_conditioned:
            return Conditioning(None, None, (h, w))
        b = lr_full.shape[0]
        null = self.null_text.unsqueeze(0).expand(b, -1)
        if null_mask is not None and null_mask.dim() == 1:
            null_mask = null_mask[:, None].expand(b, len(ROUTES))

        def route(k: int, own: torch.Tensor | None) -> torch.Tensor:
            e = own if own is not None else text_emb
            t = null if e is None else e.to(null.dtype)
            if null_mask is not None:
                t = torch.where(null_mask[:, k, None], null, t)
            return F.normalize(t, dim=-1)

        t = route(0, text_tif)
        if not self.config.fu_fusion:
            return Conditioning(t, None, (h, w))
        clip = self._need_clip()
        views, plan = clip_view(lr_full, self.config.clip_view, size=clip.image_size,
                                mean=clip.mean, std=clip.std)
        prompts = self.prompt_predictor(route(1, text_prompt)).float()
        prompts = prompts.repeat_interleave(plan.count, dim=0)
        t_win = route(2, text_film).repeat_interleave(plan.count, dim=0)
        levels: list[list[torch.Tensor]] = [[] for _ in self.fu_projection.proj]
        for i in range(0, views.shape[0], _CLIP_CHUNK):  # bounded memory for huge images
            seq = clip.prompted_sequence(clip.embed_patches(views[i:i + _CLIP_CHUNK], prepared=True),
                                         prompts[i:i + _CLIP_CHUNK])
            for acc, m in zip(levels, self.fu_projection(seq, clip.grid, t_win[i:i + _CLIP_CHUNK])):
                acc.append(m)
        fu = tuple(torch.cat(acc).view(b, plan.count, *acc[0].shape[1:]) for acc in levels)
        return Conditioning(t, fu, (h, w), plan)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, lr: torch.Tensor, cond: Conditioning | None = None,
                offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Super-resolve ``lr`` (a whole image or a tile at ``offset`` of the image that
        ``cond`` was computed for): ``reconstruct(lr_features(...))``."""
        if cond is None:
            cond = self.condition(lr)
        return self.reconstruct(self.lr_features(lr, cond, offset), lr, cond, offset)

    def lr_features(self, lr: torch.Tensor, cond: Conditioning,
                    offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Phase 1, at LR resolution: the image encoder and the Iterative Refinement Module
        (with F_U at every pyramid level) → (B, encoder_widths[0], h, w) features."""
        feats = self.encoder(lr)
        return self.refinement(feats[-1], feats, cond.text, self._fuse(cond, offset))

    def reconstruct(self, feats: torch.Tensor, lr: torch.Tensor, cond: Conditioning,
                    offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Phase 2, the high-resolution tail: the upsampler (F_U after each ×2 stage) plus the
        bicubic skip of ``lr``; ``feats`` and ``lr`` cover the same LR pixels at ``offset``.
        Its receptive field is ``info.tail_overlap`` LR px, so tiles grown by that much agree
        with the whole image."""
        return self.upsampler(feats, lr, cond.text, self._fuse(cond, offset))

    def _fuse(self, cond: Conditioning, offset: tuple[int, int]):
        """``fuse(level, x) -> x + F_U`` for a tile at ``offset`` (None: no F_U)."""
        if cond.fu is None:
            return None
        n_enc = len(self.config.encoder_widths)

        def fuse(level: int, x: torch.Tensor) -> torch.Tensor:
            # F_U joins every level, coarse to fine, LR/2^k … s·LR: level k >= 0 is pyramid
            # level k (stride 2^k LR px), -j upsampling stage j
            fu = sample_windows(cond.fu[level if level >= 0 else n_enc - 1 - level],
                                cond.view, offset, x.shape[-2:], 2.0 ** level)
            return x + fu.to(x.dtype)

        return fuse


#: CLIP windows per forward pass in ``condition``
_CLIP_CHUNK = 64


def build_model(config: ModelConfig, clip=None) -> CLIPSR:
    """Build a generator (random weights); attach ``clip`` if the config is text-conditioned."""
    model = CLIPSR(config)
    if clip is not None:
        model.attach_clip(clip)
    return model
