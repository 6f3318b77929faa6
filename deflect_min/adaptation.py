"""``adapt``: one entry point that turns an RGB-pretrained timm ViT into a multispectral one.

Every method (DEFLECT and the baselines) goes through :func:`adapt`, which

1. checks the model and the band names,
2. freezes every pretrained parameter,
3. replaces ``vit.patch_embed`` by a :class:`~deflect_min.embedding.DecomposedPatchEmbed`
   that takes all C bands of a reflectance image (the baselines see its RGB bands only),
4. lets the method add or unfreeze what it tunes.

The model is changed in place (as HF peft does) and returned; it still is a timm
``VisionTransformer``, so ``forward``, ``forward_features``, ``forward_intermediates`` and
``reset_classifier`` work on (B, C, H, W) input. The task head (``vit.head``) stays trainable
and is never counted as a tuned encoder parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .attention import UntangledAttention
from .bands import GFM_RGB, resolve_bands, rgb_of
from .embedding import (BandStats, DecomposedPatchEmbed, NewParameters, SideStream,
                        SpectralEmbedding, patch_size_of)
from .indices import DEFAULT_INDICES

__all__ = ["adapt", "METHODS", "register_method", "default_layers"]

#: Adaptation methods by name; each adds or unfreezes what it tunes.
METHODS: dict[str, Callable[..., None]] = {}


def register_method(name: str):
    """Register ``fn(vit, *, bands, rgb_bands, band_stats, **options)`` as method ``name``."""

    def wrap(fn):
        METHODS[name] = fn
        return fn

    return wrap


def adapt(vit: nn.Module, method: str = "deflect", *, bands: Sequence[str],
          rgb_bands: Sequence[str] | None = None, band_stats: BandStats = None,
          **options) -> VisionTransformer:
    """Adapt an RGB-pretrained ViT to ``bands`` with ``method`` (in place; returns it).

    Args:
        vit: a timm ``VisionTransformer`` with a 3-channel patch embedding (torchgeo's
            ``ScaleMAE`` included).
        method: one of :data:`METHODS` (``"deflect"``, ``"deflect+lora"``, ``"frozen"``,
            ``"full"``, and the baselines ``"norm"``, ``"bitfit"``, ``"lora"``, ``"slr"``).
        bands: sensor-qualified band names of the input, in channel order.
        rgb_bands: the (red, green, blue) bands in the model's pretraining order; found from
            the band roles when omitted.
        band_stats: per-band (mean, std) of the reflectance, applied inside the model; ``None``
            standardises nothing.
        **options: the method's own settings (for DEFLECT: ``layers``, ``rank``, ``stream``,
            ``deflect``, ``lora_rank``, ``lora_alpha``, ``indices``, ``eps_rel``; for the
            baselines: ``input``, ``inflate_init``, and ``rank``, ``alpha`` (LoRA) or ``rank``,
            ``patch_adapter`` (SLR), see :mod:`deflect_min.baselines`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {sorted(METHODS)}.")
    _check_vit(vit)
    _mark_unused_parameters(vit)
    band_list = [b.name for b in resolve_bands(bands)]
    card = getattr(vit, "gfm_card", None)  # set by deflect_min.load_gfm
    roles = card.rgb_roles if card is not None else GFM_RGB
    rgb = tuple(rgb_bands) if rgb_bands is not None else rgb_of(band_list, roles=roles)
    if len(rgb) != 3 or any(b not in band_list for b in rgb):
        raise ValueError(f"rgb_bands {list(rgb)} must be three of the input bands {band_list}; "
                         f"add them to `bands` or pass rgb_bands=None to find them by role.")
    _check_options(METHODS[method], method, options)
    vit.requires_grad_(False)
    METHODS[method](vit, bands=band_list, rgb_bands=rgb, band_stats=band_stats, **options)
    if isinstance(vit.head, nn.Module):
        vit.head.requires_grad_(True)
    vit.adaptation = dict(method=method, bands=band_list, rgb_bands=rgb, options=dict(options))
    return vit


def _check_options(fn: Callable[..., None], method: str, options: dict) -> None:
    """Raise a ``ValueError`` naming the settings ``method`` lacks (not a ``TypeError``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return  # the method passes them on and checks them there
    accepted = [n for n, p in params.items()
                if p.kind == p.KEYWORD_ONLY and n not in ("bands", "rgb_bands", "band_stats")]
    unknown = sorted(set(options) - set(accepted) - {"bands", "rgb_bands", "band_stats"})
    if unknown:
        raise ValueError(f"method {method!r} has no setting {unknown}; its settings are "
                         f"{accepted}. Drop {unknown} (e.g. stream and layers are DEFLECT's), "
                         f"or choose a method that has them.")


def _check_vit(vit: nn.Module) -> None:
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"adapt expects a timm VisionTransformer (e.g. timm.create_model("
                         f"'vit_base_patch16_224') or torchgeo's ScaleMAE), got "
                         f"{type(vit).__name__}.")
    if isinstance(vit.patch_embed, DecomposedPatchEmbed):
        raise ValueError("this model is already adapted; adapt a fresh copy of the pretrained ViT.")
    proj = getattr(vit.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.in_channels != 3:
        raise ValueError("adapt expects an RGB-pretrained ViT whose patch embedding is a "
                         "3-channel Conv2d (in_chans=3).")


def _mark_unused_parameters(vit: nn.Module) -> None:
    """Name the parameters the forward pass never uses, so ``full`` does not tune them and
    ``count_parameters`` does not count them: torchgeo's ScaleMAE recomputes its GSD-aware
    positional encoding at every call and keeps the stored ``pos_embed`` frozen."""
    if hasattr(vit, "unused_parameters") or not type(vit).__module__.startswith("torchgeo."):
        return
    from torchgeo.models import ScaleMAE

    if isinstance(vit, ScaleMAE) and vit.pos_embed is not None:
        vit.unused_parameters = ("pos_embed",)


def default_layers(depth: int) -> list[int]:
    """The first ``3/8`` of the blocks (ViT-L/16: 9 of 24, ViT-B and ViT-S: 4 of 12).

    Reconstructed choice: the paper names the choice of layers as a sensitivity but its
    setting was not available; this one gives about 0.2 % of ViT-L/16's parameters at rank 8.
    """
    return list(range(max(1, depth * 3 // 8)))


def _rgb_only(vit, *, bands, rgb_bands, band_stats, input: str = "rgb",
              inflate_init: str = "zeros") -> None:
    """The baselines' input: the RGB bands, or all bands through an inflated patch embedding
    (``input="inflated"``, see :func:`deflect_min.baselines.baseline_input`)."""
    from .baselines import baseline_input  # baselines imports this module

    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats, input=input,
                   inflate_init=inflate_init)


@register_method("frozen")
def _frozen(vit, *, bands, rgb_bands, band_stats, input: str = "rgb",
            inflate_init: str = "zeros") -> None:
    """Frozen encoder: only the task head is trained (RGB bands unless ``input="inflated"``)."""
    _rgb_only(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats, input=input,
              inflate_init=inflate_init)


@register_method("full")
def _full(vit, *, bands, rgb_bands, band_stats, input: str = "rgb",
          inflate_init: str = "zeros") -> None:
    """Full fine-tuning (the oracle): every encoder parameter the forward pass uses."""
    _rgb_only(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats, input=input,
              inflate_init=inflate_init)
    unused = set(getattr(vit, "unused_parameters", ()))
    for name, p in vit.named_parameters():
        p.requires_grad_(name not in unused)


@register_method("deflect")
def _deflect(vit, *, bands, rgb_bands, band_stats, layers: Sequence[int] | None = None,
             rank: int = 8, stream: str = "dual", deflect: bool = True, lora_rank: int = 0,
             lora_alpha: float | None = None, indices: tuple[str, ...] = DEFAULT_INDICES,
             eps_rel: float = 1e-4) -> None:
    """DEFLECT: x_A branch (Eqs. (R2)-(R3)) + uAtt (Eqs. (R4)-(R5)) + deflection (Eq. (R6))."""
    depth = len(vit.blocks)
    layers = default_layers(depth) if layers is None else sorted(set(int(i) for i in layers))
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise ValueError(f"layers must be a non-empty list of block indices in [0, {depth - 1}], "
                         f"got {layers}.")
    if int(rank) != rank or rank <= 0:
        raise ValueError(f"rank must be a positive integer (DEFLECT's default is 8), got {rank!r}.")
    if stream not in ("dual", "single"):
        raise ValueError(f"stream must be 'dual' (x_A as a side input of the adapted blocks) or "
                         f"'single' (x = x_P + x_A at the input), got {stream!r}.")
    like = dict(device=vit.patch_embed.proj.weight.device, dtype=vit.patch_embed.proj.weight.dtype)
    side = SideStream()
    spectral = SpectralEmbedding(bands=bands, patch_size=patch_size_of(vit.patch_embed),
                                 dim=vit.embed_dim, indices=indices,
                                 zero_init=stream == "single").to(**like)
    vit.patch_embed = DecomposedPatchEmbed(rgb_embed=vit.patch_embed, bands=bands,
                                           rgb_bands=rgb_bands, band_stats=band_stats,
                                           spectral=spectral, stream=stream, side=side)
    for i in layers:
        block = vit.blocks[i]
        block.attn = UntangledAttention(attn=block.attn, side=side, rank=rank, stream=stream,
                                        lora_rank=lora_rank, lora_alpha=lora_alpha,
                                        deflect=deflect, eps_rel=eps_rel).to(**like)
    for module in vit.modules():  # what DEFLECT added; the wrapped pretrained attention stays frozen
        if isinstance(module, NewParameters):
            module.requires_grad_(True)


@register_method("deflect+lora")
def _deflect_lora(vit, *, lora_rank: int = 8, **options) -> None:
    """DEFLECT with LoRA updates of W_Q and W_V inside uAtt ("combined with low-rank updates")."""
    if int(lora_rank) != lora_rank or lora_rank <= 0:
        raise ValueError(f"lora_rank must be a positive integer (default 8), got {lora_rank!r}; "
                         f"for DEFLECT without LoRA use method='deflect'.")
    _check_options(_deflect, "deflect+lora", options)
    _deflect(vit, lora_rank=lora_rank, **options)
