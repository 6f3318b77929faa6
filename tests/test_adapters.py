"""save_adapter / load_adapter: bit-identical round trips for every method and for task models,
and clear errors for every mismatch."""

from __future__ import annotations

import json

import pytest
import torch

import deflect_min as dm
from deflect_min.methods import METHODS
from tests.helpers import S2_7, perturb_new_parameters, reflectance, tiny_vit

STATS = {b: (0.05 + 0.01 * i, 0.1 + 0.02 * i) for i, b in enumerate(S2_7)}
OPTIONS = {"deflect": dict(layers=[0, 2]), "deflect+lora": dict(layers=[1]),
           "slr": dict(patch_adapter=True), "lora": dict(rank=4, input="inflated")}


@pytest.mark.parametrize("method", list(METHODS))
def test_round_trip_is_bit_identical_for_every_method(method, tmp_path):
    model = dm.adapt(tiny_vit(num_classes=3), method, bands=S2_7, band_stats=STATS,
                     **OPTIONS.get(method, {}))
    perturb_new_parameters(model)
    dm.save_adapter(model, tmp_path / "a")
    loaded = dm.load_adapter(tiny_vit(num_classes=3), tmp_path / "a")
    x = reflectance(2, S2_7, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert loaded.adaptation["config"] == model.adaptation["config"]
    saved = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert saved["method"] == method and saved["bands"] == S2_7
    assert saved["band_stats"]["S2_B02"] == pytest.approx(list(STATS["S2_B02"]))


def _trained_segmenter():
    torch.manual_seed(0)
    model = dm.build_model("segmentation", tiny_vit(), "deflect", bands=S2_7, num_classes=4,
                           band_stats=STATS, layers=[0])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for step in range(2):  # BatchNorm statistics move in train mode
        loss = model(reflectance(2, S2_7, 32, seed=step)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_segmenter_with_batchnorm_statistics_round_trips(tmp_path):
    model = _trained_segmenter()
    running = [k for k in dm.tuning.adapter_state_dict(model) if k.endswith("running_mean")]
    assert running, "UPerNet's BatchNorm statistics are part of the adapter"
    dm.save_adapter(model, tmp_path / "seg")
    loaded = dm.load_adapter(tiny_vit(), tmp_path / "seg")
    x = reflectance(2, S2_7, 32, seed=5)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded).__name__ == "GFMSegmenter" and loaded.taps == model.taps


def test_classifier_of_build_model_round_trips(tmp_path):
    model = dm.build_model("classification", tiny_vit(), "lora", bands=S2_7, num_classes=5,
                           rank=2)
    perturb_new_parameters(model)
    dm.save_adapter(model, tmp_path / "cls")
    loaded = dm.load_adapter(tiny_vit(), tmp_path / "cls")
    x = reflectance(3, S2_7, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_rebuilt_from_the_folder_alone(tmp_path):
    name = "dinov2_vits14_imgfocus"
    torch.manual_seed(7)
    base = dm.load_gfm(name, weights=None, img_size=28)
    model = dm.adapt(base, "bitfit", bands=S2_7)
    perturb_new_parameters(model)
    dm.save_adapter(model, tmp_path / "b",
                    base=dict(backbone=name, weights=None, img_size=28, seed=7))
    loaded = dm.load_adapter(None, tmp_path / "b")
    x = reflectance(1, S2_7, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_another_architecture_is_named(tmp_path):
    dm.save_adapter(dm.adapt(tiny_vit(), "lora", bands=S2_7), tmp_path / "a")
    with pytest.raises(ValueError, match=r"another base model.*depth: adapter 3, this ViT 2"):
        dm.load_adapter(tiny_vit(depth=2), tmp_path / "a")
    with pytest.raises(ValueError, match="already adapted"):
        dm.load_adapter(dm.adapt(tiny_vit(), "frozen", bands=S2_7), tmp_path / "a")


def test_another_named_base_model_is_refused(tmp_path):
    vit = dm.load_gfm("dinov2_vits14_imgfocus", weights=None, img_size=28)
    dm.save_adapter(dm.adapt(vit, "norm", bands=S2_7), tmp_path / "a")
    other = dm.load_gfm("dino_mc", weights=None, img_size=32)
    with pytest.raises(ValueError, match=r"base model: adapter 'dinov2_vits14_imgfocus', this ViT "
                       r"'dino_mc'.*load_gfm\('dinov2_vits14_imgfocus'"):
        dm.load_adapter(other, tmp_path / "a")


def test_other_bands_or_statistics_are_refused(tmp_path):
    dm.save_adapter(dm.adapt(tiny_vit(), "deflect", bands=S2_7, band_stats=STATS), tmp_path / "a")
    reordered = [S2_7[1], S2_7[0], *S2_7[2:]]
    with pytest.raises(ValueError, match=r"trained on the bands \['S2_B02', 'S2_B03'"):
        dm.load_adapter(tiny_vit(), tmp_path / "a", bands=reordered)
    other = dict(STATS, S2_B11=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"standardises the bands \['S2_B11'\] with other"):
        dm.load_adapter(tiny_vit(), tmp_path / "a", band_stats=other)
    assert dm.load_adapter(tiny_vit(), tmp_path / "a", bands=S2_7, band_stats=STATS) is not None


def test_missing_or_damaged_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter at"):
        dm.load_adapter(tiny_vit(), tmp_path / "nothing")
    dm.save_adapter(dm.adapt(tiny_vit(), "lora", bands=S2_7), tmp_path / "a")
    (tmp_path / "a" / "adapter.json").write_text("{truncated")
    with pytest.raises(ValueError, match="not valid JSON"):
        dm.load_adapter(tiny_vit(), tmp_path / "a")
    with pytest.raises(ValueError, match="not adapted"):
        dm.save_adapter(tiny_vit(), tmp_path / "b")
