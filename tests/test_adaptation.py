"""The foundation's contract: equivalence at initialisation, fused = explicit, deflection
invariant, gradients, the spectral path carrying information, and clear errors."""

import copy

import pytest
import timm
import torch
from torch import nn

import deflect_min as dm
from deflect_min.attention import UntangledAttention
from deflect_min.deflection import deflect
from deflect_min.embedding import SpectralEmbedding
from tests.helpers import BAND_SETS, S2_7, perturb_new_parameters, reflectance, tiny_vit

RGB_IDX = [2, 1, 0]  # S2_B04, S2_B03, S2_B02 within S2_7


def _timm(name, img_size):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size).eval()


@pytest.mark.parametrize("stream", ["dual", "single"])
@pytest.mark.parametrize("name,img", [("vit_small_patch16_224", 64), ("vit_base_patch16_224", 32),
                                      ("vit_small_patch8_224", 32)])
def test_equals_pretrained_at_init(name, img, stream):
    vit = _timm(name, img)
    ref = copy.deepcopy(vit)
    adapted = dm.adapt(vit, bands=S2_7, stream=stream)
    x = reflectance(2, S2_7, img)
    with torch.no_grad():
        diff = (adapted(x) - ref(x[:, RGB_IDX])).abs().max()
    assert diff < 1e-5


def test_equals_pretrained_on_standardised_rgb():
    vit = tiny_vit()
    ref = copy.deepcopy(vit)
    stats = {b: (0.1 + 0.01 * i, 0.05 + 0.01 * i) for i, b in enumerate(S2_7)}
    adapted = dm.adapt(vit, bands=S2_7, band_stats=stats)
    x = reflectance(2, S2_7, 32)
    mean = torch.tensor([stats[S2_7[i]][0] for i in RGB_IDX]).view(1, 3, 1, 1)
    std = torch.tensor([stats[S2_7[i]][1] for i in RGB_IDX]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), ref((x[:, RGB_IDX] - mean) / std), atol=1e-5, rtol=0)


def test_torchgeo_scalemae_is_accepted():
    from torchgeo.models import ScaleMAE

    torch.manual_seed(0)
    vit = ScaleMAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                   num_classes=0).eval()
    ref = copy.deepcopy(vit)
    adapted = dm.adapt(vit, bands=S2_7)
    x = reflectance(2, S2_7, 32)
    with torch.no_grad():
        assert (adapted(x) - ref(x[:, RGB_IDX])).abs().max() < 1e-5


@pytest.mark.parametrize("method,stream", [("deflect", "dual"), ("deflect", "single"),
                                           ("deflect+lora", "dual")])
def test_fused_equals_explicit_four_products(method, stream):
    vit = tiny_vit().double()
    adapted = dm.adapt(vit, method, bands=S2_7, stream=stream, layers=[0, 2])
    perturb_new_parameters(adapted)
    x = reflectance(2, S2_7, 32).double()
    uatts = [m for m in adapted.modules() if isinstance(m, UntangledAttention)]
    with torch.no_grad():
        fused = adapted(x)
        for m in uatts:
            m.explicit = True
        explicit = adapted(x)
    assert (fused - explicit).abs().max() < 1e-10
    records = dm.trace(adapted, x)
    for r in records:  # the four products add up to the logits
        assert (sum(r["products"].values()) - r["logits"]).abs().max() < 1e-10


def test_new_products_are_zero_at_init_and_not_after_training_steps():
    adapted = dm.adapt(tiny_vit(), bands=S2_7)
    x = reflectance(2, S2_7, 32)
    r = dm.trace(adapted, x)[0]
    for k in ("rgb_to_spectral", "spectral_to_rgb", "spectral_to_spectral"):
        assert r["products"][k].abs().max() == 0
    perturb_new_parameters(adapted)
    r = dm.trace(adapted, x)[0]
    for k in ("rgb_to_spectral", "spectral_to_rgb", "spectral_to_spectral"):
        assert r["products"][k].abs().max() > 0


@pytest.mark.parametrize("stream", ["dual", "single"])
def test_deflected_norm_equals_reference_norm(stream):
    adapted = dm.adapt(tiny_vit(), "deflect+lora", bands=BAND_SETS["so2sat_s2_10"], stream=stream)
    perturb_new_parameters(adapted)
    x = reflectance(2, BAND_SETS["so2sat_s2_10"], 32)
    records = dm.trace(adapted, x)
    assert [r["block"] for r in records] == dm.default_layers(3)
    for r in records:
        assert not torch.allclose(r["delta_u"], r["delta_ref"])  # the update really changed
        torch.testing.assert_close(r["delta"].norm(dim=-1), r["delta_ref"].norm(dim=-1),
                                   rtol=1e-5, atol=1e-7)
        cos = nn.functional.cosine_similarity(r["delta"], r["delta_u"], dim=-1)
        assert (cos > 1 - 1e-5).all()  # direction of delta_u kept


def test_zero_untangled_displacement_is_finite_with_bounded_gradient():
    delta_ref = torch.randn(2, 5, 8, dtype=torch.float64)
    delta_u = torch.zeros(2, 5, 8, dtype=torch.float64, requires_grad=True)
    out = deflect(delta_u, delta_ref, eps_rel=1e-4)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out == 0).all()
    assert torch.isfinite(delta_u.grad).all() and delta_u.grad.abs().max() <= 1e4 + 1e-6


def test_deflection_norms_in_float32_under_autocast():
    delta_u = torch.randn(2, 4, 16).bfloat16()
    delta_ref = torch.randn(2, 4, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deflect(delta_u, delta_ref)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().norm(dim=-1), delta_ref.float().norm(dim=-1),
                               rtol=1e-2, atol=1e-2)


def test_x_A_is_invariant_to_pixel_permutations_inside_patches():
    torch.manual_seed(0)
    bands = BAND_SETS["mados_s2_11"]
    emb = SpectralEmbedding(bands=bands, patch_size=4, dim=16).double()
    x = reflectance(1, bands, 8).double()
    perm = torch.randperm(16)
    shuffled = x.clone()
    for i in range(2):
        for j in range(2):  # shuffle pixels within each 4x4 patch
            patch = x[..., 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(1, len(bands), 16)
            shuffled[..., 4 * i:4 * i + 4, 4 * j:4 * j + 4] = patch[..., perm].reshape(1, -1, 4, 4)
    torch.testing.assert_close(emb(shuffled, shuffled), emb(x, x))
    moved = torch.roll(x, shifts=4, dims=-1)  # moving whole patches does move x_A
    assert not torch.allclose(emb(moved, moved), emb(x, x))


def test_zero_pixels_give_finite_x_A_and_gradients():
    adapted = dm.adapt(tiny_vit(), bands=S2_7)
    x = reflectance(2, S2_7, 32)
    x[:, :, :8, :] = 0.0
    out = adapted(x)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in adapted.parameters() if p.grad is not None)


def test_gradcheck_float64():
    """Analytic gradients of uAtt + deflection and of the x_A branch match finite differences."""
    bands = ["S2_B02", "S2_B03", "S2_B04", "S2_B08"]
    vit = tiny_vit(img_size=8, patch_size=4, dim=8, depth=1, heads=2).double()
    adapted = dm.adapt(vit, "deflect+lora", bands=bands, rank=2, lora_rank=2)
    perturb_new_parameters(adapted)
    uatt = adapted.blocks[0].attn
    names = [n for n, p in uatt.named_parameters() if p.requires_grad]
    x = reflectance(1, bands, 8).double()
    adapted(x)  # fills the side stream x_A
    tokens = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def attention(h, *params):
        return torch.func.functional_call(uatt, dict(zip(names, params)), (h,))

    params = [dict(uatt.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(attention, (tokens, *params), eps=1e-6, atol=1e-6)
    spectral = adapted.patch_embed.spectral
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: spectral(r, r), (xg,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("method,stream", [("deflect", "dual"), ("deflect", "single"),
                                           ("deflect+lora", "dual")])
def test_only_new_parameters_train_and_all_of_them_move(method, stream):
    # float64, so that the first, tiny moves of the A factors (their gradient is B^T(...),
    # and B starts at zero) are not lost to float32 rounding.
    vit = tiny_vit(num_classes=3).double()
    adapted = dm.adapt(vit, method, bands=S2_7, stream=stream)
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    assert all(not n.startswith("head") for n in frozen)
    opt = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.05)
    x, y = reflectance(4, S2_7, 32).double(), torch.tensor([0, 1, 2, 0])
    for step in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(adapted.train()(x), y).backward()
        if step == 0:
            assert all(p.grad is None for n, p in adapted.named_parameters() if n in frozen)
        opt.step()
    for n, p in adapted.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"pretrained tensor {n} changed"
    unmoved = [n for n, p in adapted.named_parameters() if n in start and torch.equal(p, start[n])]
    assert not unmoved, f"never-trained parameters: {unmoved}"


def _spectral_task(n, size, seed):
    """Two classes with identical RGB statistics that differ only in NIR and SWIR."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.05 + 0.3 * torch.rand(n, len(S2_7), size, size, generator=g)
    nir_swir = [4, 5, 6]  # S2_B08, S2_B11, S2_B12
    x[:, nir_swir] = torch.where(y.view(-1, 1, 1, 1) == 1, 0.45, 0.15) + 0.05 * torch.rand(
        n, 3, size, size, generator=g)
    return x, y


@pytest.mark.parametrize("method,learns", [("deflect", True), ("frozen", False)])
def test_spectral_path_carries_the_label(method, learns):
    torch.manual_seed(0)
    model = dm.adapt(tiny_vit(img_size=16, num_classes=2, depth=2), method, bands=S2_7)
    x, y = _spectral_task(64, 16, seed=0)
    xt, yt = _spectral_task(64, 16, seed=1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model.train()(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval()(xt).argmax(-1) == yt).float().mean().item()
    assert (acc >= 0.95) if learns else (acc <= 0.75), acc


def test_peft_state_dict_round_trip():
    a = dm.adapt(tiny_vit(num_classes=3), "deflect+lora", bands=S2_7)
    perturb_new_parameters(a)
    sd = dm.peft_state_dict(a)
    assert all(not n.startswith("blocks.0.attn.attn.") for n in sd)
    b = dm.adapt(tiny_vit(num_classes=3), "deflect+lora", bands=S2_7)
    x = reflectance(2, S2_7, 32)
    assert not torch.allclose(a(x), b(x))
    dm.load_peft_state_dict(b, sd)
    assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="does not fit the model"):
        dm.load_peft_state_dict(dm.adapt(tiny_vit(num_classes=3), bands=S2_7), sd)


def test_budget_on_vit_large_is_0_2_percent():
    with torch.device("meta"):
        vit = timm.create_model("vit_large_patch16_224", num_classes=0)
        dm.adapt(vit, bands=BAND_SETS["so2sat_s2_10"])
    tuned, total = dm.count_parameters(vit)
    assert total == 303_301_632
    assert abs(100 * tuned / total - 0.2) <= 0.03


def test_forward_intermediates_and_reset_classifier_on_C_bands():
    a = dm.adapt(tiny_vit(), bands=BAND_SETS["mados_s2_11"])
    x = reflectance(2, BAND_SETS["mados_s2_11"], 32)
    feats = a.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 4, 4)] * 2
    a.reset_classifier(5)
    assert a(x).shape == (2, 5) and a.head.weight.requires_grad
    assert a.forward_features(x).shape == (2, 17, 32)


def test_bf16_autocast_forward_backward_on_cpu():
    a = dm.adapt(tiny_vit(num_classes=2), bands=S2_7)
    perturb_new_parameters(a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a(reflectance(2, S2_7, 32))
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in a.parameters() if p.grad is not None)


# ---- bad input: every error says what is wrong and what to do -----------------------------

def test_wrong_number_of_bands():
    a = dm.adapt(tiny_vit(), bands=S2_7)
    with pytest.raises(ValueError, match="adapted to 7 bands.*input has 3 channels"):
        a(torch.rand(1, 3, 32, 32))


def test_rgb_bands_missing_from_bands():
    with pytest.raises(ValueError, match="no band with role"):
        dm.adapt(tiny_vit(), bands=["S2_B05", "S2_B08", "S2_B11"])
    with pytest.raises(ValueError, match="must be three of the input bands"):
        dm.adapt(tiny_vit(), bands=S2_7, rgb_bands=("S2_B04", "S2_B03", "S2_B01"))


def test_image_size_not_a_multiple_of_the_patch():
    a = dm.adapt(tiny_vit(), bands=S2_7)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        a(torch.rand(1, 7, 30, 30))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_input(bad):
    a = dm.adapt(tiny_vit(), bands=S2_7)
    x = reflectance(1, S2_7, 32)
    x[0, 3, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        a(x)


def test_not_a_vit_and_already_adapted():
    with pytest.raises(ValueError, match="expects a timm VisionTransformer"):
        dm.adapt(nn.Linear(3, 3), bands=S2_7)
    a = dm.adapt(tiny_vit(), bands=S2_7)
    with pytest.raises(ValueError, match="already adapted"):
        dm.adapt(a, bands=S2_7)


def test_unknown_band_method_rank_layers_stream():
    with pytest.raises(ValueError, match="unknown band"):
        dm.adapt(tiny_vit(), bands=["B02", "B03", "B04"])
    with pytest.raises(ValueError, match="unknown method 'delfect'.*valid methods"):
        dm.adapt(tiny_vit(), "delfect", bands=S2_7)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        dm.adapt(tiny_vit(), bands=S2_7, rank=0)
    with pytest.raises(ValueError, match=r"layers must be .* \[0, 2\]"):
        dm.adapt(tiny_vit(), bands=S2_7, layers=[5])
    with pytest.raises(ValueError, match="stream must be"):
        dm.adapt(tiny_vit(), bands=S2_7, stream="triple")


def test_full_does_not_tune_scalemae_unused_pos_embed():
    from torchgeo.models import ScaleMAE

    vit = ScaleMAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0)
    adapted = dm.adapt(vit, "full", bands=S2_7)
    assert not adapted.pos_embed.requires_grad
    tuned, total = dm.count_parameters(adapted)
    assert tuned == total == sum(p.numel() for n, p in adapted.named_parameters()
                                 if n != "pos_embed")


def test_rgb_order_follows_the_gfm_card():
    from types import SimpleNamespace

    vit = tiny_vit()
    ref = copy.deepcopy(vit)
    vit.gfm_card = SimpleNamespace(rgb_roles=("B", "G", "R"))  # a BGR-pretrained model
    adapted = dm.adapt(vit, bands=S2_7)
    assert adapted.adaptation["rgb_bands"] == ("S2_B02", "S2_B03", "S2_B04")
    x = reflectance(2, S2_7, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), ref(x[:, [0, 1, 2]]), atol=1e-5, rtol=0)
