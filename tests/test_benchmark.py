"""The cost benchmark (benchmarks/peft_cost.py) runs end to end and fills every column, and the
performance properties it relies on hold: the frozen method builds no encoder graph, the fused
uAtt path calls attention twice and makes no n x n tensor, the chunked pixel-set encoder equals
the one-pass one. No timing is asserted."""

import csv
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deflect_min as dm
from benchmarks import peft_cost, train_cost
from deflect_min.attention import UntangledAttention
from deflect_min.embedding import PixelSetEncoder
from tests.helpers import S2_7, reflectance, tiny_vit

TINY = ["--model", "test_vit", "--img-size", "32", "--batch-size", "2", "--bands", "12",
        "--steps", "2", "--warmup", "1", "--threads", "1"]
NUMERIC = ("batch_size", "img_size", "bands", "tuned_params", "tuned_pct", "step_ms", "step_cpu_ms",
           "x_forward_cpu", "x_peft_lora_cpu",
           "step_ms_min", "step_ms_max", "x_forward", "x_peft_lora", "peak_mem_mib",
           "mem_x_peft_lora", "gflops_step", "steps", "warmup", "threads")


def _read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_end_to_end_on_a_tiny_vit_fills_every_column(tmp_path, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "cost.csv"
    assert peft_cost.main([*TINY, "--methods", "frozen,deflect,lora", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "x fwd" in printed and "x peft" in printed and "deflect step time" in printed
    columns, rows = _read(out)
    assert tuple(columns) == peft_cost.COLUMNS
    assert [r["method"] for r in rows] == ["forward-only", "frozen", "deflect", "lora", "peft-lora"]
    for r in rows:
        assert all(r[c] != "" and math.isfinite(float(r[c])) for c in NUMERIC), r
        assert float(r["step_ms"]) > 0 and float(r["gflops_step"]) > 0
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["timm"] and r["peft"]
    by = {r["method"]: r for r in rows}
    assert float(by["forward-only"]["x_forward"]) == 1.0
    assert float(by["peft-lora"]["x_peft_lora"]) == 1.0
    assert int(by["forward-only"]["tuned_params"]) == int(by["frozen"]["tuned_params"]) == 0
    # our LoRA and peft's adapt the same layers with the same rank
    assert by["lora"]["tuned_params"] == by["peft-lora"]["tuned_params"]
    # frozen: the forward pass + the head's backward; DEFLECT: a backward through the encoder
    assert float(by["frozen"]["gflops_step"]) == pytest.approx(
        float(by["forward-only"]["gflops_step"]), rel=0.01)
    assert float(by["deflect"]["gflops_step"]) > 1.5 * float(by["forward-only"]["gflops_step"])


def test_without_peft_a_clear_message_and_no_reference_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(peft_cost, "have_peft", lambda: False)
    out = tmp_path / "cost.csv"
    peft_cost.main([*TINY, "--steps", "1", "--warmup", "0", "--methods", "frozen", "--out", str(out)])
    assert "pip install 'deflect_min[bench]'" in capsys.readouterr().err
    _, rows = _read(out)
    assert [r["method"] for r in rows] == ["forward-only", "frozen"]
    assert math.isnan(float(rows[1]["x_peft_lora"])) and rows[1]["peft"] == ""


def test_unknown_method_and_band_count_are_clear_errors():
    with pytest.raises(SystemExit, match="registered methods"):
        peft_cost.main([*TINY, "--methods", "deflect,dora"])
    with pytest.raises(SystemExit, match="--bands"):
        peft_cost.s2_bands(2)
    assert peft_cost.s2_bands(12) == ["S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06",
                                      "S2_B07", "S2_B08", "S2_B8A", "S2_B09", "S2_B11", "S2_B12"]


def test_forward_flops_agree_with_the_budget():
    budget = pytest.importorskip("deflect_min.budget")
    args = peft_cost.parse_args(TINY)
    rows = budget.budget(["test_vit"], ["frozen", "deflect"], bands=peft_cost.s2_bands(12),
                         img_size=32)
    per_image = dict(zip(rows["method"], rows["gflops"]))
    head = 2 * 64 * peft_cost.NUM_CLASSES / 1e9  # test_vit's width 64; budget has no head
    assert peft_cost.step_gflops("forward-only", args) / args.batch_size == pytest.approx(
        per_image["frozen"] + head)


def test_frozen_builds_no_encoder_graph():
    vit = dm.adapt(tiny_vit(num_classes=5), "frozen", bands=S2_7)
    features = vit.forward_features(reflectance(2, S2_7, 32))
    assert not features.requires_grad and features.grad_fn is None
    assert vit(reflectance(2, S2_7, 32)).requires_grad  # only the head


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.calls.append((str(func), [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]))
        return out


@pytest.mark.parametrize("method", ["deflect", "deflect+lora"])
def test_fused_uatt_two_attention_calls_and_no_n_by_n_tensor(method):
    vit = dm.adapt(tiny_vit(depth=1), method, bands=S2_7, layers=[0])
    block = vit.blocks[0]
    assert isinstance(block.attn, UntangledAttention)
    n = 1 + 4 * 4  # CLS + 16 patches of a 32 px image with 8 px patches
    h = torch.randn(2, n, 32, requires_grad=True)
    vit(reflectance(2, S2_7, 32))  # fills the spectral side stream
    with _Ops() as ops:
        block.attn(h).sum().backward()
    attention = [c for c, _ in ops.calls if "scaled_dot_product" in c and "backward" not in c]
    assert len(attention) == 2, attention
    square = [(c, s) for c, shapes in ops.calls for s in shapes if len(s) >= 2 and s[-2:] == (n, n)]
    assert not square, square


def test_chunked_pixel_set_encoder_equals_one_pass():
    torch.manual_seed(0)
    encoder = PixelSetEncoder(in_features=9, dim=16)
    sets = torch.randn(2, 12, 64, 9)
    results = []
    for chunk in (0, 200, 64):  # one pass; 3 patches per chunk; 1 patch per chunk
        encoder.chunk_pixels = chunk
        encoder.zero_grad()
        out = encoder(sets)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in encoder.parameters()]))
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-6)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-5)


def test_train_cost_scenes_are_real_hls_and_projection_counts_every_pass(tmp_path):
    from deflect_min.data import HLSBurnScars

    train_cost.write_scenes(tmp_path, training=3, test=1, size=40)
    sample = HLSBurnScars(tmp_path, split="test")[0]
    assert sample["image"].shape == (6, 40, 40) and sample["mask"].shape == (40, 40)
    sizes = [len(HLSBurnScars(tmp_path, split=s)) for s in ("train", "val", "test")]
    assert sizes == [2, 1, 1]

    # HLS Burn Scars: 486 train scenes (60 steps of 8), 54 val, 264 test. Reduced: 1000 steps,
    # 17 epochs, 17 x 54 + 264 = 1182 evaluated images; full: 80 x 60 = 4800 steps, 4584 images
    kw = dict(step_s=0.1, eval_s=0.25, epoch_s=2.0, batch_size=8)
    assert train_cost.projection(**kw, protocol="reduced") == pytest.approx(
        (1000 * 0.1 + 1182 * 0.25 + 17 * 2.0) / 60)
    assert train_cost.projection(**kw, protocol="full") == pytest.approx(
        (4800 * 0.1 + 4584 * 0.25 + 80 * 2.0) / 60)


def test_train_cost_refuses_runs_too_short_to_time(capsys):
    with pytest.raises(SystemExit):
        train_cost.main(["--steps", "5", "--warmup", "0"])
    assert "--steps + --warmup must be at least 27" in capsys.readouterr().err


def test_train_cost_clock_times_every_step_image_and_epoch(tmp_path):
    from deflect_min.training import smoke_config, train

    # 10 training/ scenes: 9 train (4 steps of 2 per epoch) and 1 val; 2 test scenes (1 batch)
    train_cost.write_scenes(tmp_path / "hls", training=10, test=2, size=32)
    clock = train_cost.Clock(warmup=1)
    train(smoke_config("hls-burn-scars", str(tmp_path / "hls"), epochs=4,
                       work_dir=str(tmp_path / "runs")), callbacks=[clock])
    assert len(clock.step) == 4 * 4 - 1  # all but the warm-up step
    assert len(clock.step_with_data) == 4 * 3  # the steps after an epoch's first
    assert len(clock.eval_per_image) == 4 + 1  # a validation batch every epoch, a test batch
    assert len(clock.epoch_overhead) == 2  # epochs 1 and 2 (epoch 0 warms up, 3 ends the run)
    times = clock.step + clock.step_with_data + clock.eval_per_image + clock.epoch_overhead
    assert all(t > 0 for t in times)


def test_predict_speed_writes_one_row_per_batch_size(tmp_path):
    from benchmarks import predict_speed

    rows = predict_speed.main(["--size", "56", "--window", "28", "--batch-sizes", "1,4",
                               "--repeats", "1", "--out", str(tmp_path / "p.csv")])
    assert [r["batch_size"] for r in rows] == [1, 4] and rows[0]["speedup"] == 1.0
    assert rows[0]["windows"] == 9  # 3 x 3 windows of 28 px at stride 14 over 56 px
    assert (tmp_path / "p.csv").read_text().startswith("batch_size,windows,")
