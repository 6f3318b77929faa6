"""The small real experiment: the cross-validated sample task (deflect_min.data.ben_samples), the
patch-bootstrap statistics (deflect_min.stats), and the sweep (benchmarks/real_small.py), whose
committed rows a rerun reproduces."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import real_small
from deflect_min.data import make_dataloaders
from deflect_min.data.ben_samples import LABELS, BigEarthNetSampleTask, fold_of
from deflect_min.data.catalogue import dataset_class
from deflect_min.samples import load_samples
from deflect_min.stats import bootstrap, paired_bootstrap, score

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "real_small"


# ----------------------------------------------------------------------------- folds
def test_folds_are_stratified_balanced_and_seeded():
    y = np.array([0] * 18 + [1] * 42)
    fold = fold_of(y, folds=5, repeat=0)
    per_class = np.array([[np.sum((fold == k) & (y == c)) for k in range(5)] for c in (0, 1)])
    assert (per_class.max(1) - per_class.min(1) <= 1).all()
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 60
    assert (fold_of(y, folds=5, repeat=0) == fold).all()
    assert (fold_of(y, folds=5, repeat=1) != fold).any()


def test_fold_errors():
    with pytest.raises(ValueError, match="at least 3"):
        fold_of([0, 1] * 5, folds=2, repeat=0)
    with pytest.raises(ValueError, match="fewer than folds=5"):
        fold_of([0] * 10 + [1] * 3, folds=5, repeat=0)


@pytest.mark.parametrize("label", list(LABELS))
def test_splits_partition_the_sixty_patches(label):
    samples = load_samples(subset="all")
    positives = samples.label_of(*LABELS[label])
    for fold in range(5):
        ds = {s: BigEarthNetSampleTask(split=s, label=label, fold=fold, repeat=1)
              for s in ("train", "val", "test")}
        ids = {s: set(d.patch_ids) for s, d in ds.items()}
        assert sum(map(len, ids.values())) == 60 == len(set.union(*ids.values()))
        assert [len(d) for d in ds.values()] == [36, 12, 12]
        # the val fold of fold k is the test fold of fold k + 1
        nxt = BigEarthNetSampleTask(split="test", label=label, fold=(fold + 1) % 5, repeat=1)
        assert ids["val"] == set(nxt.patch_ids)
        sample = ds["test"][0]
        i = samples.patch_ids.index(ds["test"].patch_ids[0])
        assert sample["image"].shape == (12, 120, 120)
        torch.testing.assert_close(sample["image"], samples.reflectance[i])
        assert int(sample["label"]) == int(positives[i])


def test_band_statistics_come_from_the_training_patches_only():
    kw = dict(label="water", fold=3, repeat=0)
    test = BigEarthNetSampleTask(split="test", **kw)
    train = BigEarthNetSampleTask(split="train", **kw)
    x = torch.stack([train[i]["image"] for i in range(len(train))]).double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.transpose(0, 1).reshape(12, -1).std(dim=1)
    for split in (train, test):
        stats = split.band_stats
        assert [s[0] for s in stats.values()] == pytest.approx(mean.tolist(), rel=1e-6)
        assert [s[1] for s in stats.values()] == pytest.approx(std.tolist(), rel=1e-6)


def test_dataset_errors_and_registry(tmp_path):
    assert dataset_class("ben-samples") is BigEarthNetSampleTask
    assert BigEarthNetSampleTask.metric == "balanced_accuracy"
    with pytest.raises(ValueError, match="unknown label 'snow'"):
        BigEarthNetSampleTask(label="snow")
    with pytest.raises(ValueError, match="fold=5 is not in 0 ... 4"):
        BigEarthNetSampleTask(fold=5)
    with pytest.raises(FileNotFoundError, match="bigearthnet_samples.npz"):
        BigEarthNetSampleTask(root=tmp_path)


def test_loaders_pass_dataset_kwargs():
    loaders = make_dataloaders("ben-samples", real_small._samples_root(), batch_size=4,
                               num_workers=0, size=112,
                               dataset_kwargs={"label": "forest", "fold": 1, "repeat": 2})
    batch = next(iter(loaders["test"]))
    assert batch["image"].shape == (4, 12, 112, 112)
    assert loaders["test"].dataset.fold == 1 and loaders["train"].dataset.repeat == 2


# ----------------------------------------------------------------------------- statistics
def test_scores_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    pred = rng.integers(0, 2, (3, 40))
    assert score(y, pred) == pytest.approx(
        np.mean([sk.balanced_accuracy_score(y, p) for p in pred]))
    assert score(y, pred, "f1_macro") == pytest.approx(
        np.mean([sk.f1_score(y, p, average="macro") for p in pred]))
    # a bootstrap draw is a resample with replacement: weights equal repeated samples
    from deflect_min.stats import METRICS

    idx = rng.integers(0, 40, 40)
    w = np.bincount(idx, minlength=40)[None].astype(float)
    assert METRICS["balanced_accuracy"](y, pred[:1], w)[0, 0] == pytest.approx(
        sk.balanced_accuracy_score(y[idx], pred[0, idx]))


def test_bootstrap_intervals():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    good = np.where(rng.random((2, 60)) < 0.85, y, 1 - y)
    bad = np.where(rng.random((2, 60)) < 0.55, y, 1 - y)
    iv = bootstrap(y, good)
    assert iv.low <= iv.value <= iv.high and iv.high - iv.low < 0.4
    assert bootstrap(y, good) == iv  # seeded
    same = paired_bootstrap(y, good, good)
    assert same.value == same.low == same.high == 0 and same.p_not_above_zero == 1
    better = paired_bootstrap(y, good, bad)
    assert better.low > 0 and better.p_not_above_zero < 0.05
    with pytest.raises(ValueError, match="same samples"):
        bootstrap(y, good[:, :50])
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap(y, good, "auc")


# ----------------------------------------------------------------------------- the sweep
def _record(method, setting, val_ba, val_loss):
    return {"key": {"method": method, "task": "water", "seed": 0, "fold": 0,
                    "setting": setting}, "val": {"balanced_accuracy": val_ba, "loss": val_loss}}


def test_choice_on_validation_and_its_ties():
    chosen = real_small.choose([_record("lora", "lr=0.001", 0.6, 0.5),
                                _record("lora", "lr=0.0001", 0.7, 0.9),
                                _record("full", "lr=0.001", 0.6, 0.4),
                                _record("full", "lr=0.0001", 0.6, 0.5),
                                _record("norm", "lr=0.001", 0.6, 0.5),
                                _record("norm", "lr=0.0001", 0.6, 0.5)])
    assert chosen[("lora", "water", 0, 0)] == "lr=0.0001"  # higher validation score
    assert chosen[("full", "water", 0, 0)] == "lr=0.001"  # tie: lower validation loss
    assert chosen[("norm", "water", 0, 0)] == "lr=0.0001"  # tie again: the smaller rate


def test_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    argv = ["--methods", "logistic-12band", "--tasks", "water", "--seeds", "1",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    real = real_small.run_key
    calls = []

    def dies_after_seven(key, **kw):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(key)
        return real(key, **kw)

    monkeypatch.setattr(real_small, "run_key", dies_after_seven)
    with pytest.raises(KeyboardInterrupt):
        real_small.main(argv)
    done = len(list((tmp_path / "work" / "rows").glob("*.json")))
    assert done == 7
    calls.clear()
    monkeypatch.setattr(real_small, "run_key", lambda key, **kw: (calls.append(key),
                                                                   real(key, **kw))[1])
    out = real_small.main(argv)
    assert len(calls) == 5 * len(real_small.LOGISTIC_C) - 7  # only the runs not yet done
    rows = list(csv.DictReader((out / "runs.csv").open()))
    chosen = {(r["fold"], r["setting"]) for r in rows if r["selected"] == "True"}
    assert len(chosen) == 5  # one C per fold
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["runs"] == 20 and meta["settings"]["folds"] == 5


def _committed(method, task, seed, fold, setting):
    """The committed rows of runs.csv and predictions.csv of one run."""
    key = (method, task, str(seed), str(fold), setting)
    return tuple([r for r in csv.DictReader((RESULTS / name).open())
                  if (r["method"], r["task"], r["seed"], r["fold"], r["setting"]) == key]
                 for name in ("runs.csv", "predictions.csv"))


def test_the_committed_sweep_is_complete():
    meta = json.loads((RESULTS / "sweep.json").read_text())
    s = meta["settings"]
    rows = list(csv.DictReader((RESULTS / "runs.csv").open()))
    runs = {(r["method"], r["task"], r["seed"], r["fold"], r["setting"]) for r in rows}
    expected = real_small.keys(methods=s["methods"], tasks=s["tasks"], seeds=s["seeds"],
                               folds=s["folds"], lrs=s["lrs"])
    assert runs == {(k.method, k.task, str(k.seed), str(k.fold), k.setting)
                    for k in expected}
    selected = {(r["method"], r["task"], r["seed"], r["fold"]) for r in rows
                if r["selected"] == "True"}
    assert len(selected) == len({k[:4] for k in runs})
    preds = list(csv.DictReader((RESULTS / "predictions.csv").open()))
    assert len(preds) == 12 * len(runs)


@pytest.mark.parametrize("method, setting", [("deflect", "lr=0.001"),
                                             ("logistic-12band", "C=1")])
def test_a_committed_row_is_reproduced(tmp_path, method, setting):
    """A rerun on this CPU gives the committed row: the same test metrics and, to rounding, the
    same probability for every test patch (one full-size run of the sweep, ~15 s)."""
    meta = json.loads((RESULTS / "sweep.json").read_text())
    s = meta["settings"]
    task, seed, fold = "water", 1, 2
    out = real_small.main(["--only", f"method={method},task={task},seed={seed},fold={fold},"
                           f"setting={setting}", "--methods", method, "--tasks", task,
                           "--folds", str(s["folds"]), "--seeds", str(s["seeds"]),
                           "--lrs", ",".join(map(str, s["lrs"])), "--steps", str(s["steps"]),
                           "--img-size", str(s["img_size"]), "--threads", str(s["threads"]),
                           "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    rows, preds = _committed(method, task, seed, fold, setting)
    assert rows and preds
    new_rows, new_preds = (list(csv.DictReader((out / name).open()))
                           for name in ("runs.csv", "predictions.csv"))
    test = {r["metric"]: float(r["value"]) for r in rows if r["split"] == "test"}
    new_test = {r["metric"]: float(r["value"]) for r in new_rows if r["split"] == "test"}
    assert new_test.keys() == test.keys()
    for metric in ("balanced_accuracy", "f1_macro", "accuracy"):
        assert new_test[metric] == test[metric]
    assert [p["patch_id"] for p in new_preds] == [p["patch_id"] for p in preds]
    assert [float(p["prob"]) for p in new_preds] == pytest.approx(
        [float(p["prob"]) for p in preds], abs=1e-4)


def test_a_sweep_run_is_a_deflect_train_config(tmp_path):
    """Each deep run of the sweep is a plain TrainConfig: its config.yaml, given to
    ``deflect-train --config``, gives back the same settings (dataset_kwargs included), and a
    result file under results/ (the sweep keeps its own CSVs instead)."""
    from deflect_min import cli
    from deflect_min.training.run import effective_config_yaml

    key = real_small.Key("deflect+lora", "forest", seed=1, fold=4, setting="lr=0.0001")
    cfg = real_small.train_config(key, folds=5, steps=16, img_size=112, work_dir=tmp_path)
    cfg.validate()
    path = tmp_path / "config.yaml"
    path.write_text(effective_config_yaml(cfg.to_dict()))
    parser = cli._train_parser()
    argv = ["--config", str(path)]
    again = cli.config_with_file(parser.parse_args(argv), parser.given(argv))
    differs = {k for k, v in again.to_dict().items() if cfg.to_dict()[k] != v}
    assert differs == {"out"} and again.out == "results"  # deflect-train writes its result file
    assert again.dataset_kwargs == {"label": "forest", "folds": 5, "fold": 4, "repeat": 1}
