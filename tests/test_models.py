"""load_gfm on fake official checkpoints, the task heads and build_model (no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from deflect_min.build import GFMClassifier, GFMSegmenter, build_model
from deflect_min.heads import ClassificationHead, Feature2Pyramid, UPerNet
from deflect_min.data import _download
from deflect_min.models import GFM_NAMES, PostNormBlock, cards, gfm_cache_path, load_gfm

_spec = importlib.util.spec_from_file_location(
    "make_checkpoints", Path(__file__).parent / "data" / "gfm" / "make_checkpoints.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

TINY = dict(depth=2, embed_dim=64, num_heads=2)
HEADS = 2


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


# ---------------------------------------------------------------------------------------------
# Fake official checkpoints load, and give the source network's features
# ---------------------------------------------------------------------------------------------


def test_scalemae_fake_checkpoint_features(tmp_path):
    from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_with_resolution

    c = mk.canonical_vit(grid=14)
    path = mk.write_scalemae(tmp_path / "scalemae.pth", c)
    model = load_gfm("scalemae", path, _arch_overrides=TINY, res=2.0).eval()
    x = torch.rand(2, 3, 224, 224)
    pos = get_2d_sincos_pos_embed_with_resolution(64, 14, torch.tensor([2.0]), cls_token=True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x),
                                   mk.reference_forward(c, x, heads=HEADS, pos_embed=pos),
                                   atol=2e-5, rtol=0)
        model.res = 1.0  # the GSD-aware encoding really reads res
        assert (model.forward_features(x) - mk.reference_forward(c, x, heads=HEADS, pos_embed=pos)
                ).abs().max() > 1e-3
    # the stored table is unused: frozen, and declared so for adapt's "full"
    assert not model.pos_embed.requires_grad
    assert model.unused_parameters == ("pos_embed",)
    card = model.gfm_card
    assert card.pretrained and card.licence == "CC-BY-NC-4.0" and card.rgb_roles == ("R", "G", "B")
    assert card.checksum == "sha256:386989c9cf349a5045c2ac76f7d0225ae3a54b2a2c158fa87e5df5103e5d9ed9"


@pytest.mark.parametrize("variant", ["xformers", "xformers-0.0.11", "timm"])
def test_cross_scale_mae_fake_checkpoint_features(tmp_path, variant):
    c = mk.canonical_vit(grid=8)  # pretrained at 128 px
    path = mk.write_cross_scale_mae(tmp_path / f"xsmae_{variant}.pth", c, variant=variant)
    model = load_gfm("cross_scale_mae_base", path, img_size=128, _arch_overrides=TINY).eval()
    post = variant != "timm"
    assert isinstance(model.blocks[0], PostNormBlock) == post
    x = torch.rand(2, 3, 128, 128)
    ref = mk.reference_forward(c, x, heads=HEADS, post_norm=post, block_eps=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ref, atol=2e-5, rtol=0)
    assert ("post-norm" in model.gfm_card.weights) == post


def test_cross_scale_mae_pos_embed_interpolated_to_224(tmp_path):
    c = mk.canonical_vit(grid=8)
    path = mk.write_cross_scale_mae(tmp_path / "xsmae.pth", c)
    model = load_gfm("cross_scale_mae_large", path, img_size=224, _arch_overrides=TINY).eval()
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 64)
    torch.testing.assert_close(model.pos_embed[:, :1], c["pos_embed"][:, :1])  # CLS slot kept
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 64)


def test_dino_mc_fake_checkpoint_uses_teacher(tmp_path):
    c = mk.canonical_vit(patch=8, grid=28)
    path = mk.write_dino_mc(tmp_path / "dino_mc.pth", c)
    model = load_gfm("dino_mc", path, _arch_overrides=TINY).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x),
                                   mk.reference_forward(c, x, heads=HEADS), atol=2e-5, rtol=0)
    assert model.gfm_card.patch_size == 8 and model.gfm_card.licence == "MIT"


def test_dino_mc_patch_size_read_from_checkpoint(tmp_path):
    c = mk.canonical_vit(patch=16, grid=14)  # the README's "ViT-S/16"
    path = mk.write_dino_mc(tmp_path / "dino_mc16.pth", c)
    model = load_gfm("dino_mc", path, _arch_overrides=TINY).eval()
    assert model.gfm_card.patch_size == 16 and model.gfm_card.timm_arch == "vit_small_patch16_224"
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x),
                                   mk.reference_forward(c, x, heads=HEADS), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", GFM_NAMES)
def test_random_init_real_architectures_on_meta(name):
    with torch.device("meta"):  # real shapes, no allocation
        model = load_gfm(name, weights=None)
    card = model.gfm_card
    assert not card.pretrained and "random" in card.weights
    assert isinstance(model.head, nn.Identity)  # num_classes=0
    expected = {"scalemae": (1024, 24, 16), "cross_scale_mae_base": (768, 12, 16),
                "cross_scale_mae_large": (1024, 24, 16), "dino_mc": (384, 12, 8),
                "dinov2_vits14_imgfocus": (384, 12, 14)}[name]
    assert (card.embed_dim, card.depth, card.patch_size) == expected
    assert len(card.default_taps) == 4 and max(card.default_taps) == card.depth - 1


# ---------------------------------------------------------------------------------------------
# Downloads (monkeypatched), cache and checksums
# ---------------------------------------------------------------------------------------------


def _fake_gdown(src: Path, calls: list):
    def download(id=None, output=None, quiet=False, **kw):  # noqa: A002 - gdown's signature
        calls.append(id)
        shutil.copyfile(src, output)
        return output
    return download


def test_gdown_download_cached_and_md5_checked(tmp_path, torch_home, monkeypatch):
    import gdown

    src = mk.write_cross_scale_mae(tmp_path / "fake.pth", mk.canonical_vit(grid=8))
    calls: list = []
    monkeypatch.setattr(gdown, "download", _fake_gdown(src, calls))
    good = _md5(src)
    model = load_gfm("cross_scale_mae_base", "download", img_size=128, md5=good,
                     _arch_overrides=TINY)
    cached = gfm_cache_path("cross_scale_mae_base")
    assert cached.is_file() and str(cached).startswith(str(torch_home))
    assert calls == [cards._SPECS["cross_scale_mae_base"].gdrive_id]
    assert model.gfm_card.pretrained
    load_gfm("cross_scale_mae_base", "download", img_size=128, md5=good, _arch_overrides=TINY)
    assert len(calls) == 1  # second call reads the cache

    # a corrupted cached file is rejected
    with open(cached, "ab") as f:
        f.write(b"garbage")
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        load_gfm("cross_scale_mae_base", "download", img_size=128, md5=good, _arch_overrides=TINY)


def test_published_md5_rejects_other_file(tmp_path, torch_home, monkeypatch):
    import gdown

    src = mk.write_cross_scale_mae(tmp_path / "fake.pth", mk.canonical_vit(grid=8))
    monkeypatch.setattr(gdown, "download", _fake_gdown(src, []))
    with pytest.raises(RuntimeError, match="0c33995da85c112d9602f89d5b186bbc"):
        load_gfm("cross_scale_mae_base", "download", _arch_overrides=TINY)
    cached = gfm_cache_path("cross_scale_mae_base")
    assert not cached.exists() and not cached.with_name(cached.name + ".part").exists()


def test_failed_drive_download_explains_manual_placement(torch_home, monkeypatch):
    import gdown

    def fail(**kw):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(gdown, "download", fail)
    with pytest.raises(RuntimeError) as e:
        load_gfm("dino_mc", "download")
    msg = str(e.value)
    assert "by hand" in msg and str(gfm_cache_path("dino_mc")) in msg and "TORCH_HOME" in msg
    assert "18RqKqZYzigOjwbyNzLsys8bmwqxrNhyt" in msg


#: Scale-MAE's URL in each torchgeo our users run (0.8.x on Python 3.11: torchgeo
#: models/scale_mae.py of the 0.8.1 wheel; 0.10.x on Colab's 3.12: line 192 of the 0.10.1 wheel).
SCALEMAE_URLS = {
    "0.8": "https://hf.co/isaaccorley/vit_large_patch16_224_fmow_rgb_scalemae/resolve/"
           "9dc7f569424baeb780698352cf6e87638c882123/"
           "vit_large_patch16_224_fmow_rgb_scalemae-98ed9821.pth",
    "0.10": "https://hf.co/isaaccorley/vit_large_patch16_224_fmow_rgb_scalemae/resolve/"
            "75650aaca720ef9c6638d16f5b4375f0022c56c9/"
            "vit_large_patch16_224_fmow_rgb_scalemae-386989c9.pth",
}


@pytest.mark.parametrize("torchgeo", list(SCALEMAE_URLS))
def test_scalemae_download_under_each_torchgeo_url(torchgeo, tmp_path, torch_home, monkeypatch):
    import hashlib

    from deflect_min.models import cards as models  # the registry: URL and pinned hash

    src = mk.write_scalemae(tmp_path / "fake.pth", mk.canonical_vit(grid=14))
    urls: list = []

    def fake_fetch(remote, destination):  # the datasets' downloader, which load_gfm uses
        urls.append(remote.url)
        shutil.copyfile(src, destination)
        return destination

    monkeypatch.setattr(models, "_scalemae_url", lambda: SCALEMAE_URLS[torchgeo])
    monkeypatch.setattr(_download, "fetch", fake_fetch)
    # the real file's full sha256 is pinned: the stand-in is refused, and deleted
    with pytest.raises(RuntimeError, match=f"expected {models.SCALEMAE_SHA256}"):
        load_gfm("scalemae", "download", _arch_overrides=TINY)
    assert not gfm_cache_path("scalemae").exists()
    # with the stand-in's own hash pinned instead, the same code path accepts it
    monkeypatch.setattr(models, "SCALEMAE_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    model = load_gfm("scalemae", "download", _arch_overrides=TINY)
    assert urls == [SCALEMAE_URLS[torchgeo]] * 2 and model.gfm_card.pretrained
    # one cache name for both torchgeo versions
    assert gfm_cache_path("scalemae").name == "vit_large_patch16_224_fmow_rgb_scalemae-386989c9.pth"
    assert gfm_cache_path("scalemae").is_file()


def test_scalemae_cached_under_torchgeos_old_name_is_reused(tmp_path, torch_home, monkeypatch):
    import hashlib

    from deflect_min.models import cards as models  # the registry: URL and pinned hash

    src = mk.write_scalemae(tmp_path / "fake.pth", mk.canonical_vit(grid=14))
    old = gfm_cache_path("scalemae").with_name(SCALEMAE_URLS["0.8"].rsplit("/", 1)[-1])
    old.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, old)
    monkeypatch.setattr(models, "_scalemae_url", lambda: SCALEMAE_URLS["0.8"])
    monkeypatch.setattr(models, "SCALEMAE_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    monkeypatch.setattr(_download, "fetch", lambda *a, **k: pytest.fail("no download expected"))
    assert load_gfm("scalemae", "download", _arch_overrides=TINY).gfm_card.pretrained
    assert gfm_cache_path("scalemae").is_file() and not old.exists()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        load_gfm("satmae", weights=None)
    for name in GFM_NAMES:
        assert name in str(e.value)


def test_wrong_architecture_names_keys(tmp_path):
    dino = mk.write_dino_mc(tmp_path / "dino.pth", mk.canonical_vit(patch=8, grid=28))
    with pytest.raises(RuntimeError, match=r"shape mismatches: .*blocks\.0\.attn\.qkv\.weight"):
        load_gfm("dino_mc", dino, _arch_overrides=dict(TINY, embed_dim=32))
    xsmae = mk.write_cross_scale_mae(tmp_path / "xsmae.pth", mk.canonical_vit(grid=8))
    with pytest.raises(RuntimeError, match=r"does not fit the scalemae .*unexpected keys: "
                       r"decoder.*looks like a Cross-Scale MAE"):
        load_gfm("scalemae", xsmae, _arch_overrides=TINY)
    with pytest.raises(RuntimeError, match="try 'dino_mc'"):
        load_gfm("cross_scale_mae_base", dino, _arch_overrides=TINY)


def test_missing_encoder_key_is_an_error(tmp_path):
    path = mk.write_cross_scale_mae(tmp_path / "xsmae.pth", mk.canonical_vit(grid=8))
    ckpt = torch.load(path, weights_only=False)
    del ckpt["model"]["encoder.encoders.1.wrap_ff.sublayer.layer.mlp.3.bias"]
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match=r"missing encoder keys: blocks\.1\.mlp\.fc2\.bias"):
        load_gfm("cross_scale_mae_base", path, img_size=128, _arch_overrides=TINY)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_unsafe_checkpoint_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil()}, path)
    with pytest.raises(RuntimeError, match="refusing to load"):
        load_gfm("cross_scale_mae_base", path, _arch_overrides=TINY)
    junk = tmp_path / "page.html"
    junk.write_text("<html>Google Drive - Virus scan warning</html>")
    with pytest.raises(RuntimeError, match="not"):
        load_gfm("dino_mc", junk)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


def _tiny_encoder(img_size: int, *, name: str = "cross_scale_mae_base", patch: int = 16,
                  depth: int = 4, dim: int = 32):
    torch.manual_seed(0)
    return load_gfm(name, weights=None, img_size=img_size,
                    _arch_overrides=dict(depth=depth, embed_dim=dim, num_heads=2,
                                         patch_size=patch))


@pytest.mark.parametrize("size", [224, 240])
def test_upernet_logits_at_input_size(size):
    enc = _tiny_encoder(size)
    seg = GFMSegmenter(encoder=enc, head=UPerNet(embed_dim=32, num_classes=5, channels=16),
                       taps=(0, 1, 2, 3))
    x = torch.rand(2, 3, size, size)
    out = seg(x)
    assert out.shape == (2, 5, size, size)
    out.mean().backward()
    assert all(p.grad is not None for p in seg.head.parameters())


def test_feature2pyramid_strides():
    neck = Feature2Pyramid(embed_dim=8)
    outs = neck([torch.rand(1, 8, 14, 14)] * 4)
    assert [o.shape[-1] for o in outs] == [56, 28, 14, 7]


def test_segmenter_taps_shallow_encoder_and_final_norm():
    enc = _tiny_encoder(64, depth=2).eval()
    seg = GFMSegmenter(encoder=enc, head=UPerNet(embed_dim=32, num_classes=3, channels=8),
                       taps=enc.gfm_card.default_taps).eval()
    assert seg.taps == (0, 0, 1, 1)
    with torch.no_grad():
        assert seg(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="taps"):
        GFMSegmenter(encoder=enc, head=UPerNet(embed_dim=32, num_classes=3, channels=8),
                     taps=(0, 1, 2, 3))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_classifier_forward_backward(pool):
    enc = _tiny_encoder(64, name="dino_mc", patch=8)
    clf = GFMClassifier(encoder=enc, head=ClassificationHead(embed_dim=32, num_classes=7,
                                                           num_prefix_tokens=1, pool=pool))
    out = clf(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.logsumexp(-1).mean().backward()
    assert clf.head.fc.weight.grad is not None and enc.blocks[0].attn.qkv.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# build_model: every adaptation method, both tasks
# ---------------------------------------------------------------------------------------------

METHODS = ["full", "frozen", "norm", "bitfit", "lora", "slr", "deflect", "deflect+lora"]
BANDS = ["S2_B02", "S2_B03", "S2_B04", "S2_B08", "S2_B11"]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("method", METHODS)
def test_build_model_forward_backward(method, task):
    import deflect_min as dm

    if method not in dm.METHODS:
        pytest.skip(f"adapt does not offer {method!r} yet")
    enc = _tiny_encoder(32, name="scalemae", patch=8, depth=2)
    model = build_model(task, enc, method, bands=BANDS, num_classes=3,
                        head_kwargs=dict(channels=8) if task == "segmentation" else None)
    assert model.encoder is enc
    x = 0.01 + 0.5 * torch.rand(2, len(BANDS), 32, 32)
    out = model(x)
    assert out.shape == ((2, 3) if task == "classification" else (2, 3, 32, 32))
    out.float().pow(2).mean().backward()
    assert all(p.requires_grad and p.grad is not None for p in model.head.parameters())
    counts = model.parameter_counts()
    assert counts["head_tuned"] == counts["head_total"] > 0
    assert not enc.pos_embed.requires_grad  # Scale-MAE's unused table, even under "full"
    tuned = [p for p in model.encoder.parameters() if p.requires_grad]
    assert (counts["encoder_tuned"] == 0) == (method == "frozen")
    assert all(p.grad is not None for p in tuned)


def test_build_model_bad_task():
    with pytest.raises(ValueError, match="classification, segmentation"):
        build_model("detection", _tiny_encoder(32), "frozen", bands=BANDS, num_classes=2)


def test_deflect_on_post_norm_cross_scale_mae_equals_pretrained_at_init(tmp_path):
    import copy

    import deflect_min as dm

    path = mk.write_cross_scale_mae(tmp_path / "xsmae.pth", mk.canonical_vit(grid=8))
    vit = load_gfm("cross_scale_mae_base", path, img_size=128, _arch_overrides=TINY).eval()
    ref = copy.deepcopy(vit)
    adapted = dm.adapt(vit, "deflect", bands=BANDS)
    assert isinstance(adapted.blocks[0], PostNormBlock)
    x = 0.01 + 0.5 * torch.rand(2, len(BANDS), 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), ref(x[:, [2, 1, 0]]), atol=1e-4, rtol=0)


def test_cross_scale_mae_old_xformers_twins_must_agree(tmp_path):
    c = mk.canonical_vit(grid=8)
    path = mk.write_cross_scale_mae(tmp_path / "old.pth", c, variant="xformers-0.0.11")
    assert "0.0.11 duplicate keys" in load_gfm("cross_scale_mae_base", path, img_size=128,
                                               _arch_overrides=TINY).gfm_card.weights
    ckpt = torch.load(path, weights_only=False)
    key = "encoder.encoders.0.mha.proj.weight"
    ckpt["model"][key] = ckpt["model"][key] + 1.0
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match=r"alias of encoder.encoders.0.wrap_att.sublayer.layer"
                       r".proj.weight, but their values differ"):
        load_gfm("cross_scale_mae_base", path, img_size=128, _arch_overrides=TINY)
