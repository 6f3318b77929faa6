"""Building the GFMs' architectures as timm ViTs and loading their encoder weights."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer

from .cards import _spec

__all__ = ["PostNormBlock"]



# --------------------------------------------------------------------------------------------
# Post-norm block (Cross-Scale MAE's xformers encoder)
# --------------------------------------------------------------------------------------------


class PostNormBlock(Block):
    """A timm ``Block`` computing in post-norm order: ``x = norm1(x + attn(x))``,
    ``x = norm2(x + mlp(x))``.

    Same sub-modules and parameter names as timm's pre-norm ``Block`` (``norm1``, ``attn.qkv``,
    ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so adapters that wrap or replace
    ``attn`` or its linear layers work unchanged. This is xformers' ``residual_norm_style="post"``
    block, which Cross-Scale MAE pretrained with.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is None and not is_causal:
            a = self.attn(x)
        else:
            a = self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        x = self.norm1(x + self.drop_path1(self.ls1(a)))
        x = self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))
        return x


def _build(name: str, img_size: int, arch: dict[str, Any], *, res: float | None,
           post_norm: bool = False) -> VisionTransformer:
    arch = dict(arch)
    if name == "scalemae":
        from torchgeo.models.scale_mae import ScaleMAE

        model = ScaleMAE(res=1.0 if res is None else float(res), img_size=img_size,
                         num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch)
    else:
        if res is not None:
            raise ValueError(f"res= is a Scale-MAE setting; {name} has no GSD-aware encoding.")
        kw: dict[str, Any] = dict(img_size=img_size, num_classes=0,
                                  norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch)
        if post_norm:
            kw["block_fn"] = PostNormBlock
        # post-norm blocks keep eps 1e-6: xformers 0.0.19 builds them as triton's FusedLayerNorm
        # (eps 1e-6) on the authors' CUDA + triton 2.0.0 setup (see deflect_min.models.cards)
        model = VisionTransformer(**kw)
    return model


def _resample_pos_embed(pos: torch.Tensor, target: torch.Tensor, num_prefix: int) -> torch.Tensor:
    if pos.shape == target.shape:
        return pos
    from timm.layers import resample_abs_pos_embed

    n_old = pos.shape[1] - num_prefix
    n_new = target.shape[1] - num_prefix
    g_old, g_new = int(round(n_old**0.5)), int(round(n_new**0.5))
    if g_old**2 != n_old or g_new**2 != n_new or pos.shape[-1] != target.shape[-1]:
        return pos  # not a square grid or another width: leave it to the shape check
    return resample_abs_pos_embed(pos, new_size=[g_new, g_new], old_size=[g_old, g_old],
                                  num_prefix_tokens=num_prefix, interpolation="bicubic",
                                  antialias=False)


def _guess_model(sd: Any) -> str:
    keys = list(sd) if isinstance(sd, dict) else []
    if "teacher" in keys or "student" in keys:
        return "It looks like a DINO checkpoint (student/teacher): try 'dino_mc'."
    if any(k.startswith(("encoder.", "encoder_pos_embed")) for k in keys):
        return "It looks like a Cross-Scale MAE checkpoint: try 'cross_scale_mae_base'/'_large'."
    return "Is it the checkpoint of another model, or of another size?"


def _load_encoder_state(model: nn.Module, sd: dict[str, torch.Tensor], name: str,
                        source: str) -> None:
    """Load ``sd`` into ``model`` requiring every encoder key; errors name the offending keys."""
    own = model.state_dict()
    ignore_missing = {k for k in own if k.startswith(("head.", "fc_norm."))}
    missing = sorted(k for k in own if k not in sd and k not in ignore_missing)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "")

        parts = []
        if missing:
            parts.append(f"missing encoder keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {show(mismatched)}")
        raise RuntimeError(
            f"{source} does not fit the {name} architecture ({_spec(name).card.arch}); "
            + "; ".join(parts)
            + f". {_guess_model(sd)}"
        )
    model.load_state_dict(sd, strict=False)  # only ignorable head keys can be absent here
