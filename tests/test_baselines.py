"""The competing PEFT methods: LoRA equals HF peft's, the tuned parameters of each method, the
pretrained model at initialisation, frozen tensors that stay frozen, merge, the paper's budget
and clear errors."""

import copy

import pytest
import timm
import torch
from torch import nn

import deflect_min as dm
from deflect_min.baselines import TARGETS, LoRALinear, SLRLinear, SLRPatchAdapter
from deflect_min.budget import S2_10, _gflops
from deflect_min.embedding import SpectralEmbedding
from tests.helpers import S2_7, perturb_new_parameters, reflectance, tiny_vit

RGB_IDX = [2, 1, 0]  # S2_B04, S2_B03, S2_B02 within S2_7
DEPTH = 2
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
ALL_METHODS = ("full", "frozen", "norm", "bitfit", "lora", "slr", "deflect", "deflect+lora")
BASELINES = ("full", "frozen", "norm", "bitfit", "lora", "slr")


def _vit(num_classes=0, **kw):
    return tiny_vit(depth=DEPTH, num_classes=num_classes, **kw)


# ---- our LoRA is HF peft's LoRA --------------------------------------------------------------

@pytest.mark.parametrize("alpha", [None, 32])
def test_lora_equals_hf_peft(alpha):
    peft = pytest.importorskip("peft")
    ours = dm.adapt(_vit().double(), "lora", bands=S2_7, alpha=alpha)
    perturb_new_parameters(ours)  # A and B both nonzero
    ref = peft.inject_adapter_in_model(
        peft.LoraConfig(r=16, lora_alpha=16 if alpha is None else alpha,
                        target_modules=TARGETS.pattern), _vit()).double()
    pairs = []
    with torch.no_grad():
        for name, m in ours.named_modules():
            if isinstance(m, LoRALinear):
                theirs = ref.get_submodule(name)
                theirs.lora_A["default"].weight.copy_(m.lora.A)
                theirs.lora_B["default"].weight.copy_(m.lora.B)
                pairs += [(m.lora.A, theirs.lora_A["default"].weight),
                          (m.lora.B, theirs.lora_B["default"].weight)]
    assert len(pairs) == 2 * 4 * DEPTH and all(a.abs().min() > 0 for a, _ in pairs)
    x = reflectance(2, S2_7, 32).double()
    out, out_ref = ours(x), ref(x[:, RGB_IDX])
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=0)
    (out.square().sum() + out_ref.square().sum()).backward()
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10)


# ---- what each method tunes ------------------------------------------------------------------

def _expected(method, **options):
    plain = [n for n, _ in _vit().named_parameters()]
    enc = {n.replace("patch_embed.", "patch_embed.rgb_embed.") for n in plain}
    norms = {n for n in enc if ".norm1." in n or ".norm2." in n or n.startswith("norm.")}
    blocks = [f"blocks.{i}.{lin}" for i in range(DEPTH) for lin in LINEARS]
    slr = {f"{b}.slr.{p}" for b in blocks
           for p in ("s_in", "s_out", "A.weight", "A.bias", "B.weight", "B.bias")}
    adapter = {f"patch_embed.rgb_embed.proj.adapter.{p}"
               for p in ("s", "down.weight", "down.bias", "up.weight", "up.bias")}
    spectral = {f"patch_embed.spectral.{n}" for n, _ in
                SpectralEmbedding(bands=S2_7, patch_size=8, dim=32).named_parameters()}
    uatt = {f"blocks.0.attn.{m}.{p}" for m in ("U_q", "U_k", "U_v") for p in "AB"}
    uatt |= {"blocks.0.attn.norm_a.weight", "blocks.0.attn.norm_a.bias"}
    lora_uatt = {f"blocks.0.attn.{m}.{p}" for m in ("lora_q", "lora_v") for p in "AB"}
    expected = {
        "full": enc,
        "frozen": set(),
        "norm": norms,
        "bitfit": {n for n in enc if n.endswith(".bias")},
        "lora": {f"{b}.lora.{p}" for b in blocks for p in "AB"},
        "slr": slr | norms | (adapter if options.get("patch_adapter") else set()),
        "deflect": spectral | uatt,
        "deflect+lora": spectral | uatt | lora_uatt,
    }[method]
    if options.get("input") == "inflated":  # the pretrained conv moves into the input adapter
        old = "patch_embed.rgb_embed.proj."
        expected = {n.replace(old, old + "rgb.") if n in (old + "weight", old + "bias") else n
                    for n in expected}
        expected |= {old + "rgb.weight", old + "rgb.bias", old + "extra.weight"}
    return expected


CASES = [(m, {}) for m in ALL_METHODS] + [
    ("slr", dict(patch_adapter=True)), ("frozen", dict(input="inflated")),
    ("bitfit", dict(input="inflated")), ("lora", dict(input="inflated")),
    ("full", dict(input="inflated")),
]


def _adapt(method, options, num_classes=0):
    if method.startswith("deflect"):
        options = dict(layers=[0], **options)
    return dm.adapt(_vit(num_classes=num_classes), method, bands=S2_7, **options)


@pytest.mark.parametrize("method,options", CASES)
def test_trainable_names_are_exactly_the_table(method, options):
    model = _adapt(method, options, num_classes=3)
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in tuned if n.startswith("head.")} == {"head.weight", "head.bias"}
    assert tuned - {"head.weight", "head.bias"} == _expected(method, **options)
    n_tuned, total = dm.count_parameters(model)
    assert total == dm.count_parameters(dm.adapt(_vit(num_classes=3), "frozen", bands=S2_7))[1]
    assert n_tuned == sum(p.numel() for n, p in model.named_parameters()
                          if n in tuned and not n.startswith("head."))
    inflated = options.get("input") == "inflated"
    assert (dm.input_adapter_parameters(model) > 0) == inflated


# ---- the pretrained model at initialisation --------------------------------------------------

@pytest.mark.parametrize("method,options",
                         [c for c in CASES if not c[1].get("patch_adapter")])
def test_zero_initialised_updates_give_the_pretrained_features(method, options):
    vit = _vit().double()
    ref = copy.deepcopy(vit)
    layers = dict(layers=[0]) if method.startswith("deflect") else {}
    model = dm.adapt(vit, method, bands=S2_7, **layers, **options)
    x = reflectance(2, S2_7, 32).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x[:, RGB_IDX]), atol=1e-10, rtol=0)


def test_slr_patch_adapter_is_not_the_pretrained_model_at_init():
    """GDA's conv adapter starts from PyTorch's default (non-zero) initialisation of both convs,
    so at initialisation the patch tokens are Conv_P(x) + Up(Down(x)) (s = 1): the adapted
    model does NOT start from the pretrained features, unlike every other method here."""
    vit = _vit().double()
    ref = copy.deepcopy(vit)
    model = dm.adapt(vit, "slr", bands=S2_7, patch_adapter=True)
    x = reflectance(2, S2_7, 32).double()
    rgb = x[:, RGB_IDX]
    adapter = model.patch_embed.rgb_embed.proj.adapter
    with torch.no_grad():
        tokens, tokens_ref = model.patch_embed(x), ref.patch_embed(rgb)
        up_down = adapter.up(adapter.down(rgb)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens - tokens_ref, up_down, atol=1e-12, rtol=0)
        assert up_down.abs().max() > 1e-3
        assert (model(x) - ref(rgb)).abs().max() > 1e-3


def test_inflated_init_options():
    zeros = dm.adapt(_vit(), "frozen", bands=S2_7, input="inflated")
    repeat = dm.adapt(_vit(), "frozen", bands=S2_7, input="inflated", inflate_init="repeat")
    rand = dm.adapt(_vit(), "frozen", bands=S2_7, input="inflated", inflate_init="random")
    w_rgb = repeat.patch_embed.rgb_embed.proj.rgb.weight
    assert torch.equal(repeat.patch_embed.rgb_embed.proj.extra.weight,
                       w_rgb[:, [0, 1, 2, 0]])  # 7 bands: 4 beyond RGB, kernels cycled
    assert zeros.patch_embed.rgb_embed.proj.extra.weight.abs().max() == 0
    assert rand.patch_embed.rgb_embed.proj.extra.weight.abs().min() > 0
    assert dm.input_adapter_parameters(zeros) == 32 * 7 * 8 * 8 + 32


# ---- one optimiser step: frozen tensors stay bit-identical -----------------------------------

@pytest.mark.parametrize("method,options", CASES)
def test_one_step_leaves_frozen_tensors_bit_identical(method, options):
    model = _adapt(method, options, num_classes=3).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.05)
    x, y = reflectance(4, S2_7, 32), torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in frozen)
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen tensor {n} changed"


# ---- merge -----------------------------------------------------------------------------------

MERGE_CASES = [
    ("lora", {}), ("lora", dict(rank=4, alpha=8)), ("lora", dict(input="inflated")),
    ("slr", {}), ("slr", dict(patch_adapter=True)), ("slr", dict(rank=8, input="inflated")),
    ("deflect+lora", dict(deflect=False)),
]


@pytest.mark.parametrize("method,options", MERGE_CASES)
def test_merged_outputs_equal_unmerged(method, options):
    model = dm.adapt(_vit().double(), method, bands=S2_7, **options)
    perturb_new_parameters(model)
    x = reflectance(2, S2_7, 32).double()
    with torch.no_grad():
        before = model(x)
        merged = dm.merge(model)
        after = merged(x)
    assert merged is model
    assert (after - before).abs().max() < 1e-10
    assert not any(isinstance(m, (LoRALinear, SLRLinear)) for m in model.modules())
    assert all(getattr(m, "lora_q", None) is None for m in model.modules())
    assert isinstance(model.blocks[0].attn.qkv if method != "deflect+lora"
                      else model.blocks[0].attn.attn.qkv, nn.Linear)
    if options.get("patch_adapter"):  # Up(Down(.)) folded into the 16 x 16 conv
        assert not any(isinstance(m, SLRPatchAdapter) for m in model.modules())


def test_merge_keeps_uatt_lora_with_deflection():
    """With deflection the reference pass needs the pretrained W_Q, W_V: nothing is folded."""
    model = dm.adapt(_vit().double(), "deflect+lora", bands=S2_7)
    perturb_new_parameters(model)
    x = reflectance(2, S2_7, 32).double()
    with torch.no_grad():
        before = model(x)
        assert torch.equal(dm.merge(model)(x), before)
    assert model.blocks[0].attn.lora_q is not None


# ---- the paper's budget (Table 1, Scale-MAE ViT-L/16) on the meta device ---------------------

def test_vit_large_percentages_land_on_the_paper_column():
    table = dm.budget(models=("vit_large_patch16_224",),
                      methods=("frozen", "norm", "bitfit", "lora", "slr", "deflect"), flops=False)
    pct = dict(zip(table["method"], table["tuned_pct"]))
    assert (table["total"] == 303_301_632).all() and (table["input_adapter"] == 0).all()
    paper = {"frozen": (0.0, 0.0), "norm": (0.03, 0.01), "bitfit": (0.09, 0.02),
             "lora": (2.1, 0.15), "slr": (2.2, 0.15), "deflect": (0.2, 0.03)}
    for method, (value, tol) in paper.items():
        assert abs(pct[method] - value) <= tol, (method, pct[method])
    # the arithmetic of the book's budget table (2.311 % for SLR is 2.3105 % rounded twice)
    arithmetic = {"norm": 0.0331, "bitfit": 0.0898, "lora": 2.0743, "slr": 2.3105}
    assert {m: round(pct[m], 4) for m in arithmetic} == arithmetic


def test_slr_patch_adapter_budget_and_inflated_input_column():
    with torch.device("meta"):
        vit = dm.adapt(timm.create_model("vit_large_patch16_224", num_classes=0), "slr",
                       bands=list(S2_10), patch_adapter=True)
    tuned, total = dm.count_parameters(vit)
    assert round(100 * tuned / total, 2) == 2.40
    table = dm.budget(models=("vit_large_patch16_224",), methods=("norm",), input="inflated",
                      flops=False)
    assert table["tuned"].item() == 100_352  # the paper-comparable column stays clean
    assert round(100 * table["input_adapter"].item() / total, 2) == 0.86  # 10 bands: 0.865 %


def test_flops_count_both_attention_passes_of_uatt():
    """On the meta device SDPA decomposes into bmm, which FlopCounterMode counts."""
    n, d = 17, 32  # 16 patches + CLS, width 32
    gflops = {}
    for method in ("frozen", "deflect"):
        with torch.device("meta"):
            model = dm.adapt(_vit(), method, bands=S2_7, **(
                dict(layers=[0], deflect=True) if method == "deflect" else {}))
            gflops[method] = _gflops(model, torch.empty(1, 7, 32, 32))
    attention = 2 * 2 * n * n * d / 1e9  # q k^T and attn v, 2 FLOPs per multiply-add
    assert gflops["frozen"] > DEPTH * attention
    assert gflops["deflect"] - gflops["frozen"] > attention  # the second (reference) pass
    with pytest.raises(ValueError, match="meta device"):
        _gflops(dm.adapt(_vit(), "frozen", bands=S2_7), reflectance(1, S2_7, 32))


# ---- bad input ---------------------------------------------------------------------------------

def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'loar'.*'bitfit'.*'lora'.*'norm'.*'slr'"):
        dm.adapt(_vit(), "loar", bands=S2_7)
    with pytest.raises(ValueError, match=r"unknown methods \['loar'\].*valid methods"):
        dm.budget(methods=("loar",), flops=False)


@pytest.mark.parametrize("method", ["lora", "slr"])
@pytest.mark.parametrize("rank", [0, -4, 2.5, "8"])
def test_bad_rank(method, rank):
    with pytest.raises(ValueError, match=r"rank must be a positive integer \(e.g. 4, 8 or 16\)"):
        dm.adapt(_vit(), method, bands=S2_7, rank=rank)


def test_bad_input_options():
    with pytest.raises(ValueError, match=r"input must be one of \['rgb', 'inflated'\]"):
        dm.adapt(_vit(), "norm", bands=S2_7, input="all")
    with pytest.raises(ValueError, match=r"inflate_init must be one of \['zeros', 'repeat', "):
        dm.adapt(_vit(), "full", bands=S2_7, input="inflated", inflate_init="copy")
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        dm.adapt(_vit(), "lora", bands=S2_7, alpha=0)
    with pytest.raises(ValueError, match="patch size divisible by 4"):
        dm.adapt(tiny_vit(img_size=36, patch_size=6, depth=1), "slr", bands=S2_7,
                 patch_adapter=True)
