"""Key conversion, one function per source format: each maps an official checkpoint's state
dict onto timm's ViT names (and says what the architecture needs: patch size, post-norm)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from .architecture import _guess_model

__all__ = ["CONVERTERS"]


def _unwrap(ckpt: Any, source: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, dict):
        for k in keys:
            if k in ckpt and isinstance(ckpt[k], dict):
                return ckpt[k]
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    top = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise RuntimeError(f"{source}: no state dict found (looked for {keys} or a flat dict of "
                       f"tensors); top level holds {top}. {_guess_model(ckpt)}")


def _convert_scalemae(ckpt: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = _unwrap(ckpt, source, ("model", "state_dict"))
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    return sd, {}


_XF_BLOCK = re.compile(r"^encoder\.encoders\.(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^encoder\.(\d+)\.(.+)$")
_XF_POST = {
    "wrap_att.norm.": "norm1.",
    "wrap_att.sublayer.layer.proj.": "attn.proj.",
    "wrap_ff.norm.": "norm2.",
    "wrap_ff.sublayer.layer.mlp.0.": "mlp.fc1.",
    "wrap_ff.sublayer.layer.mlp.3.": "mlp.fc2.",
}
_XF_INPROJ = "wrap_att.sublayer.layer.in_proj_container."
#: xformers 0.0.11 and older also register the wrapped attention and MLP under these names
#: (xformers/factory/block_factory.py lines 133-138 of the 0.0.11 sdist): the same tensors twice.
_XF_TWINS = {"mha.": "wrap_att.sublayer.layer.", "feedforward.": "wrap_ff.sublayer.layer."}


def _convert_cross_scale_mae(ckpt: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = _unwrap(ckpt, source, ("model", "state_dict"))
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    layout = None
    unknown: list[str] = []
    for k, v in sd.items():
        if k in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias"):
            out[k] = v
        elif k == "encoder_pos_embed":
            out["pos_embed"] = v
        elif k.startswith("encoder_norm."):
            out["norm." + k[len("encoder_norm."):]] = v
        elif (m := _XF_BLOCK.match(k)) is not None:
            layout = layout or "xformers"
            i, rest = int(m.group(1)), m.group(2)
            alias = next((a for a in _XF_TWINS if rest.startswith(a)), None)
            if alias is not None:  # an old xformers' second name: must equal its twin
                twin = f"encoder.encoders.{i}.{_XF_TWINS[alias]}{rest[len(alias):]}"
                if twin not in sd or not torch.equal(sd[twin], v):
                    raise RuntimeError(
                        f"{source}: {k} is an xformers <= 0.0.11 alias of {twin}, but "
                        f"{'that key is missing' if twin not in sd else 'their values differ'}: "
                        f"the file is not a consistent Cross-Scale MAE checkpoint.")
                layout = "xformers, 0.0.11 duplicate keys"
                continue
            if rest.startswith(_XF_INPROJ):
                qkv.setdefault(i, {})[rest[len(_XF_INPROJ):]] = v
                continue
            for src, dst in _XF_POST.items():
                if rest.startswith(src):
                    out[f"blocks.{i}.{dst}{rest[len(src):]}"] = v
                    break
            else:
                unknown.append(k)
        elif (m := _TIMM_BLOCK.match(k)) is not None:
            layout = layout or "timm"
            out[f"blocks.{m.group(1)}.{m.group(2)}"] = v
        elif k.startswith("encoder"):
            unknown.append(k)
        # decoder_*, mask_token, predictor, decoder_pred ...: the MAE decoder, not needed
    if unknown:
        raise RuntimeError(
            f"{source}: unrecognised encoder keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''}."
            " Known layouts: timm blocks (encoder.N.norm1...) and xformers post-norm blocks "
            "(encoder.encoders.N.wrap_att.norm...); an xformers pre-norm checkpoint "
            "(wrap_att.layer.norm) is not supported."
        )
    for i, d in qkv.items():
        pre = f"blocks.{i}.attn.qkv."
        if all(f"{p}_proj.weight" in d for p in "qkv"):  # separate q/k/v Linear layers
            out[pre + "weight"] = torch.cat([d[f"{p}_proj.weight"] for p in "qkv"], 0)
            if all(f"{p}_proj.bias" in d for p in "qkv"):
                out[pre + "bias"] = torch.cat([d[f"{p}_proj.bias"] for p in "qkv"], 0)
        elif "in_proj_weight" in d:  # older xformers: one fused buffer
            out[pre + "weight"] = d["in_proj_weight"]
            if "in_proj_bias" in d:
                out[pre + "bias"] = d["in_proj_bias"]
        elif all(f"{p}_proj_weight" in d for p in "qkv"):
            out[pre + "weight"] = torch.cat([d[f"{p}_proj_weight"] for p in "qkv"], 0)
            if "in_proj_bias" in d:
                out[pre + "bias"] = d["in_proj_bias"]
        else:
            raise RuntimeError(f"{source}: block {i} has input projections {sorted(d)}, "
                               "not q/k/v_proj.{weight,bias} nor in_proj_weight")
    return out, {"post_norm": (layout or "").startswith("xformers"), "layout": layout}


def _convert_dino_mc(ckpt: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(ckpt, dict) and "teacher" in ckpt:
        sd = ckpt["teacher"]
    elif isinstance(ckpt, dict) and "student" in ckpt:
        warnings.warn(f"{source} has no 'teacher'; using the student network", stacklevel=3)
        sd = ckpt["student"]
    else:
        sd = _unwrap(ckpt, source, ("state_dict", "model"))
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("backbone.")
        if k.startswith("head."):  # the DINO projection head (and the ViT's Identity head)
            continue
        out[k] = v
    extra: dict[str, Any] = {}
    w = out.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        extra["patch_size"] = int(w.shape[-1])
    return out, extra


def _convert_imgfocus(ckpt: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return _unwrap(ckpt, source, ()), {}  # already in timm's names (deflect_min.imgfocus)


#: The converter of each GFM.
CONVERTERS = {
    "dinov2_vits14_imgfocus": _convert_imgfocus,
    "scalemae": _convert_scalemae,
    "cross_scale_mae_base": _convert_cross_scale_mae,
    "cross_scale_mae_large": _convert_cross_scale_mae,
    "dino_mc": _convert_dino_mc,
}
