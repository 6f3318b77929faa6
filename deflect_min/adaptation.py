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

from collections.abc import Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .bands import GFM_RGB, resolve_bands, rgb_of
from .embedding import BandStats, DecomposedPatchEmbed
from .methods import METHODS, MethodConfig, config_of, default_layers

__all__ = ["adapt", "METHODS", "default_layers"]


def adapt(vit: nn.Module, method: str | MethodConfig = "deflect", *, bands: Sequence[str],
          rgb_bands: Sequence[str] | None = None, band_stats: BandStats = None,
          **options) -> VisionTransformer:
    """Adapt an RGB-pretrained ViT to ``bands`` with ``method`` (in place; returns it).

    Args:
        vit: a timm ``VisionTransformer`` with a 3-channel patch embedding (torchgeo's
            ``ScaleMAE`` included).
        method: a name of :data:`METHODS` (``"deflect"``, ``"deflect+lora"``, ``"frozen"``,
            ``"full"``, and the baselines ``"norm"``, ``"bitfit"``, ``"lora"``, ``"slr"``), or
            its typed config (e.g. ``LoraConfig(rank=8)``, see :mod:`deflect_min.methods`).
        bands: sensor-qualified band names of the input, in channel order.
        rgb_bands: the (red, green, blue) bands in the model's pretraining order; found from
            the band roles when omitted.
        band_stats: per-band (mean, std) of the reflectance, applied inside the model; ``None``
            standardises nothing.
        **options: the method's options when ``method`` is a name (they build its config; an
            unknown one is an error that lists the method's options and defaults).

    The model records what was done in ``vit.adaptation``: ``method``, ``bands``,
    ``rgb_bands``, ``options`` (as given) and ``config`` (every option, as a JSON-ready dict).
    """
    config = config_of(method, **options)
    _check_vit(vit)
    _mark_unused_parameters(vit)
    band_list = [b.name for b in resolve_bands(bands)]
    card = getattr(vit, "gfm_card", None)  # set by deflect_min.load_gfm
    roles = card.rgb_roles if card is not None else GFM_RGB
    rgb = tuple(rgb_bands) if rgb_bands is not None else rgb_of(band_list, roles=roles)
    if len(rgb) != 3 or any(b not in band_list for b in rgb):
        raise ValueError(f"rgb_bands {list(rgb)} must be three of the input bands {band_list}; "
                         f"add them to `bands` or pass rgb_bands=None to find them by role.")
    vit.requires_grad_(False)
    METHODS[config.method].apply(vit, config, bands=band_list, rgb_bands=rgb,
                                 band_stats=band_stats)
    if isinstance(vit.head, nn.Module):
        vit.head.requires_grad_(True)
    vit.adaptation = dict(method=config.method, bands=band_list, rgb_bands=rgb,
                          options=dict(options), config=config.to_dict())
    return vit


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
