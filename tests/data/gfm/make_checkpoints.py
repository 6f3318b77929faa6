"""Tiny fake GFM checkpoints in the official key layouts, and an independent reference forward.

The tests generate these files at test time (into ``tmp_path``), so nothing large is committed.
Run ``python tests/data/gfm/make_checkpoints.py OUTDIR`` to write one of each for inspection.

Layouts reproduced (from the upstream sources):

* Scale-MAE, torchgeo file: a flat timm ``VisionTransformer`` state dict (``cls_token``,
  ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``).
* Cross-Scale MAE (``aicip/Cross-Scale-MAE`` ``util/misc.py::save_model``):
  ``{"model", "optimizer", "epoch", "scaler", "args": argparse.Namespace}``; ``model`` holds
  ``cls_token``, ``patch_embed.proj.*``, ``encoder_pos_embed`` (128 px grid), ``encoder_norm.*``,
  the MAE decoder (``decoder_*``, ``mask_token``, ``predictor.*``) and the encoder blocks either
  as timm blocks (``encoder.N.norm1.weight`` ...) or, with ``--use_xformers`` (the released
  runs), as xformers post-norm blocks (``encoder.encoders.N.wrap_att.norm.weight``,
  ``...wrap_att.sublayer.layer.in_proj_container.{q,k,v}_proj.*``,
  ``...wrap_att.sublayer.layer.proj.*``, ``...wrap_ff.norm.*``,
  ``...wrap_ff.sublayer.layer.mlp.{0,3}.*``).
* DINO-MC (``main_dino_mc.py`` ``save_dict``): ``{"student", "teacher", "optimizer", "epoch",
  "args": argparse.Namespace, "dino_loss"}``; the student is DDP-wrapped
  (``module.backbone.*``, ``module.head.*``), the teacher is not (``backbone.*``, ``head.*``).

The "canonical" dict below keeps q, k and v separate, so that the reference forward never sees
timm's fused ``qkv`` and the loader's concatenation order is really tested.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

BLOCK_KEYS = ("norm1_w", "norm1_b", "q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "proj_w",
              "proj_b", "norm2_w", "norm2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")


def canonical_vit(*, depth: int = 2, dim: int = 64, patch: int = 16, grid: int = 14,
                  mlp_ratio: int = 4, seed: int = 0) -> dict:
    """Random ViT weights; LayerNorm affines are far from (1, 0) so swapped norms show."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)

    hid = mlp_ratio * dim
    blocks = []
    for _ in range(depth):
        blocks.append({
            "norm1_w": 1 + r(dim, scale=0.3), "norm1_b": r(dim, scale=0.3),
            "q_w": r(dim, dim, scale=0.15), "q_b": r(dim), "k_w": r(dim, dim, scale=0.15),
            "k_b": r(dim), "v_w": r(dim, dim, scale=0.15), "v_b": r(dim),
            "proj_w": r(dim, dim, scale=0.15), "proj_b": r(dim),
            "norm2_w": 1 + r(dim, scale=0.3), "norm2_b": r(dim, scale=0.3),
            "fc1_w": r(hid, dim, scale=0.15), "fc1_b": r(hid), "fc2_w": r(dim, hid, scale=0.08),
            "fc2_b": r(dim),
        })
    return {
        "cls_token": r(1, 1, dim, scale=0.5),
        "pos_embed": r(1, 1 + grid * grid, dim, scale=0.5),
        "patch_w": r(dim, 3, patch, patch, scale=0.05), "patch_b": r(dim),
        "blocks": blocks,
        "norm_w": 1 + r(dim, scale=0.3), "norm_b": r(dim, scale=0.3),
        "patch": patch, "dim": dim,
    }


def reference_forward(c: dict, x: torch.Tensor, *, heads: int, post_norm: bool = False,
                      block_eps: float = 1e-6, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens after the final norm, computed from the canonical tensors with plain torch ops."""
    dim = c["dim"]
    t = F.conv2d(x, c["patch_w"], c["patch_b"], stride=c["patch"]).flatten(2).transpose(1, 2)
    t = torch.cat([c["cls_token"].expand(x.shape[0], -1, -1), t], dim=1)
    t = t + (c["pos_embed"] if pos_embed is None else pos_embed)

    def ln(h, w, b, eps):
        return F.layer_norm(h, (dim,), w, b, eps)

    def attn(h, p):
        b_, n, _ = h.shape
        q, k, v = (F.linear(h, p[f"{n_}_w"], p[f"{n_}_b"]).view(b_, n, heads, -1).transpose(1, 2)
                   for n_ in "qkv")
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = (a @ v).transpose(1, 2).reshape(b_, n, dim)
        return F.linear(out, p["proj_w"], p["proj_b"])

    def mlp(h, p):
        return F.linear(F.gelu(F.linear(h, p["fc1_w"], p["fc1_b"])), p["fc2_w"], p["fc2_b"])

    for p in c["blocks"]:
        if post_norm:
            t = ln(t + attn(t, p), p["norm1_w"], p["norm1_b"], block_eps)
            t = ln(t + mlp(t, p), p["norm2_w"], p["norm2_b"], block_eps)
        else:
            t = t + attn(ln(t, p["norm1_w"], p["norm1_b"], block_eps), p)
            t = t + mlp(ln(t, p["norm2_w"], p["norm2_b"], block_eps), p)
    return ln(t, c["norm_w"], c["norm_b"], 1e-6)


def timm_state_dict(c: dict, prefix: str = "blocks.") -> dict[str, torch.Tensor]:
    sd = {"cls_token": c["cls_token"], "pos_embed": c["pos_embed"],
          "patch_embed.proj.weight": c["patch_w"], "patch_embed.proj.bias": c["patch_b"],
          "norm.weight": c["norm_w"], "norm.bias": c["norm_b"]}
    for i, p in enumerate(c["blocks"]):
        b = f"{prefix}{i}."
        sd.update({
            b + "norm1.weight": p["norm1_w"], b + "norm1.bias": p["norm1_b"],
            b + "attn.qkv.weight": torch.cat([p["q_w"], p["k_w"], p["v_w"]]),
            b + "attn.qkv.bias": torch.cat([p["q_b"], p["k_b"], p["v_b"]]),
            b + "attn.proj.weight": p["proj_w"], b + "attn.proj.bias": p["proj_b"],
            b + "norm2.weight": p["norm2_w"], b + "norm2.bias": p["norm2_b"],
            b + "mlp.fc1.weight": p["fc1_w"], b + "mlp.fc1.bias": p["fc1_b"],
            b + "mlp.fc2.weight": p["fc2_w"], b + "mlp.fc2.bias": p["fc2_b"],
        })
    return sd


def write_scalemae(path: Path, c: dict) -> Path:
    """torchgeo's file: a flat timm state dict (the stored pos_embed is never used)."""
    torch.save(timm_state_dict(c), path)
    return path


def _mae_decoder(dim: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    d = 32
    return {"mask_token": torch.zeros(1, 1, d), "decoder_embed.weight": torch.randn(d, dim, generator=g),
            "decoder_embed.bias": torch.zeros(d), "decoder_pos_embed": torch.zeros(1, 65, d),
            "decoder.0.norm1.weight": torch.ones(d), "decoder_norm.weight": torch.ones(d),
            "decoder_norm.bias": torch.zeros(d), "decoder_pred.weight": torch.randn(768, d, generator=g),
            "decoder_pred.bias": torch.zeros(768), "predictor.layer1.weight": torch.randn(8, d, generator=g)}


def write_cross_scale_mae(path: Path, c: dict, *, variant: str = "xformers") -> Path:
    """Cross-Scale MAE ``save_model`` output; ``variant`` ``"xformers"`` (post-norm, separate
    q/k/v, the released runs, xformers 0.0.19), ``"xformers-0.0.11"`` (the same, plus every
    attention and MLP weight a second time under ``mha.*`` and ``feedforward.*``: xformers
    0.0.11's ``xFormerEncoderBlock`` registers ``self.mha`` and ``self.feedforward`` and wraps the
    same modules in ``wrap_att`` / ``wrap_ff``, xformers/factory/block_factory.py lines 133-138
    of the 0.0.11 sdist) or ``"timm"`` (timm blocks)."""
    g = torch.Generator().manual_seed(1)
    m = {"cls_token": c["cls_token"], "encoder_pos_embed": c["pos_embed"],
         "patch_embed.proj.weight": c["patch_w"], "patch_embed.proj.bias": c["patch_b"],
         "encoder_norm.weight": c["norm_w"], "encoder_norm.bias": c["norm_b"]}
    if variant == "timm":
        blocks = timm_state_dict(c, prefix="encoder.")
        m.update({k: v for k, v in blocks.items() if k.startswith("encoder.")})
    elif variant in ("xformers", "xformers-0.0.11"):
        for i, p in enumerate(c["blocks"]):
            b = f"encoder.encoders.{i}."
            att = b + "wrap_att.sublayer.layer."
            ff = b + "wrap_ff.sublayer.layer."
            m.update({
                b + "wrap_att.norm.weight": p["norm1_w"], b + "wrap_att.norm.bias": p["norm1_b"],
                att + "in_proj_container.q_proj.weight": p["q_w"],
                att + "in_proj_container.q_proj.bias": p["q_b"],
                att + "in_proj_container.k_proj.weight": p["k_w"],
                att + "in_proj_container.k_proj.bias": p["k_b"],
                att + "in_proj_container.v_proj.weight": p["v_w"],
                att + "in_proj_container.v_proj.bias": p["v_b"],
                att + "proj.weight": p["proj_w"], att + "proj.bias": p["proj_b"],
                b + "wrap_ff.norm.weight": p["norm2_w"], b + "wrap_ff.norm.bias": p["norm2_b"],
                ff + "mlp.0.weight": p["fc1_w"], ff + "mlp.0.bias": p["fc1_b"],
                ff + "mlp.3.weight": p["fc2_w"], ff + "mlp.3.bias": p["fc2_b"],
            })
            if variant == "xformers-0.0.11":  # the twins: the same tensors under a second name
                m.update({b + "mha." + k[len(att):]: v for k, v in list(m.items())
                          if k.startswith(att)})
                m.update({b + "feedforward." + k[len(ff):]: v for k, v in list(m.items())
                          if k.startswith(ff)})
    else:
        raise ValueError(variant)
    m.update(_mae_decoder(c["dim"], g))
    args = argparse.Namespace(model="mae_vit_base_MsLdCeCd", input_size=128, patch_size="16",
                              use_xformers=variant != "timm", attn_name="scaled_dot_product",
                              epochs=400, blr=5e-5, dataset_type="fmow_rgb", distributed=False,
                              global_crops_scale=(0.32, 1.0), masked_bands=None)
    ckpt = {"model": m,
            "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0]}]},
            "epoch": 399, "scaler": {"scale": 65536.0, "_growth_tracker": 12}, "args": args}
    torch.save(ckpt, path)
    return path


def write_dino_mc(path: Path, c: dict, *, student: dict | None = None) -> Path:
    """DINO-MC ``save_dict``: the teacher holds ``c``; the student holds ``student`` (or noise)."""
    g = torch.Generator().manual_seed(2)
    teacher = timm_state_dict(c)
    stud = timm_state_dict(student) if student is not None else \
        {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in teacher.items()}
    d = c["dim"]
    head = {"head.mlp.0.weight": torch.randn(32, d, generator=g), "head.mlp.0.bias": torch.zeros(32),
            "head.last_layer.weight_g": torch.ones(16, 1), "head.last_layer.weight_v": torch.randn(16, 32, generator=g)}
    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in stud.items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=c["patch"], out_dim=65536,
                                   data_mode="mc", bands="RGB_BANDS", size_crops=[184, 164]),
        "dino_loss": {"center": torch.zeros(1, 16)},
        "fp16_scaler": {"scale": 1024.0},
    }
    torch.save(ckpt, path)
    return path


def main(out: str) -> None:
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_scalemae(outdir / "scalemae_tiny.pth", canonical_vit(grid=14))
    write_cross_scale_mae(outdir / "cross_scale_mae_tiny_xformers.pth", canonical_vit(grid=8))
    write_cross_scale_mae(outdir / "cross_scale_mae_tiny_timm.pth", canonical_vit(grid=8),
                          variant="timm")
    write_dino_mc(outdir / "dino_mc_tiny.pth", canonical_vit(patch=8, grid=28))
    print(f"wrote 4 fake checkpoints to {outdir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
