"""The methods layer: one registry, typed configs that validate and round-trip through JSON,
and ``adapt`` accepting a name with keywords or a config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import deflect_min as dm
from deflect_min.methods import METHODS, MethodConfig, config_of
from tests.helpers import S2_7, perturb_new_parameters, reflectance, tiny_vit

NON_DEFAULT = {  # one changed option per method, so the round trip is not of defaults only
    "full": dict(input="inflated"), "frozen": dict(inflate_init="repeat"),
    "norm": dict(input="inflated"), "bitfit": dict(input="inflated"),
    "lora": dict(rank=4, alpha=8.0), "slr": dict(rank=4, patch_adapter=True),
    "deflect": dict(layers=[1, 0], rank=2, stream="single", indices=["NDVI", "NDWI"]),
    "deflect+lora": dict(layers=[0], lora_rank=2, lora_alpha=4.0, deflect=False),
}


def test_registry_lists_every_method_with_its_config():
    assert list(METHODS) == ["full", "frozen", "norm", "bitfit", "lora", "slr", "deflect",
                             "deflect+lora"]
    assert list(dm.METHODS) == list(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and issubclass(method.config, MethodConfig)
        assert dataclasses.is_dataclass(method.config) and method.summary


@pytest.mark.parametrize("name", list(METHODS))
def test_config_round_trips_through_json(name):
    config = config_of(name, **NON_DEFAULT[name])
    text = json.dumps(config.to_dict())
    back = type(config).from_dict(json.loads(text))
    assert back == config and json.loads(text)["method"] == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.input = "x"  # type: ignore[misc]


def test_normalised_values():
    config = dm.DeflectConfig(layers=[3, 1, 1], indices=["NDVI"])
    assert config.layers == (1, 3) and config.indices == ("NDVI",)


def test_unknown_option_lists_the_methods_options():
    with pytest.raises(ValueError, match=r"method 'lora' has no option 'bogus'; its options "
                       r"\(with defaults\) are: input='rgb', inflate_init='zeros', rank=16, "
                       r"alpha=None"):
        dm.adapt(tiny_vit(), "lora", bands=S2_7, bogus=1)
    with pytest.raises(ValueError, match="method 'lora' has no option 'stream'"):
        dm.adapt(tiny_vit(), "lora", bands=S2_7, stream="single")


@pytest.mark.parametrize("config, message", [
    (lambda: dm.LoraConfig(rank=0), r"lora: rank must be a positive integer"),
    (lambda: dm.LoraConfig(alpha=-1), r"lora: alpha must be a positive number or None"),
    (lambda: dm.NormConfig(input="all"), r"norm: input must be one of \['rgb', 'inflated'\]"),
    (lambda: dm.DeflectConfig(stream="triple"), r"stream must be one of \['dual', 'single'\]"),
    (lambda: dm.DeflectConfig(layers=[]), r"layers must be a non-empty list"),
    (lambda: dm.DeflectConfig(eps_rel=0), r"eps_rel must be a number in \(0, 1\)"),
    (lambda: dm.DeflectLoraConfig(lora_rank=0), r"for DEFLECT without LoRA use method='deflect'"),
    (lambda: dm.SLRConfig(patch_adapter="yes"), r"patch_adapter must be True or False"),
    (lambda: dm.LoraConfig.from_dict({"method": "slr"}), r"this is a 'slr' config"),
])
def test_invalid_configs_name_the_option(config, message):
    with pytest.raises(ValueError, match=message):
        config()


@pytest.mark.parametrize("name", list(METHODS))
def test_config_and_keywords_build_the_same_model(name):
    options = dict(NON_DEFAULT[name])
    a = dm.adapt(tiny_vit(num_classes=2), name, bands=S2_7, **options)
    b = dm.adapt(tiny_vit(num_classes=2), config_of(name, **options), bands=S2_7)
    assert a.adaptation["config"] == b.adaptation["config"] == config_of(name, **options).to_dict()
    perturb_new_parameters(a)
    perturb_new_parameters(b)
    x = reflectance(2, S2_7, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_config_and_keywords_together_are_refused():
    with pytest.raises(ValueError, match="in its config or as keywords, not both"):
        dm.adapt(tiny_vit(), dm.LoraConfig(rank=4), bands=S2_7, rank=8)
