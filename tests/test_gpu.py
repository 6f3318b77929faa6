"""The CUDA paths: what Colab users run and CI (no GPU) cannot.

Skipped without a CUDA device. ``scripts/device_check.sh`` runs them on a lent GPU (the last run
is ``benchmarks/results/device_check_h100.log``). They check, on the GPU:

* the adapted model equals the pretrained one at initialisation (fp32 kernels: TF32 off);
* the fused SDPA path (flash / memory-efficient kernels) equals the explicit four products;
* deflection keeps the reference norm under bf16 and fp16 autocast, also where the squares of
  the activations overflow fp16;
* a training run under ``16-mixed`` (fp16 + gradient scaler, the T4 path) and ``bf16-mixed``
  (native bf16) goes through fit, sliding-window validation and test under autocast, keeps the
  tuned parameters in fp32 and counts every valid test pixel exactly once.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import deflect_min as dm
from deflect_min.attention import UntangledAttention
from deflect_min.data import sliding_window_logits
from deflect_min.deflection import deflect
from deflect_min.training import default_precision, smoke_config, train
from tests.helpers import HLS, S2_7, perturb_new_parameters, reflectance, tiny_vit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RGB_IDX = [2, 1, 0]  # S2_B04, S2_B03, S2_B02 within S2_7
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 comparisons in true fp32 (Ampere and later would use TF32 for matmuls)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_default_precision_matches_this_gpu() -> None:
    major, _ = torch.cuda.get_device_capability()
    assert default_precision("auto") == ("bf16-mixed" if major >= 8 else "16-mixed")


@pytest.mark.parametrize("stream", ["dual", "single"])
def test_equals_pretrained_at_init_on_cuda(stream) -> None:
    vit = tiny_vit(img_size=64, dim=64, depth=4).to(CUDA)
    ref = copy.deepcopy(vit)
    adapted = dm.adapt(vit, bands=S2_7, stream=stream)
    x = reflectance(2, S2_7, 64).to(CUDA)
    with torch.no_grad():
        diff = (adapted(x) - ref(x[:, RGB_IDX])).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_equals_explicit_on_cuda(dtype) -> None:
    adapted = dm.adapt(tiny_vit(img_size=64, dim=64, depth=4), "deflect+lora", bands=S2_7)
    perturb_new_parameters(adapted)
    adapted.to(CUDA)
    x = reflectance(2, S2_7, 64).to(CUDA)
    uatts = [m for m in adapted.modules() if isinstance(m, UntangledAttention)]
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        fused = adapted(x).float()
        for m in uatts:
            m.explicit = True
        explicit = adapted(x).float()
    scale = explicit.abs().max()
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert torch.isfinite(fused).all()
    assert (fused - explicit).abs().max() <= tol * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deflected_norm_under_cuda_autocast(dtype) -> None:
    adapted = dm.adapt(tiny_vit(img_size=64, dim=64, depth=4), bands=S2_7)
    perturb_new_parameters(adapted)
    adapted.to(CUDA)
    x = reflectance(2, S2_7, 64).to(CUDA)
    with torch.autocast("cuda", dtype=dtype):
        records = dm.trace(adapted, x)
    for r in records:
        norm, norm_ref = r["delta"].float().norm(dim=-1), r["delta_ref"].float().norm(dim=-1)
        torch.testing.assert_close(norm, norm_ref, rtol=1e-2, atol=1e-3)


def test_deflection_survives_fp16_overflowing_squares() -> None:
    """Tokens of norm ~2e3 (squares ~4e6 > fp16's 65504) keep their reference norm."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    delta_u = (300 * torch.randn(2, 50, 64, device=CUDA, generator=g)).half()
    delta_ref = (250 * torch.randn(2, 50, 64, device=CUDA, generator=g)).half()
    with torch.autocast("cuda", dtype=torch.float16):
        out = deflect(delta_u, delta_ref)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float().norm(dim=-1), delta_ref.float().norm(dim=-1),
                               rtol=2e-3, atol=0.0)


def test_sliding_window_under_autocast_matches_fp32() -> None:
    model = dm.build_model("segmentation", tiny_vit(img_size=32, dim=64, depth=4), "deflect",
                           bands=S2_7, num_classes=3, head_kwargs={"channels": 16})
    perturb_new_parameters(model, scale=0.05)
    model.to(CUDA).eval()
    x = reflectance(2, S2_7, 80).to(CUDA)
    with torch.no_grad():
        ref = sliding_window_logits(model, x, 3, window=32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            amp = sliding_window_logits(model, x, 3, window=32)
    assert amp.dtype == torch.float32 and amp.shape == (2, 3, 80, 80)
    agree = (amp.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.97 and (amp - ref).abs().max() < 5e-2 * ref.abs().max()


class _Precision(Callback):
    """Record the gradient scaler's state and the tuned parameters' dtypes after training."""

    def on_train_end(self, trainer, pl_module) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scale = None if scaler is None else float(scaler.get_scale())
        self.dtypes = {p.dtype for p in pl_module.parameters() if p.requires_grad}
        self.device = next(pl_module.parameters()).device.type


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_segmentation_run_under_mixed_precision(precision, tmp_path) -> None:
    # 16 px windows over the 32 px fixture images: 3 x 3 overlapping windows per image
    cfg = smoke_config("hls-burn-scars", str(HLS), accelerator="gpu", precision=precision,
                       img_size=16, epochs=2, out=str(tmp_path / "r"),
                       work_dir=str(tmp_path / "c"))
    probe = _Precision()
    r = train(cfg, callbacks=[probe])
    assert r["precision"] == precision and "compute capability" in r["device"]
    assert probe.device == "cuda" and probe.dtypes == {torch.float32}
    if precision == "16-mixed":
        assert probe.scale is not None and np.isfinite(probe.scale) and probe.scale > 0
    else:
        assert probe.scale is None
    assert all(np.isfinite(h["train_loss"]) for h in r["history"])
    # every valid pixel of the two 32 x 32 test scenes (their first rows are -1) counted once
    cm = np.asarray(r["confusion_matrix"]["test"])
    assert cm.sum() == 2 * 31 * 32
