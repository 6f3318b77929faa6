"""The walkthrough helpers used by notebooks 01-03: crops, statistics, the fine-tune, states."""

import pytest
import torch

import deflect_min as dm
from deflect_min.walkthrough import (block_states, centre_crop, describe_weights,
                                     finetune_on_samples, make_vit, rgb_composite,
                                     sample_band_stats)
from tests.helpers import tiny_vit


@pytest.fixture(scope="module")
def samples():
    return dm.load_samples()


def _small(samples, n=6, size=32):
    """A few sample patches, cropped small, so a tiny ViT trains in a fraction of a second."""
    return dm.BigEarthNetSamples(**{**samples.__dict__,
                                    "reflectance": centre_crop(samples.reflectance[:n], size),
                                    "labels": samples.labels[:n],
                                    "patch_ids": samples.patch_ids[:n]})


def test_centre_crop_takes_the_central_pixels():
    x = torch.arange(120 * 120, dtype=torch.float32).reshape(1, 1, 120, 120)
    out = centre_crop(x, 112)
    assert out.shape == (1, 1, 112, 112)
    assert out[0, 0, 0, 0] == x[0, 0, 4, 4] and out[0, 0, -1, -1] == x[0, 0, 115, 115]
    with pytest.raises(ValueError, match="larger"):
        centre_crop(x, 128)


def test_sample_band_stats_cover_every_band(samples):
    stats = sample_band_stats(samples)
    assert list(stats) == samples.band_names
    assert all(0 < m < 1 and s > 0 for m, s in stats.values())


def test_make_vit_is_seeded_and_has_one_logit():
    a, b = make_vit(None, img_size=32, seed=0), make_vit(None, img_size=32, seed=0)
    assert a.num_classes == 1 and a.patch_embed.img_size == (32, 32)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert "RANDOMLY INITIALISED" in describe_weights(a)
    assert "RANDOMLY INITIALISED" in describe_weights(a, short=True)


def test_finetune_is_deterministic_and_moves_only_tuned_parameters(samples):
    small = _small(samples)

    def run():
        model = dm.adapt(tiny_vit(num_classes=1), bands=samples.band_names,
                         band_stats=sample_band_stats(samples), layers=[0, 1])
        frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        losses = finetune_on_samples(model, small, steps=3, batch_size=4, crop=32, lr=1e-2, seed=0)
        return model, frozen, losses

    model, frozen, losses = run()
    _, _, again = run()
    assert len(losses) == 3 and losses == again
    assert not model.training
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    records = dm.trace(model, small.reflectance[:2])
    for r in records:  # trained: the new products are no longer zero, Delta_u != Delta_ref
        assert r["products"]["spectral_to_spectral"].abs().max() > 0
        assert not torch.allclose(r["delta_u"], r["delta_ref"])


def test_finetune_needs_trainable_parameters(samples):
    vit = tiny_vit(num_classes=1).requires_grad_(False)
    with pytest.raises(ValueError, match="adapt it first"):
        finetune_on_samples(vit, _small(samples), steps=1, crop=32)


def test_block_states_are_the_residual_stream(samples):
    model = dm.adapt(tiny_vit(), bands=samples.band_names)
    x = centre_crop(samples.reflectance[:2], 32)
    states = block_states(model, x)
    assert states.shape == (len(model.blocks) + 1, 2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.norm(states[-1])[:, 0], model.forward_features(x)[:, 0])


def test_rgb_composite_is_an_image(samples):
    img = rgb_composite(samples.reflectance[0], samples.band_names)
    assert img.shape == (120, 120, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
