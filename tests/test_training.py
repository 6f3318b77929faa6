"""Training, evaluation and the Table 1 aggregation, on the fixtures with a tiny random ViT.

Every run here is a smoke run (seconds on a CPU); results go under pytest's tmp_path only.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from deflect_min import paper
from deflect_min.cli import config_from_args, _train_parser, table_main, train_main
from deflect_min.training import (
    TrainConfig,
    aggregate,
    build_loaders,
    check_bands,
    collect_results,
    default_precision,
    load_model,
    metrics_from_confusion,
    render_csv,
    render_markdown,
    result_path,
    run_name,
    smoke_config,
    train,
)
from deflect_min.training.data import _RunData

from tests.helpers import GEOBENCH, HLS, MADOS_ROOT, Interrupted, interrupt_at

RESULT_FIELDS = {
    "schema", "dataset", "task", "gfm", "method", "method_kwargs", "run", "seed", "protocol",
    "protocol_detail", "schedule", "smoke", "pretrained", "weights", "table_metric",
    "table_value", "metrics", "metric_scale", "best_epoch", "class_names", "per_class",
    "confusion_matrix", "history", "params", "split_sizes", "bands", "band_stats", "steps",
    "epochs_run",
    "resumed", "wall_time_s", "device", "precision", "versions", "config", "checkpoint",
    "created",
}


# ----------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One classification run through the CLI, two segmentation runs through the API."""
    base = tmp_path_factory.mktemp("runs")
    out, work = base / "results", base / "ckpt"
    assert train_main(["--dataset", "m-so2sat", "--root", str(GEOBENCH), "--smoke",
                       "--method", "deflect", "--seed", "0", "--out", str(out),
                       "--work-dir", str(work)]) == 0
    hls = train(smoke_config("hls-burn-scars", str(HLS), epochs=3, out=str(out),
                             work_dir=str(work)))
    mados = train(smoke_config("mados", str(MADOS_ROOT), method="frozen", out=str(out),
                               work_dir=str(work)))
    so2sat = json.loads((out / "m-so2sat" / "scalemae" / "deflect" / "seed0.json").read_text())
    return {"out": out, "work": work, "so2sat": so2sat, "hls": hls, "mados": mados}


def _check_result(r: dict, *, dataset: str, metric: str, n_classes: int) -> None:
    missing = RESULT_FIELDS - set(r)
    assert not missing, f"result lacks {missing}"
    assert r["dataset"] == dataset and r["smoke"] is True and r["pretrained"] is False
    assert r["protocol"] == "full" and "SMOKE RUN" in r["protocol_detail"]
    assert r["table_metric"] == metric and r["table_value"] == r["metrics"]["test"][metric]
    for v in r["metrics"]["test"].values():
        assert 0.0 <= v <= 1.0
    cm = np.asarray(r["confusion_matrix"]["test"])
    assert cm.shape == (n_classes, n_classes)
    assert len(r["class_names"]) == n_classes
    assert r["params"]["encoder_tuned"] >= 0 and r["params"]["head_tuned"] > 0
    assert 0.0 <= r["params"]["encoder_tuned_pct"] <= 100.0
    assert {"torch", "timm", "deflect_min", "lightning"} <= set(r["versions"])
    assert r["config"]["dataset"] == dataset and r["config"]["arch_overrides"]
    assert r["precision"] == "32-true" and r["device"].startswith("cpu")
    assert r["wall_time_s"] > 0 and r["epochs_run"] == len(r["history"]) >= 2
    assert all(f"val_{metric}" in h and np.isfinite(h["train_loss"]) for h in r["history"])
    assert r["best_epoch"] in [h["epoch"] for h in r["history"]]
    assert Path(r["checkpoint"]).is_file()
    json.dumps(r)  # plain JSON


def test_classification_cycle_cli(runs) -> None:
    r = runs["so2sat"]
    _check_result(r, dataset="m-so2sat", metric="f1_macro", n_classes=17)
    assert r["task"] == "classification" and set(r["metrics"]["test"]) == {"accuracy", "f1_macro",
                                                                  "balanced_accuracy"}
    assert np.asarray(r["confusion_matrix"]["test"]).sum() == r["split_sizes"]["test"] == 1
    assert r["bands"] == r["config"]["bands"] or r["config"]["bands"] is None
    assert len(r["bands"]) == 10


def test_segmentation_cycle(runs) -> None:
    r = runs["hls"]
    _check_result(r, dataset="hls-burn-scars", metric="miou", n_classes=2)
    test = r["metrics"]["test"]
    assert set(test) == {"accuracy", "miou", "iou_burn_scar"}
    assert test["iou_burn_scar"] == r["per_class"]["iou_per_class"][1]
    assert r["epochs_run"] == 3 and r["steps"] == 3  # 3 training images, batch 2, drop_last
    cm = np.asarray(r["confusion_matrix"]["test"])
    assert 0 < cm.sum() < 2 * 32 * 32  # the -1 pixels of the fixture are not counted
    assert r["path"] == str(runs["out"] / "hls-burn-scars" / "scalemae" / "deflect" / "seed0.json")

    m = runs["mados"]
    _check_result(m, dataset="mados", metric="miou", n_classes=15)
    assert m["params"]["encoder_tuned"] == 0  # frozen
    ious = [v for v in m["per_class"]["iou_per_class"] if v is not None]
    assert m["metrics"]["test"]["miou"] == pytest.approx(float(np.mean(ious)))


def test_load_model_reproduces_the_test_confusion_matrix(runs) -> None:
    from torchmetrics.classification import MulticlassConfusionMatrix

    r = runs["hls"]
    model = load_model(r["path"])
    assert not model.training
    cm = MulticlassConfusionMatrix(2, ignore_index=-1)
    with torch.no_grad():
        for batch in build_loaders(TrainConfig.from_dict(r["config"]))["test"]:
            cm.update(model(batch["image"]).argmax(1), batch["mask"])  # 32 px: one window
    assert cm.compute().tolist() == r["confusion_matrix"]["test"]


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("k", [1, 2])
def test_resume_is_bit_identical(runs, tmp_path, k) -> None:
    ref = runs["hls"]  # 3 epochs, uninterrupted
    kw = dict(epochs=3, out=str(tmp_path / "results"), work_dir=str(tmp_path / "ckpt"))
    with pytest.raises(Interrupted):
        train(smoke_config("hls-burn-scars", str(HLS), **kw), callbacks=[interrupt_at(k)])
    assert not (tmp_path / "results").exists()
    resumed = train(smoke_config("hls-burn-scars", str(HLS), resume=True, **kw))
    assert resumed["resumed"] is True
    assert resumed["history"] == ref["history"]  # losses and val metrics, every epoch
    assert resumed["metrics"] == ref["metrics"]
    assert resumed["confusion_matrix"] == ref["confusion_matrix"]
    assert resumed["best_epoch"] == ref["best_epoch"] and resumed["steps"] == ref["steps"]
    a = torch.load(Path(runs["work"]) / "hls-burn-scars/scalemae/deflect/seed0/last.ckpt",
                   weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ckpt/hls-burn-scars/scalemae/deflect/seed0/last.ckpt",
                   weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_resume_refuses_other_settings(runs, tmp_path) -> None:
    kw = dict(epochs=3, out=None, work_dir=str(tmp_path))
    with pytest.raises(Interrupted):
        train(smoke_config("m-so2sat", str(GEOBENCH), **kw), callbacks=[interrupt_at(1)])
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        train(smoke_config("m-so2sat", str(GEOBENCH), resume=True, lr=1e-3, **kw))


def _brick_kiln_copy(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A writable copy of the brick-kiln fixture: (GEO-Bench root, task folder, its default
    partition), for tests that write partition files."""
    root = tmp_path / "geobench"
    task = root / "classification_v1.0" / "m-brick-kiln"
    shutil.copytree(GEOBENCH / "classification_v1.0" / "m-brick-kiln", task)
    return root, task, json.loads((task / "default_partition.json").read_text())


# ----------------------------------------------------------------------------- DDP
def test_ddp_evaluates_every_sample_once(tmp_path) -> None:
    # the brick-kiln fixture's four samples for training, three for val and for test: splits
    # that two processes share unevenly (Lightning's default sampler pads them to four)
    root, task, default = _brick_kiln_copy(tmp_path)
    names = sorted({n for split in default.values() for n in split})
    part = {"train": names, "valid": names[1:], "test": names[1:]}
    assert len(part["valid"]) % 2 == 1 and len(part["test"]) % 2 == 1
    (task / "default_partition.json").write_text(json.dumps(part))
    # the ddp launcher runs the command again for the second process: not inside pytest
    run = subprocess.run(
        [str(Path(sys.executable).parent / "deflect-train"), "--dataset", "m-brick-kiln",
         "--root", str(root), "--smoke", "--batch-size", "1", "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "r"),
         "--work-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "r/m-brick-kiln/scalemae/deflect/seed0.json").read_text())
    assert r["split_sizes"] == {"train": len(names), "val": len(part["valid"]),
                                "test": len(part["test"])}
    assert np.asarray(r["confusion_matrix"]["test"]).sum() == len(part["test"])  # padded: 4
    # the validation loss is the mean over both processes' batches (of one sample each)
    model = load_model(tmp_path / "r/m-brick-kiln/scalemae/deflect/seed0.json")
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(b["image"]), b["label"])
                  for b in build_loaders(TrainConfig.from_dict(r["config"]))["val"]]
    assert r["metrics"]["val_best"]["loss"] == pytest.approx(float(torch.stack(losses).mean()))
    assert r["device"].startswith("2 x cpu")
    assert run.stdout.count("m-brick-kiln / scalemae / deflect / seed 0") == 1


def test_ddp_eval_shards() -> None:
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2)
    data = _RunData({"train": loader, "val": loader, "test": loader})
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert data.val_dataloader() is loader and data.test_dataloader() is loader
    shards = []
    for rank in (0, 1):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shards.append([int(i) for batch in data.test_dataloader() for i in batch])
    assert sorted(shards[0] + shards[1]) == list(range(5))  # each sample once, none repeated
    data = _RunData({"train": loader, "val": loader, "test": torch.utils.data.DataLoader([0])})
    data.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ValueError, match="test split has 1 samples for 2 processes"):
        data.setup("fit")  # before training, not after it


# ----------------------------------------------------------------------------- failures
class _Diverge(Callback):
    """After optimizer step ``n``, a tuned weight becomes NaN (as an exploding update leaves it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.n:
            with torch.no_grad():
                next(p for p in pl_module.model.head.parameters() if p.requires_grad).fill_(
                    float("nan"))


def test_nan_loss_stops_with_step_and_cause(tmp_path) -> None:
    cfg = smoke_config("m-so2sat", str(GEOBENCH), batch_size=1, out=str(tmp_path / "r"),
                       work_dir=str(tmp_path / "c"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at optimizer step 1 \(epoch 0, "
                       r"batch 1\).*tuned parameters are no longer finite.*learning rate"):
        train(cfg, callbacks=[_Diverge(1)])
    assert not (tmp_path / "r").exists()


def test_band_mismatch_fails_before_training(tmp_path) -> None:
    cfg = smoke_config("m-forestnet", str(GEOBENCH), out=str(tmp_path / "r"),
                       work_dir=str(tmp_path / "c"),
                       bands=["L8_B04", "L8_B03", "L8_B02", "L8_B05", "L8_B06", "L8_B07"])
    other = smoke_config("m-forestnet", str(GEOBENCH),
                         bands=["L8_B02", "L8_B03", "L8_B04", "L8_B05", "L8_B06", "L8_B07"])
    with pytest.raises(ValueError, match="band mismatch.*another order"):
        train(cfg, loaders=build_loaders(other))
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"expects \['S2_B12'\] which the data lack"):
        check_bands(["S2_B04", "S2_B12"], ["S2_B04"])
    check_bands(["S2_B04", "S2_B03"], ["S2_B04", "S2_B03"])


# ----------------------------------------------------------------------------- metrics
def _expand(cm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    target, pred = [], []
    for t in range(cm.shape[0]):
        for p in range(cm.shape[1]):
            target += [t] * int(cm[t, p])
            pred += [p] * int(cm[t, p])
    return torch.tensor(pred), torch.tensor(target)


def test_metrics_agree_with_hand_made_confusion_matrix() -> None:
    from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                             MulticlassF1Score, MulticlassJaccardIndex)

    # rows = target, columns = prediction; class 3 never occurs (skipped by macro means)
    cm = np.array([[5, 1, 0, 0],
                   [2, 3, 1, 0],
                   [0, 0, 4, 0],
                   [0, 0, 0, 0]])
    # tp = 5, 3, 4; fp = 2, 1, 1; fn = 1, 3, 0
    f1 = [10 / 13, 6 / 10, 8 / 9]
    iou = [5 / 8, 3 / 7, 4 / 5]
    cls = metrics_from_confusion(cm, "classification")
    assert cls["accuracy"] == pytest.approx(12 / 16)
    assert cls["f1_per_class"][:3] == pytest.approx(f1) and cls["f1_per_class"][3] is None
    assert cls["f1_macro"] == pytest.approx(np.mean(f1))
    seg = metrics_from_confusion(cm, "segmentation", positive=(1, "iou_one"))
    assert seg["iou_per_class"][:3] == pytest.approx(iou) and seg["iou_per_class"][3] is None
    assert seg["miou"] == pytest.approx(np.mean(iou)) and seg["iou_one"] == pytest.approx(3 / 7)

    # torchmetrics on the samples behind the matrix (with an ignored target) agrees
    pred, target = _expand(cm)
    pred, target = torch.cat([pred, torch.tensor([2])]), torch.cat([target, torch.tensor([-1])])
    kw = dict(num_classes=4, ignore_index=-1)
    tm_cm = MulticlassConfusionMatrix(**kw)(pred, target)
    assert tm_cm.tolist() == cm.tolist()
    assert float(MulticlassF1Score(average="macro", **kw)(pred, target)) == \
        pytest.approx(cls["f1_macro"])
    assert float(MulticlassJaccardIndex(average="macro", **kw)(pred, target)) == \
        pytest.approx(seg["miou"])
    assert float(MulticlassAccuracy(average="micro", **kw)(pred, target)) == \
        pytest.approx(cls["accuracy"])
    sk = pytest.importorskip("sklearn.metrics")
    assert sk.f1_score(target[:-1], pred[:-1], average="macro") == pytest.approx(cls["f1_macro"])
    assert sk.balanced_accuracy_score(target[:-1], pred[:-1]) == \
        pytest.approx(cls["balanced_accuracy"])
    assert cls["balanced_accuracy"] == pytest.approx(np.mean([5 / 6, 3 / 6, 4 / 4]))


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("available, capability, accelerator, expected", [
    (False, None, "auto", "32-true"),
    (True, (7, 5), "auto", "16-mixed"),  # T4: no native bf16
    (True, (8, 0), "auto", "bf16-mixed"),  # A100
    (True, (9, 0), "gpu", "bf16-mixed"),  # H100
    (True, (8, 6), "cpu", "32-true"),
])
def test_default_precision(monkeypatch, available, capability, accelerator, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # T4 says True
    assert default_precision(accelerator) == expected


# ----------------------------------------------------------------------------- config, CLI
def test_config_rules_and_paths(tmp_path) -> None:
    with pytest.raises(ValueError, match="protocol='full' is PANGAEA's schedule"):
        TrainConfig(dataset="m-so2sat", epochs=3).validate()
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(dataset="m-so2sat", method="nope").validate()
    TrainConfig(dataset="m-so2sat", protocol="reduced", epochs=3).validate()
    cfg = TrainConfig(dataset="mados", protocol="reduced", seed=2, out=str(tmp_path))
    assert cfg.step_budget == 1000 and cfg.train_partition is None
    assert result_path(cfg) == tmp_path / "mados/scalemae/deflect/seed2.reduced.json"
    assert TrainConfig(dataset="m-so2sat", protocol="reduced").train_partition == "0.10x_train"
    assert run_name("deflect") == "deflect"
    assert run_name("deflect", {"layers": [0, 1, 2], "deflect": False}) == \
        "deflect_deflect-False_layers-0.1.2"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg

    args = _train_parser().parse_args(
        ["--dataset", "m-so2sat", "--root", "r", "--weights", "none", "--layers", "0-2,5",
         "--rank", "4", "--stream", "single", "--no-deflect", "--lora-rank", "2",
         "--protocol", "reduced", "--max-steps", "10", "--batch-size", "4"])
    c = config_from_args(args)
    assert c.weights is None and c.max_steps == 10 and c.batch_size == 4
    assert c.method_kwargs == {"layers": [0, 1, 2, 5], "rank": 4, "stream": "single",
                               "deflect": False, "lora_rank": 2}


def test_reduced_protocol_uses_geobench_partition(tmp_path) -> None:
    root, task, default = _brick_kiln_copy(tmp_path)
    part = {"train": default["train"][:1], "valid": [], "test": []}
    (task / "0.10x_train_partition.json").write_text(json.dumps(part))
    cfg = smoke_config("m-brick-kiln", str(root), protocol="reduced", batch_size=1,
                       out=str(tmp_path / "r"), work_dir=str(tmp_path / "c"))
    r = train(cfg)
    assert r["protocol"] == "reduced" and "0.10x_train partition" in r["protocol_detail"]
    assert r["split_sizes"] == {"train": 1, "val": len(default["valid"]),
                                "test": len(default["test"])}  # val and test unchanged
    assert r["schedule"]["partition"] == "0.10x_train"
    assert Path(r["path"]).name == "seed0.reduced.json"
    with pytest.raises(FileNotFoundError, match="0.01x_train.*partitions"):
        train(smoke_config("m-brick-kiln", str(root), protocol="reduced",
                           partition="0.01x_train", out=None, work_dir=str(tmp_path / "c")))


# ----------------------------------------------------------------------------- the table
def _as_real(r: dict, path: Path, **changes) -> None:
    r = copy.deepcopy(r)
    r.update(smoke=False, pretrained=True, **changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


def test_table_refuses_smoke_and_renders_not_run(runs, tmp_path, capsys) -> None:
    # smoke results are refused
    assert table_main(["--results", str(runs["out"])]) == 2
    assert "refusing smoke results" in capsys.readouterr().err
    with pytest.raises(ValueError, match="refusing smoke"):
        aggregate(collect_results(runs["out"]))

    # the same files as if they were real runs: one DEFLECT cell each
    res = tmp_path / "results"
    so2, hls = runs["so2sat"], runs["hls"]
    _as_real(so2, res / "m-so2sat/scalemae/deflect/seed0.json")
    _as_real(so2, res / "m-so2sat/scalemae/deflect/seed1.json", seed=1)
    _as_real(hls, res / "hls-burn-scars/scalemae/deflect/seed0.json")
    assert table_main(["--results", str(res), "--out", str(tmp_path / "t" / "table1")]) == 0
    md = (tmp_path / "t" / "table1.md").read_text()
    assert md == capsys.readouterr().out.split("\nwritten:")[0]
    lines = {line.split("|")[1].strip(): line for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| Method")}
    assert list(lines) == [label for _, label in paper.ROWS]
    deflect = [c.strip() for c in lines["DEFLECT"].split("|")[1:-1]]
    f1 = 100 * so2["metrics"]["test"]["f1_macro"]
    assert deflect[2] == f"{f1:.1f} ± 0.0 (n=2) (52.7 ± 0.5)"
    assert deflect[5].startswith(f"{100 * hls['metrics']['test']['miou']:.1f} (n=1) (77.0 ± 1.2)")
    assert deflect[3] == "not run (97.6 ± 0.2)" and deflect[8].startswith("incomplete")
    assert lines["LoRA"].count("not run") == 9  # tuned % and the eight value columns
    assert "protocol `full`" in md and "mIoU over both classes" in md

    table = aggregate(collect_results(res), hls_metric="iou_burn_scar")
    csv = render_csv(table).splitlines()
    assert len(csv) == 1 + 7 * 9
    row = next(line for line in csv if line.startswith("scalemae,full,DEFLECT,Burn Scars,"))
    assert f"{100 * hls['metrics']['test']['iou_burn_scar']:.6g}" in row
    assert "IoU (burn scar)" in row and row.endswith(",77,1.2,")
    assert render_markdown(table).count("not run") >= 6 * 8

    # protocols are never mixed silently
    _as_real(so2, res / "m-so2sat/scalemae/deflect/seed0.reduced.json", protocol="reduced")
    with pytest.raises(ValueError, match="mix protocols"):
        aggregate(collect_results(res))
    full = aggregate(collect_results(res), protocol="full")
    assert full["cells"][("DEFLECT", "So2Sat")].n == 2
    assert any("another protocol" in n for n in full["notes"])
    reduced = aggregate(collect_results(res), protocol="reduced")
    assert reduced["cells"][("DEFLECT", "So2Sat")].n == 1


def test_paper_numbers() -> None:
    assert [k for k, _ in paper.ROWS] == list(paper.TABLE1)
    assert paper.TABLE1["deflect"]["MADOS"] == (50.5, 0.2)
    for method, printed in paper.PRINTED_AVERAGES.items():
        row = paper.TABLE1[method]
        cls = np.mean([row[c][0] for c in paper.CLASSIFICATION_COLUMNS])
        seg = np.mean([row[c][0] for c in paper.SEGMENTATION_COLUMNS])
        perf = np.mean([row[c][0] for c in (*paper.CLASSIFICATION_COLUMNS,
                                            *paper.SEGMENTATION_COLUMNS)])
        # printed from unrounded values: within rounding of the rounded table's means
        assert np.allclose((cls, seg, perf), printed, atol=0.1 + 1e-9)
    avg, printed = paper.paper_averages("lora")
    assert not printed and avg["Avg. Perf."] == pytest.approx((54.7 + 97.4 + 39.4 + 78.8 + 45.2) / 5)


def test_smoke_results_never_enter_results(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert smoke_config("m-so2sat", str(GEOBENCH)).out is None
    with pytest.raises(ValueError, match="smoke run's numbers mean nothing"):
        smoke_config("m-so2sat", str(GEOBENCH), out="results").validate()
    args = _train_parser().parse_args(["--dataset", "m-so2sat", "--root", str(GEOBENCH), "--smoke"])
    cfg = config_from_args(args)
    assert cfg.out is not None and Path(cfg.out).resolve() != (tmp_path / "results").resolve()
