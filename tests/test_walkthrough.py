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


# ---- notebooks 01-02: token maps, read-outs, attention maps --------------------------------

from einops import rearrange  # noqa: E402

from deflect_min.walkthrough import (attention_maps, logit_shares, principal_components,  # noqa: E402
                                     ridge_readout, stretch, token_means)


def test_token_means_average_each_patch():
    maps = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = token_means(maps, 2)
    assert out.shape == (2, 4, 1)
    assert out[0, 0, 0] == maps[0, 0, :2, :2].mean() and out[1, 3, 0] == maps[1, 0, 2:, 2:].mean()


def test_principal_components_find_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    t = torch.randn(3, 50, 1, generator=g) * 10 * direction + 0.1 * torch.randn(3, 50, 16, generator=g)
    scores, explained = principal_components(t, k=2)
    assert scores.shape == (3, 50, 2) and explained.shape == (2,)
    assert explained[0] > 0.95 and explained[0] >= explained[1]
    again, _ = principal_components(-t, k=2)  # the sign convention is fixed by the loadings
    assert torch.allclose(again, -scores, atol=1e-4) or torch.allclose(again, scores, atol=1e-4)
    s = stretch(scores)
    assert s.min() >= 0 and s.max() <= 1


def test_ridge_readout_recovers_a_linear_target_and_not_noise():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(10, 20, 5, generator=g)
    y = f @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    pred, r2 = ridge_readout(f, y, alpha=1e-3)
    assert pred.shape == y.shape and r2 > 0.999
    _, r2_noise = ridge_readout(f, torch.randn(10, 20, generator=g))
    assert r2_noise < 0.1
    with pytest.raises(ValueError, match="folds"):
        ridge_readout(f, y, folds=11)


def test_attention_maps_reproduce_timm_attention(samples):
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    maps = attention_maps(vit, x, blocks=[0, 2])
    assert maps.shape == (2, 2, 4, 17, 17)
    assert torch.allclose(maps.sum(dim=-1), torch.ones(2, 2, 4, 17))
    state = block_states(vit, x)[2]
    block = vit.blocks[2]
    h = block.norm1(state)
    v = rearrange(block.attn.qkv(h), "b n (three h d) -> three b h n d", three=3, h=4)[2]
    out = block.attn.proj(rearrange(maps[1] @ v, "b h n d -> b n (h d)"))
    with torch.no_grad():
        assert torch.allclose(out, block.attn(h), atol=1e-5)
    # on an adapted model, the frozen attention of an adapted block is read the same way
    model = dm.adapt(tiny_vit(), bands=samples.band_names, layers=[0])
    xs = centre_crop(samples.reflectance[:2], 32)
    rgb = dm.adapt(tiny_vit(), bands=samples.band_names, method="frozen")
    assert torch.allclose(attention_maps(model, xs, [0, 1]), attention_maps(rgb, xs, [0, 1]),
                          atol=1e-5)


def test_logit_shares_sum_to_one_and_start_with_rgb_only(samples):
    model = dm.adapt(tiny_vit(), bands=samples.band_names, layers=[0, 1])
    shares = logit_shares(dm.trace(model, centre_crop(samples.reflectance[:2], 32)))
    assert shares.shape == (2, 4)
    assert torch.allclose(shares.sum(dim=1), torch.ones(2))
    assert torch.equal(shares[:, 0], torch.ones(2))  # new factors zero at initialisation
