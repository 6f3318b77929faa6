"""load_backbone: GFM names, timm:NAME with local or no weights, and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import deflect_min as dm
from deflect_min.backbones import load_backbone
from tests.helpers import S2_7, reflectance


def test_timm_vit_without_weights_is_adaptable_and_carded():
    vit = load_backbone("timm:vit_tiny_patch16_224", weights="none", img_size=32)
    card = vit.gfm_card
    assert (card.name, card.pretrained, card.patch_size, card.embed_dim) == (
        "timm:vit_tiny_patch16_224", False, 16, 192)
    assert card.licence == "apache-2.0" and card.norm_mean == (0.5, 0.5, 0.5)
    model = dm.adapt(vit, "deflect", bands=S2_7)
    assert model(reflectance(1, S2_7, 32)).shape == (1, 192)


def test_local_weights_go_through_timms_loader(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    vit = load_backbone("timm:vit_tiny_patch16_224", weights=tmp_path / "w.safetensors",
                        img_size=32)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert vit.gfm_card.pretrained and "w.safetensors" in vit.gfm_card.weights
    assert vit.num_classes == 0  # the checkpoint's classifier is dropped


def test_gfm_names_go_to_load_gfm():
    vit = load_backbone("dinov2_vits14_imgfocus", weights=None, img_size=28)
    assert vit.gfm_card.name == "dinov2_vits14_imgfocus" and not vit.gfm_card.pretrained


@pytest.mark.parametrize("spec, message", [
    ("vit_tiny", r"unknown backbone 'vit_tiny': pass a GFM name .* timm:NAME"),
    ("timm:resnet18", r"builds a ResNet; deflect_min adapts timm VisionTransformer"),
    ("timm:no_such_vit", r"timm has no model 'no_such_vit'"),
])
def test_bad_backbones_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        load_backbone(spec, weights="none", img_size=32)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file .*nope.pth; pass a checkpoint file"):
        load_backbone("timm:vit_tiny_patch16_224", weights=tmp_path / "nope.pth")
