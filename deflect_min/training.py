"""Training and evaluation: one Lightning run per (dataset, GFM, method, seed), and the Table 1.

:func:`train` takes a :class:`TrainConfig` and returns (and writes, as JSON) a result dict::

    from deflect_min.training import TrainConfig, train
    result = train(TrainConfig(dataset="m-brick-kiln", root="data/geobench", method="deflect",
                               download=True))
    result["metrics"]["test"]["f1_macro"]

What happens, in order:

1. **Data** (:func:`build_loaders`): the benchmark's train / val / test loaders with the crops of
   :func:`deflect_min.data.make_dataloaders` (classification resized to ``img_size``;
   segmentation trained on random crops, evaluated on whole images with
   :func:`~deflect_min.data.sliding_window_logits`, as PANGAEA does).
2. **Model**: :func:`~deflect_min.load_gfm` + :func:`~deflect_min.build_model`; the band names
   of every loader must equal the model's ``bands`` (order included), checked **before** training.
3. **Lightning** (:class:`TaskModule`): AdamW, MultiStepLR at 60 % and 90 % of the optimizer
   steps, cross-entropy (ignore index -1), validation each epoch, a checkpoint every epoch
   (``last.ckpt``) and the best one by the validation metric (``best.ckpt``), then the test split
   with the best checkpoint.
4. **Result**: metrics, per-class values, confusion matrix, learning curves, tuned parameters,
   wall time, device, versions and the full config, written to
   ``<out>/<dataset>/<gfm>/<run>/seed<k>.json`` (``seed<k>.reduced.json`` under the reduced
   protocol, so that the two never overwrite each other).

**Protocols** (named in every result; the table never mixes them):

* ``"full"``: PANGAEA's schedule (``../shared/notes/method.md`` §6.3): 50 epochs for
  classification, 80 for segmentation, batch 8, AdamW lr 1e-4, weight decay 0.05.
* ``"reduced"``: an evening on a Colab T4: GEO-Bench's ``0.10x_train`` partition for the
  classification tasks (the training split from the partition file; validation and test
  splits unchanged, so that both protocols are evaluated on the same images), and a
  fixed budget of optimizer steps (``max_steps``, default 1000) for the segmentation tasks
  (or for any task when ``max_steps`` is given).

**Metrics** (torchmetrics confusion matrix, accumulated over the split; all values are fractions
in [0, 1]): ``accuracy`` and ``f1_macro`` for classification; ``accuracy`` (pixels), ``miou`` and
the per-class IoU for segmentation, plus ``iou_burn_scar`` (IoU of the burn-scar class) for HLS
Burn Scars. Macro averages skip classes absent from both the targets and the predictions of the
split (torchmetrics' and scikit-learn's convention). **Burn Scars in the table**: the paper's
column says "IoU" while PANGAEA, whose protocol and code the paper follows, reports the mIoU
over both classes for this dataset; ``miou`` therefore fills the table by default
(``hls_metric="iou_burn_scar"`` picks the other, for training and for ``deflect-table``), and
both are recorded in every result. Which one the paper printed is not known.

**Resume**: ``resume=True`` continues from ``last.ckpt``. Lightning's checkpoint does not hold
the random-number state, so the checkpoint also holds the torch (CPU and CUDA), numpy and python
RNG states and the state of the training sampler's generator: on CPU, a run interrupted after
any epoch and resumed ends with bit-identical metrics to an uninterrupted one. (On several GPUs
each process has its own RNG; only the first one's is saved, so a resumed DDP run continues
correctly but is not bit-identical.) Checkpoints hold the tuned parameters and the buffers only:
frozen pretrained weights are rebuilt from the GFM's weights, so a PEFT checkpoint of ViT-L takes
megabytes, not gigabytes.

**Precision** (:func:`default_precision`): fp32 on CPU, ``"bf16-mixed"`` on GPUs with native
bf16 (compute capability >= 8.0), ``"16-mixed"`` (fp16 autocast with a gradient scaler) below
(the T4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "PROTOCOLS",
    "TASK_EPOCHS",
    "REDUCED_PARTITION",
    "REDUCED_MAX_STEPS",
    "SMOKE_ARCH",
    "FIXTURES",
    "TrainConfig",
    "TaskModule",
    "smoke_config",
    "default_precision",
    "metrics_from_confusion",
    "table_metric",
    "check_bands",
    "build_loaders",
    "apply_geobench_partition",
    "run_name",
    "result_path",
    "train",
    "load_model",
    "load_results",
    "collect_results",
    "Cell",
    "aggregate",
    "table_rows",
    "render_markdown",
    "render_csv",
    "write_table",
]

#: The two protocols a result can belong to.
PROTOCOLS = ("full", "reduced")
#: PANGAEA's epochs per task (full protocol).
TASK_EPOCHS = {"classification": 50, "segmentation": 80}
#: GEO-Bench train partition of the reduced protocol (classification tasks).
REDUCED_PARTITION = "0.10x_train"
#: Optimizer steps of the reduced protocol where no partition applies (segmentation).
REDUCED_MAX_STEPS = 1000
#: The tiny ViT of smoke runs (CI, notebooks under ``DEFLECT_SMOKE=1``): seconds on a CPU.
SMOKE_ARCH = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
#: The test fixtures of each dataset, relative to the repository root (smoke runs: CI and the
#: notebooks under ``DEFLECT_SMOKE=1``), e.g. ``smoke_config(d, repo / FIXTURES[d])``.
FIXTURES = {"m-so2sat": "tests/data/geobench", "m-brick-kiln": "tests/data/geobench",
            "m-forestnet": "tests/data/geobench", "hls-burn-scars": "tests/data/hls_burn_scars",
            "mados": "tests/data/mados"}
#: Positive class of the binary segmentation task (``iou_<name>`` is recorded).
_POSITIVE_CLASS = {"hls-burn-scars": (1, "iou_burn_scar")}
#: Config keys that may change between an interrupted run and its resumption.
_RESUME_FREE = {"resume", "download", "root", "out", "work_dir", "num_workers", "quiet",
                "progress_bar", "accelerator", "devices", "strategy"}


# ============================================================================ configuration
@dataclass
class TrainConfig:
    """Everything a run depends on; every field is recorded in the result.

    Attributes:
        dataset: a :data:`deflect_min.data.DATASETS` key (``"m-so2sat"``, ``"m-brick-kiln"``,
            ``"m-forestnet"``, ``"hls-burn-scars"``, ``"mados"``).
        root: the dataset's root folder.
        gfm: a :data:`deflect_min.GFM_NAMES` name.
        weights: ``"download"`` (official weights), a checkpoint path, or ``None`` (random
            initialisation: CI and smoke runs).
        method: a :data:`deflect_min.METHODS` name.
        method_kwargs: the method's own settings (``layers``, ``rank``, ``stream``,
            ``deflect``, ``lora_rank``, ``input`` ...), passed to ``adapt``.
        seed: seeds python, numpy, torch and the training shuffle.
        protocol: ``"full"`` or ``"reduced"`` (see the module docstring).
        partition: GEO-Bench train partition of the reduced protocol (default
            ``"0.10x_train"`` for the classification tasks; ``None`` under ``"full"``).
        epochs: default 50 (classification) / 80 (segmentation); other values need
            ``protocol="reduced"`` (or a smoke run).
        max_steps: optimizer-step budget (reduced protocol; default 1000 for segmentation).
        batch_size, eval_batch_size: training batch (PANGAEA: 8); evaluation batch (default:
            the training batch).
        lr, weight_decay, betas: AdamW.
        milestones, gamma: MultiStepLR at these fractions of the optimizer steps.
        img_size: encoder input size.
        bands: the input bands (default: every band of the dataset).
        eval_mode: segmentation evaluation on ``"full"`` images (sliding windows, PANGAEA) or
            the ``"center"`` crop (quicker).
        hls_metric: which HLS Burn Scars metric fills the table and picks the best checkpoint:
            ``"miou"`` (PANGAEA) or ``"iou_burn_scar"``.
        precision: ``"auto"`` (:func:`default_precision`) or a Lightning precision string.
        accelerator, devices, strategy: Lightning ``Trainer`` arguments (``devices=2,
            strategy="ddp"`` for several GPUs; ``"ddp_notebook"`` inside Jupyter).
        num_workers: DataLoader workers (Colab: 2).
        download: download the dataset if missing.
        out: results folder (``None``: write nothing).
        work_dir: checkpoints folder (``<work_dir>/<dataset>/<gfm>/<run>/seed<k>``).
        resume: continue from ``last.ckpt`` if there is one.
        arch_overrides: timm ViT arguments replacing the GFM's architecture (tiny test models);
            makes the run a smoke run.
        head_kwargs: task head arguments (e.g. ``{"channels": 16}`` for a tiny UPerNet).
        smoke: mark the result as a smoke run (never enters a table).
        quiet: no progress bar, no model summary, no Lightning info messages (reproducible
            notebook outputs).
        progress_bar: override the progress bar (default: ``not quiet``).
        name: results sub-folder of this run (default: :func:`run_name`).
    """

    dataset: str
    root: str = "data"
    gfm: str = "scalemae"
    weights: str | None = "download"
    method: str = "deflect"
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    protocol: str = "full"
    partition: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 8
    eval_batch_size: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[float, ...] = (0.6, 0.9)
    gamma: float = 0.1
    img_size: int = 224
    bands: list[str] | None = None
    eval_mode: str = "full"
    hls_metric: str = "miou"
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_workers: int = 2
    download: bool = False
    out: str | None = "results"
    work_dir: str = "runs"
    resume: bool = False
    arch_overrides: dict[str, Any] | None = None
    head_kwargs: dict[str, Any] | None = None
    smoke: bool = False
    quiet: bool = False
    progress_bar: bool | None = None
    name: str | None = None

    # ------------------------------------------------------------------ derived
    @property
    def task(self) -> str:
        """``"classification"`` or ``"segmentation"``."""
        return _dataset_cls(self.dataset).task

    @property
    def is_smoke(self) -> bool:
        """A smoke run: marked so, or a tiny architecture."""
        return bool(self.smoke or self.arch_overrides)

    @property
    def num_epochs(self) -> int:
        """Epochs of the run (the task default unless set)."""
        return int(self.epochs) if self.epochs is not None else TASK_EPOCHS[self.task]

    @property
    def train_partition(self) -> str | None:
        """The GEO-Bench train partition used (reduced protocol, classification)."""
        if self.partition is not None:
            return self.partition
        if self.protocol == "reduced" and self.task == "classification" and self.max_steps is None:
            return REDUCED_PARTITION
        return None

    @property
    def step_budget(self) -> int | None:
        """``max_steps`` of the run (the reduced protocol's default for segmentation)."""
        if self.max_steps is not None:
            return int(self.max_steps)
        if self.protocol == "reduced" and self.train_partition is None:
            return REDUCED_MAX_STEPS
        return None

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot run or would mislabel the result."""
        from deflect_min.adaptation import METHODS
        from deflect_min.models import GFM_NAMES

        _dataset_cls(self.dataset)
        if self.gfm not in GFM_NAMES:
            raise ValueError(f"unknown gfm {self.gfm!r}; valid names are {list(GFM_NAMES)}.")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods are "
                             f"{sorted(METHODS)}.")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}.")
        if self.eval_mode not in ("full", "center"):
            raise ValueError(f"eval_mode must be 'full' or 'center', got {self.eval_mode!r}.")
        if self.hls_metric not in ("miou", "iou_burn_scar"):
            raise ValueError(f"hls_metric must be 'miou' or 'iou_burn_scar', got "
                             f"{self.hls_metric!r}.")
        for name in ("batch_size", "img_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.epochs is not None and int(self.epochs) <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}.")
        if self.max_steps is not None and int(self.max_steps) <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}.")
        if self.partition is not None and self.task != "classification":
            raise ValueError("partition= selects a GEO-Bench train partition; "
                             f"{self.dataset} is not a GEO-Bench task.")
        if self.protocol == "full" and not self.is_smoke:
            changed = [f"{k}={getattr(self, k)!r}" for k in ("epochs", "max_steps", "partition")
                       if getattr(self, k) is not None
                       and not (k == "epochs" and self.epochs == TASK_EPOCHS[self.task])]
            if changed:
                raise ValueError(
                    f"protocol='full' is PANGAEA's schedule ({TASK_EPOCHS[self.task]} epochs, "
                    f"the whole training split); {', '.join(changed)} changes it. Use "
                    f"protocol='reduced' for a shorter budget, so that the result is not "
                    f"mistaken for a full run.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid: {sorted(names)}")
        d = dict(d)
        for k in ("betas", "milestones"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def smoke_config(dataset: str, root: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """A seconds-long CPU run on the test fixtures: tiny random ViT, 2 epochs, quiet.

    ``overrides`` replace any field (e.g. ``method="lora"``, ``out=...``, ``work_dir=...``).
    """
    task = _dataset_cls(dataset).task
    base: dict[str, Any] = dict(
        dataset=dataset, root=str(root), weights=None, arch_overrides=dict(SMOKE_ARCH),
        img_size=32, epochs=2, batch_size=2, num_workers=0, precision="32-true",
        accelerator="cpu", smoke=True, quiet=True, protocol="full",
        head_kwargs={"channels": 16} if task == "segmentation" else None,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _dataset_cls(name: str):
    from deflect_min.data import DATASETS

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {list(DATASETS)}.")
    return DATASETS[name]


def _jsonable(o: Any) -> Any:
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Tensor):
        return o.tolist()
    return repr(o)


def table_metric(dataset: str, hls_metric: str = "miou") -> str:
    """The metric of ``dataset``'s Table 1 column (and of the best-checkpoint choice)."""
    task = _dataset_cls(dataset).task
    if task == "classification":
        return "f1_macro"
    if dataset == "hls-burn-scars":
        return hls_metric
    return "miou"


# ============================================================================ precision
def default_precision(accelerator: str = "auto") -> str:
    """Lightning precision for this machine: ``"32-true"`` on CPU, ``"bf16-mixed"`` on GPUs with
    compute capability >= 8.0 (native bf16), ``"16-mixed"`` (fp16 + gradient scaler) below.

    The capability is read with ``torch.cuda.get_device_capability``, not
    ``torch.cuda.is_bf16_supported()``, which returns True on a T4 (emulated bf16).
    """
    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    major, minor = torch.cuda.get_device_capability()
    return "bf16-mixed" if (major, minor) >= (8, 0) else "16-mixed"


# ============================================================================ metrics
def metrics_from_confusion(confmat: Tensor | np.ndarray, task: str, *,
                           positive: tuple[int, str] | None = None) -> dict[str, Any]:
    """Metrics from a confusion matrix ``C[target, prediction]`` (counts).

    Classification: ``accuracy`` (overall), ``f1_macro`` and ``f1_per_class``. Segmentation:
    ``accuracy`` (pixels), ``miou`` and ``iou_per_class``, plus ``positive[1]`` = the IoU of
    class ``positive[0]`` when given. Macro means skip classes with ``tp + fp + fn == 0``
    (absent from targets and predictions), as torchmetrics' ``average="macro"`` does; their
    per-class value is ``None``.
    """
    cm = torch.as_tensor(np.asarray(confmat), dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(cm.shape)}")
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    total = cm.sum()
    present = (tp + fp + fn) > 0
    out: dict[str, Any] = {"accuracy": float(tp.sum() / total) if total > 0 else float("nan")}

    def per_class(num: Tensor, den: Tensor) -> tuple[list[float | None], float]:
        vals = torch.where(present, num / den.clamp_min(1e-300), torch.zeros_like(num))
        mean = float(vals[present].mean()) if present.any() else float("nan")
        return [float(v) if p else None for v, p in zip(vals, present)], mean

    if task == "classification":
        out["f1_per_class"], out["f1_macro"] = per_class(2 * tp, 2 * tp + fp + fn)
    elif task == "segmentation":
        out["iou_per_class"], out["miou"] = per_class(tp, tp + fp + fn)
        if positive is not None:
            index, name = positive
            v = out["iou_per_class"][index]
            out[name] = float(v) if v is not None else float("nan")
    else:
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    return out


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


# ============================================================================ data
def check_bands(model_bands: Sequence[str], data_bands: Sequence[str], where: str = "data"
                ) -> None:
    """Raise ``ValueError`` unless the data's bands are the model's, in the same order."""
    model_bands, data_bands = list(model_bands), list(data_bands)
    if model_bands == data_bands:
        return
    if sorted(model_bands) == sorted(data_bands):
        detail = "the same bands in another order (channels are matched by position)"
    else:
        missing = [b for b in model_bands if b not in data_bands]
        extra = [b for b in data_bands if b not in model_bands]
        detail = f"the model expects {missing} which the data lack" if missing else ""
        if extra:
            detail += ("; " if detail else "") + f"the data hold {extra} which the model does not"
    raise ValueError(
        f"band mismatch between the model and the {where}: model bands {model_bands}, "
        f"{where} bands {data_bands}: {detail}. Load the data with bands={model_bands} or "
        f"build the model for the data's bands (TrainConfig.bands).")


def _dataset_of(loader: Any) -> Any:
    ds = getattr(loader, "dataset", None)
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return ds


def _loader_bands(loader: Any) -> list[str] | None:
    ds = _dataset_of(loader)
    for attr in ("band_names", "bands"):
        value = getattr(ds, attr, None)
        if value is not None and not isinstance(value, str):
            return list(value)
    return None


def apply_geobench_partition(ds: Any, partition: str, split: str) -> None:
    """Restrict a GEO-Bench dataset to ``split`` of ``<task_dir>/<partition>_partition.json``."""
    task_dir = Path(ds.task_dir)
    path = task_dir / f"{partition}_partition.json"
    if not path.is_file():
        found = sorted(p.name[: -len("_partition.json")] for p in task_dir.glob("*_partition.json"))
        raise FileNotFoundError(
            f"GEO-Bench partition {partition!r} not found: no {path}. This task folder has the "
            f"partitions {found}. GEO-Bench v1 ships 0.01x_train ... 1.00x_train with each task; "
            f"download the task again or pass partition=None with max_steps= for a step budget.")
    part = json.loads(path.read_text())
    key = {"val": "valid"}.get(split, split)
    if key not in part:
        raise ValueError(f"{path} has no {key!r} split (it has {list(part)}).")
    ds.sample_names = list(part[key])
    ds.files = [task_dir / f"{n}.hdf5" for n in ds.sample_names]


def build_loaders(cfg: TrainConfig) -> dict[str, torch.utils.data.DataLoader]:
    """Train / val / test loaders of ``cfg`` (partition of the reduced protocol applied).

    The training loader shuffles with its own ``torch.Generator`` seeded with ``cfg.seed`` (whose
    state the checkpoints keep) and drops the last incomplete batch (a batch of one breaks the
    heads' BatchNorm), unless the split is smaller than a batch.
    """
    from deflect_min.data import make_dataloaders

    pin = torch.cuda.is_available() and cfg.accelerator != "cpu"
    common = dict(bands=cfg.bands, size=cfg.img_size, download=cfg.download,
                  num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=pin)
    train_ds = make_dataloaders(cfg.dataset, cfg.root, batch_size=cfg.batch_size,
                                splits=("train",), **common)["train"].dataset
    common["download"] = False
    evals = make_dataloaders(cfg.dataset, cfg.root, batch_size=cfg.batch_size,
                             eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
                             eval_mode=cfg.eval_mode, splits=("val", "test"), **common)
    partition = cfg.train_partition
    if partition is not None:
        apply_geobench_partition(train_ds, partition, "train")  # val and test stay the default
    generator = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, generator=generator,
        num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size,
        pin_memory=pin, persistent_workers=False)  # workers reseeded from `generator` each epoch
    return {"train": train_loader, "val": evals["val"], "test": evals["test"]}


# ============================================================================ Lightning module
class TaskModule(L.LightningModule):
    """A :func:`~deflect_min.build_model` model trained with PANGAEA's recipe.

    Args:
        model: a ``GFMClassifier`` / ``GFMSegmenter`` (anything mapping images to logits).
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: classes of the head.
        ignore_index: target value ignored by the loss and the metrics.
        lr, weight_decay, betas: AdamW (only parameters with ``requires_grad``).
        milestones, gamma: MultiStepLR at these fractions of the optimizer steps (stepped
            every optimizer step).
        eval_mode: segmentation: ``"full"`` evaluates whole images with sliding windows of
            ``window`` px; ``"center"`` evaluates the loader's crops as they are.
        window: sliding-window size (the encoder's input size).
        positive: ``(class index, metric name)`` of a recorded per-class IoU (HLS burn scar).
        precision: the run's precision (named in NaN messages).

    After ``trainer.validate``/``fit``, ``last_val`` holds the latest validation metrics; after
    ``trainer.test``, ``test_result`` holds the test metrics, per-class values and confusion
    matrix.
    """

    def __init__(self, model: nn.Module, *, task: str, num_classes: int, ignore_index: int = -1,
                 lr: float = 1e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999),
                 milestones: Sequence[float] = (0.6, 0.9), gamma: float = 0.1,
                 eval_mode: str = "full", window: int = 224,
                 positive: tuple[int, str] | None = None, precision: str = "32-true") -> None:
        super().__init__()
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
        self.model = model
        self.task = task
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.milestones, self.gamma = tuple(milestones), gamma
        self.eval_mode, self.window = eval_mode, int(window)
        self.positive = positive
        self.precision_name = precision
        self.val_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index)
        self.test_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index)
        self.strict_loading = False  # checkpoints omit frozen weights; checked in on_load_checkpoint
        self.last_val: dict[str, float] = {}
        self.test_result: dict[str, Any] | None = None
        self._loss_sum: Tensor | float = 0.0
        self._loss_n = 0
        self._val_loss_sum: Tensor | float = 0.0
        self._val_loss_n = 0

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.model(x)

    # ------------------------------------------------------------------ steps
    def _unpack(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        target = batch["label"] if self.task == "classification" else batch["mask"]
        return batch["image"], target

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if self.task == "segmentation" and not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0  # every pixel ignored: no signal (not NaN)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def _nan_message(self, loss: Tensor, x: Tensor, batch_idx: int) -> str:
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            cause = (f"the input batch holds {bad} NaN/inf values: the data are not clean (a "
                     f"nodata value the dataset did not mask, or a corrupt file)")
        elif any(not bool(torch.isfinite(p).all()) for p in self.model.parameters()
                 if p.requires_grad):
            cause = (f"the tuned parameters are no longer finite, so an earlier update diverged: "
                     f"lower the learning rate (lr={self.lr:g})")
        elif self.precision_name.startswith("16"):
            cause = ("an fp16 overflow in the forward pass (precision='16-mixed'): use "
                     "precision='bf16-mixed' on GPUs with compute capability >= 8.0, or "
                     "'32-true'")
        else:
            cause = (f"the forward pass turned finite inputs and weights into NaN/inf (an "
                     f"exploding activation): lower the learning rate (lr={self.lr:g}) or use "
                     f"precision='32-true'")
        return (f"training stopped: the loss is {float(loss.detach())} at optimizer step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx}). "
                f"Likely cause: {cause}.")

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._loss_sum, self._loss_n = 0.0, 0
        self.last_val = {}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        x, y = self._unpack(batch)
        loss = self._loss(self.model(x), y)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(self._nan_message(loss, x, batch_idx))
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_n += 1
        return loss

    def _eval_logits(self, x: Tensor) -> Tensor:
        if self.task == "segmentation" and self.eval_mode == "full":
            from deflect_min.data import sliding_window_logits

            return sliding_window_logits(self.model, x, self.num_classes, window=self.window)
        return self.model(x)

    def _eval_step(self, batch: Mapping[str, Tensor], confmat: MulticlassConfusionMatrix
                   ) -> Tensor:
        x, y = self._unpack(batch)
        logits = self._eval_logits(x)
        confmat.update(logits.argmax(1), y)
        return self._loss(logits, y).detach()

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._val_loss_sum, self._val_loss_n = 0.0, 0

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:  # noqa: D102
        self._val_loss_sum = self._val_loss_sum + self._eval_step(batch, self.val_confmat)
        self._val_loss_n += 1

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, self.test_confmat)

    def _epoch_metrics(self, confmat: MulticlassConfusionMatrix) -> dict[str, Any]:
        cm = confmat.compute().cpu()
        confmat.reset()
        m = metrics_from_confusion(cm, self.task, positive=self.positive)
        m["confusion_matrix"] = cm.long().tolist()
        return m

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        m = self._epoch_metrics(self.val_confmat)
        scalars = _scalars(m)
        scalars["loss"] = float(self._val_loss_sum) / max(self._val_loss_n, 1)
        self.last_val = scalars
        for k, v in scalars.items():
            self.log(f"val/{k}", v, prog_bar=k in ("f1_macro", "miou"))

    def on_test_epoch_end(self) -> None:  # noqa: D102
        m = self._epoch_metrics(self.test_confmat)
        self.test_result = m
        for k, v in _scalars(m).items():
            self.log(f"test/{k}", v)

    def train_loss(self) -> float:
        """Mean training loss of the current epoch so far."""
        return float(self._loss_sum) / max(self._loss_n, 1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:  # noqa: D102
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameter")
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas,
                                weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        steps = sorted({max(1, int(round(f * total))) for f in self.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def _frozen_keys(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        frozen = self._frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k not in frozen}
        checkpoint["deflect_min_omitted_frozen"] = len(frozen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        own = set(self.state_dict())
        need = own - self._frozen_keys()
        saved = set(checkpoint["state_dict"])
        missing, unexpected = sorted(need - saved), sorted(saved - own)
        if missing or unexpected:
            raise RuntimeError(
                f"this checkpoint does not fit the model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]} ({len(missing)} / {len(unexpected)} in all). Was it written "
                f"by a run with another GFM, method or method settings?")


# ============================================================================ run state
class _RunState(Callback):
    """Learning curves, wall time and everything Lightning's checkpoint does not restore:
    the python / numpy / torch (CPU, CUDA) RNG states and the training sampler's generator."""

    def __init__(self, generator: torch.Generator | None, config: dict[str, Any]) -> None:
        self.generator = generator
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.resumed_from_epoch: int | None = None
        self.active = True

    @property
    def state_key(self) -> str:  # noqa: D102
        return "deflect_min_run_state"

    def elapsed(self) -> float:
        """Wall time of the run so far, previous sessions included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: TaskModule) -> None:  # noqa: D102
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch),
                                 "step": int(trainer.global_step),
                                 "train_loss": pl_module.train_loss(), "lr": lr}
        entry.update({f"val_{k}": v for k, v in pl_module.last_val.items()})
        self.history.append(entry)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        np_state = np.random.get_state()
        cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.get_rng_state_all()
        return {
            "python_rng": random.getstate(),
            "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                          float(np_state[4])],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            "sampler_generator": self.generator.get_state() if self.generator is not None else None,
            "history": list(self.history),
            "elapsed": self.elapsed(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if not self.active:
            return
        saved = state.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in self.config.items()
                if k not in _RESUME_FREE and saved.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume: the checkpoint was written with other settings "
                             f"({detail}). Use the same settings, or resume=False to start "
                             f"afresh.")
        random.setstate(_to_tuple(state["python_rng"]))
        s = state["numpy_rng"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4]))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.generator is not None and state.get("sampler_generator") is not None:
            self.generator.set_state(state["sampler_generator"])
        self.history = list(state.get("history", []))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.started = time.perf_counter()
        self.resumed_from_epoch = self.history[-1]["epoch"] if self.history else None


class _StepBudget(Callback):
    """Stop at ``max_steps`` through ``trainer.should_stop``, so that Lightning validates (and
    checkpoints) the last, partial epoch too (reaching ``max_steps`` alone skips both)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = int(max_steps)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:  # noqa: D102
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ============================================================================ bookkeeping
def run_name(method: str, method_kwargs: Mapping[str, Any] | None = None) -> str:
    """Results sub-folder of a run: the method, plus its non-default settings.

    ``run_name("deflect")`` is ``"deflect"`` (a Table 1 row);
    ``run_name("deflect", {"rank": 4, "stream": "single"})`` is
    ``"deflect_rank-4_stream-single"`` (an ablation, kept apart).
    """
    parts = [method]
    for k in sorted(method_kwargs or {}):
        v = (method_kwargs or {})[k]
        if isinstance(v, (list, tuple)):
            v = ".".join(str(i) for i in v)
        parts.append(re.sub(r"[^A-Za-z0-9.+=-]", "", f"{k}-{v}"))
    return "_".join(parts)


def result_path(cfg: TrainConfig, out: str | os.PathLike | None = None) -> Path:
    """``<out>/<dataset>/<gfm>/<run>/seed<k>.json`` (``seed<k>.reduced.json`` when reduced)."""
    out = Path(out if out is not None else (cfg.out or "results"))
    suffix = "" if cfg.protocol == "full" else f".{cfg.protocol}"
    name = cfg.name or run_name(cfg.method, cfg.method_kwargs)
    return out / cfg.dataset / cfg.gfm / name / f"seed{cfg.seed}{suffix}.json"


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    suffix = "" if cfg.protocol == "full" else f".{cfg.protocol}"
    name = cfg.name or run_name(cfg.method, cfg.method_kwargs)
    return Path(cfg.work_dir) / cfg.dataset / cfg.gfm / name / f"seed{cfg.seed}{suffix}"


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    import deflect_min

    out: dict[str, str | None] = {"python": sys.version.split()[0],
                                  "deflect_min": deflect_min.__version__}
    for pkg in ("torch", "timm", "lightning", "torchmetrics", "torchgeo", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
        out["deflect_min_git"] = commit.stdout.strip() or None if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        out["deflect_min_git"] = None
    return out


def _device(trainer: L.Trainer) -> str:
    dev = trainer.strategy.root_device
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        name = torch.cuda.get_device_name(dev)
        n = trainer.num_devices
        return f"{n} x {name} (compute capability {major}.{minor})" if n > 1 else \
            f"{name} (compute capability {major}.{minor})"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return dev.type


def _protocol_detail(cfg: TrainConfig, sizes: Mapping[str, int]) -> str:
    text = ("SMOKE RUN (tiny or random model, not a benchmark number), " if cfg.is_smoke
            else "")
    if cfg.protocol == "full":
        text += f"full: PANGAEA schedule, {cfg.num_epochs} epochs"
    elif cfg.train_partition is not None:
        text += f"reduced: GEO-Bench {cfg.train_partition} partition, {cfg.num_epochs} epochs"
    else:
        text += f"reduced: {cfg.step_budget} optimizer steps"
    if cfg.step_budget is not None and cfg.protocol == "full":
        text += f", max {cfg.step_budget} steps"
    text += (f", batch {cfg.batch_size}, AdamW lr {cfg.lr:g} wd {cfg.weight_decay:g}, "
             f"MultiStepLR at {'/'.join(f'{m:.0%}' for m in cfg.milestones)} "
             f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']} samples)")
    return text


def _schedule(cfg: TrainConfig) -> dict[str, Any]:
    return {"epochs": cfg.num_epochs if cfg.step_budget is None or cfg.epochs is not None
            else None, "max_steps": cfg.step_budget, "partition": cfg.train_partition,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "milestones": list(cfg.milestones), "img_size": cfg.img_size,
            "eval_mode": cfg.eval_mode if cfg.task == "segmentation" else None}


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Lightning's info messages and its environment-dependent warnings."""
    if not enabled:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
             "lightning_fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning(\.|_|$)")
            warnings.filterwarnings("ignore", module=r"pytorch_lightning")
            warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers"
                                    r"|smaller than the logging interval|LeafSpec|"
                                    r"litlogger|litmodels).*")
            from lightning.fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ============================================================================ train
def train(config: TrainConfig | Mapping[str, Any], *,
          loaders: Mapping[str, Any] | None = None,
          callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train, validate each epoch, test the best checkpoint; return (and write) the result.

    Args:
        config: a :class:`TrainConfig` (or a dict of its fields).
        loaders: ``{"train", "val", "test"}`` DataLoaders to use instead of
            :func:`build_loaders` (their datasets' ``band_names`` are checked against the
            model's bands).
        callbacks: extra Lightning callbacks (plots, an interruption in a test ...).

    Returns:
        The result dict (also written to :func:`result_path` when ``config.out`` is set):
        ``metrics["test"]`` / ``metrics["val_best"]`` (fractions), ``table_metric`` and
        ``table_value``, ``per_class``, ``confusion_matrix``, ``history`` (learning curves),
        ``params`` (tuned encoder and head parameters), ``wall_time_s``, ``device``,
        ``precision``, ``versions``, ``config``, ``protocol``, ``protocol_detail``,
        ``schedule``, ``smoke``, ``pretrained``, ``checkpoint`` ...

    Raises:
        ValueError: bad settings, bands of the data that differ from the model's, a resume
            with other settings.
        FloatingPointError: a NaN/inf loss (the message names the step and the likely cause).
    """
    from deflect_min.build import build_model
    from deflect_min.models import load_gfm

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    ds_cls = _dataset_cls(cfg.dataset)
    task = ds_cls.task
    metric = table_metric(cfg.dataset, cfg.hls_metric)
    precision = default_precision(cfg.accelerator) if cfg.precision == "auto" else cfg.precision
    config_dict = cfg.to_dict()
    progress = (not cfg.quiet) if cfg.progress_bar is None else bool(cfg.progress_bar)

    with _quiet(cfg.quiet):
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        loaders = dict(loaders) if loaders is not None else build_loaders(cfg)
        missing = [s for s in ("train", "val", "test") if s not in loaders]
        if missing:
            raise ValueError(f"loaders lack the splits {missing}")

        # ---- bands: fail before anything trains
        data_bands = {s: _loader_bands(loaders[s]) for s in ("train", "val", "test")}
        bands = list(cfg.bands) if cfg.bands is not None else data_bands["train"]
        if bands is None:
            raise ValueError("the training data do not name their bands (no band_names on the "
                             "dataset): set TrainConfig.bands")
        for split, db in data_bands.items():
            if db is not None:
                check_bands(bands, db, where=f"{split} data")
        train_ds = _dataset_of(loaders["train"])
        band_stats = getattr(train_ds, "band_stats", None)
        if band_stats is not None:
            band_stats = {b: band_stats[b] for b in bands}

        # ---- model
        encoder = load_gfm(cfg.gfm, weights=cfg.weights, img_size=cfg.img_size,
                           _arch_overrides=cfg.arch_overrides)
        num_classes = len(ds_cls.classes)
        model = build_model(task, encoder, cfg.method, bands=bands, num_classes=num_classes,
                            band_stats=band_stats, head_kwargs=cfg.head_kwargs,
                            **cfg.method_kwargs)
        check_bands(model.encoder.adaptation["bands"], bands, where="configured bands")
        positive = None
        if cfg.dataset in _POSITIVE_CLASS:
            positive = _POSITIVE_CLASS[cfg.dataset]
        module = TaskModule(model, task=task, num_classes=num_classes,
                            ignore_index=ds_cls.ignore_index if ds_cls.ignore_index is not None
                            else -1,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                            milestones=cfg.milestones, gamma=cfg.gamma, eval_mode=cfg.eval_mode,
                            window=cfg.img_size, positive=positive, precision=precision)

        # ---- trainer
        ckpt_dir = _checkpoint_dir(cfg)
        last = ckpt_dir / "last.ckpt"
        resume_from = last if cfg.resume and last.is_file() else None
        if resume_from is None and ckpt_dir.is_dir():
            for stale in ("last.ckpt", "best.ckpt"):  # a fresh run never resumes an old one
                (ckpt_dir / stale).unlink(missing_ok=True)
        state = _RunState(getattr(loaders["train"], "generator", None), config_dict)
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=f"val/{metric}",
                               mode="max", save_top_k=1, every_n_epochs=1,
                               save_on_train_epoch_end=True, enable_version_counter=False,
                               auto_insert_metric_name=False)
        # every epoch (Lightning's save_last only follows new best checkpoints)
        latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1,
                                 every_n_epochs=1, save_on_train_epoch_end=True,
                                 enable_version_counter=False, auto_insert_metric_name=False)
        step_budget = cfg.step_budget
        max_epochs = cfg.num_epochs if step_budget is None or cfg.epochs is not None else -1
        trainer = L.Trainer(
            max_epochs=max_epochs, max_steps=step_budget if step_budget is not None else -1,
            accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
            precision=precision, logger=False,
            callbacks=[state, *([_StepBudget(step_budget)] if step_budget else []), *callbacks,
                       ckpt, latest],
            enable_progress_bar=progress, enable_model_summary=not cfg.quiet,
            num_sanity_val_steps=0, check_val_every_n_epoch=1, default_root_dir=ckpt_dir,
            log_every_n_steps=1,
        )
        trainer.fit(module, train_dataloaders=loaders["train"], val_dataloaders=loaders["val"],
                    ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
        best = ckpt.best_model_path
        if not best or not Path(best).is_file():
            raise RuntimeError(f"no best checkpoint was written in {ckpt_dir}: did validation "
                               f"run? (val split of {len(loaders['val'].dataset)} samples)")
        state.active = False  # testing the best checkpoint must not rewind the run state
        trainer.test(module, dataloaders=loaders["test"], ckpt_path=best, verbose=not cfg.quiet,
                     weights_only=True)

    test = module.test_result or {}
    best_entry = None  # as ModelCheckpoint chooses: the first epoch with the highest (float32) score
    for h in state.history:
        v = h.get(f"val_{metric}")
        if v is not None and (best_entry is None
                              or np.float32(v) > np.float32(best_entry[f"val_{metric}"])):
            best_entry = h
    counts = model.parameter_counts()
    counts["encoder_tuned_pct"] = 100.0 * counts["encoder_tuned"] / max(counts["encoder_total"], 1)
    sizes = {s: len(_dataset_of(loaders[s])) for s in ("train", "val", "test")}
    card = getattr(model.encoder, "gfm_card", None)
    per_key = "f1_per_class" if task == "classification" else "iou_per_class"
    result: dict[str, Any] = {
        "schema": 1,
        "dataset": cfg.dataset,
        "task": task,
        "gfm": cfg.gfm,
        "method": cfg.method,
        "method_kwargs": config_dict["method_kwargs"],
        "run": cfg.name or run_name(cfg.method, cfg.method_kwargs),
        "seed": int(cfg.seed),
        "protocol": cfg.protocol,
        "protocol_detail": _protocol_detail(cfg, sizes),
        "schedule": _schedule(cfg),
        "smoke": cfg.is_smoke,
        "pretrained": bool(card.pretrained) if card is not None else cfg.weights is not None,
        "weights": card.weights if card is not None else cfg.weights,
        "table_metric": metric,
        "table_value": test.get(metric),
        "metrics": {"test": _scalars(test),
                    "val_best": {k[4:]: v for k, v in (best_entry or {}).items()
                                 if k.startswith("val_")}},
        "metric_scale": "fraction in [0, 1]",
        "best_epoch": best_entry["epoch"] if best_entry else None,
        "class_names": list(ds_cls.classes),
        "per_class": {per_key: test.get(per_key)},
        "confusion_matrix": {"test": test.get("confusion_matrix"),
                             "layout": "rows = target, columns = prediction"},
        "history": state.history,
        "params": counts,
        "split_sizes": sizes,
        "bands": bands,
        "band_stats": band_stats,
        "steps": int(trainer.global_step),
        "epochs_run": len(state.history),
        "resumed": state.resumed_from_epoch is not None,
        "wall_time_s": state.elapsed(),
        "device": _device(trainer),
        "precision": precision,
        "versions": _versions(),
        "config": config_dict,
        "checkpoint": str(best),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg.out is not None and trainer.is_global_zero:
        path = result_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
        result["path"] = str(path)
    return result


def load_model(result: Mapping[str, Any] | str | os.PathLike,
               checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """The trained model of a result (its best checkpoint), in eval mode, on the CPU.

    Rebuilds the model from ``result["config"]`` (downloading nothing that the run did not:
    the same ``weights``) and loads the checkpoint's tuned parameters and buffers. Like
    :func:`train`, it seeds the global RNGs with the run's seed first, so that the frozen
    weights of a randomly initialised encoder are those the run had.

    Args:
        result: a result dict of :func:`train` or the path of its JSON file.
        checkpoint: another checkpoint of the same run (default: ``result["checkpoint"]``).
    """
    from deflect_min.build import build_model
    from deflect_min.models import load_gfm

    if not isinstance(result, Mapping):
        result = json.loads(Path(result).read_text())
    cfg = TrainConfig.from_dict(result["config"])
    ds_cls = _dataset_cls(cfg.dataset)
    stats = result.get("band_stats")
    stats = {b: tuple(v) for b, v in stats.items()} if stats else None
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    encoder = load_gfm(cfg.gfm, weights=cfg.weights, img_size=cfg.img_size,
                       _arch_overrides=cfg.arch_overrides)
    model = build_model(ds_cls.task, encoder, cfg.method, bands=list(result["bands"]),
                        num_classes=len(ds_cls.classes), band_stats=stats,
                        head_kwargs=cfg.head_kwargs, **cfg.method_kwargs)
    ckpt = torch.load(checkpoint or result["checkpoint"], map_location="cpu", weights_only=True)
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    bad = [k for k in missing if k not in frozen]
    if bad or unexpected:
        raise RuntimeError(f"the checkpoint does not fit the rebuilt model: missing {bad[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
    return model.eval()


# ============================================================================ the table
def load_results(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read result JSON files (each gets a ``"path"`` key)."""
    out = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        if not isinstance(r, dict) or "schema" not in r or "metrics" not in r:
            continue
        r["path"] = str(p)
        out.append(r)
    return out


def collect_results(root: str | os.PathLike = "results") -> list[dict[str, Any]]:
    """Every result under ``root`` (``<dataset>/<gfm>/<run>/seed*.json``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return load_results(sorted(root.glob("*/*/*/seed*.json")))


@dataclass
class Cell:
    """One cell of the table: our mean ± std over seeds (percent) and the paper's value."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    seeds: list[int] = field(default_factory=list)
    paper: float | None = None
    paper_std: float | None = None
    note: str = ""
    paths: list[str] = field(default_factory=list)


def aggregate(results: Iterable[Mapping[str, Any]], *, gfm: str | None = None,
              protocol: str | None = None, hls_metric: str = "miou",
              rows: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Aggregate results into Table 1's cells.

    Args:
        results: result dicts (:func:`collect_results`).
        gfm: the encoder (default: the paper's, Scale-MAE).
        protocol: ``"full"`` or ``"reduced"``; default: the one protocol the results hold (an
            error if they hold both: protocols are never mixed silently).
        hls_metric: ``"miou"`` (default, PANGAEA's) or ``"iou_burn_scar"`` for Burn Scars.
        rows: ``(run name, label)`` per row (default: :data:`deflect_min.paper.ROWS`).

    Returns:
        ``{"cells": {(label, column): Cell}, "tuned": {label: (ours %, paper %)}, "rows":
        [...], "protocol", "gfm", "notes": [...]}``.

    Raises:
        ValueError: a smoke result (never a table number), mixed protocols, or a cell whose
            runs differ in schedule.
    """
    from deflect_min import paper

    gfm = gfm or paper.TABLE1_GFM
    rows = list(rows or paper.ROWS)
    results = list(results)
    smoke = [r.get("path", "?") for r in results if r.get("smoke", True)]
    if smoke:
        raise ValueError(f"refusing smoke results (tiny models on fixtures, not benchmark "
                         f"numbers): {smoke[:5]}{' ...' if len(smoke) > 5 else ''}. Move them "
                         f"out of the results folder.")
    results = [r for r in results if r.get("gfm") == gfm]
    protocols = sorted({r["protocol"] for r in results})
    notes: list[str] = []
    if protocol is None:
        if len(protocols) > 1:
            counts = {p: sum(r["protocol"] == p for r in results) for p in protocols}
            raise ValueError(f"the results mix protocols {counts}; choose one (protocol=... or "
                             f"--protocol): the table never mixes them.")
        protocol = protocols[0] if protocols else "full"
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    others = [r for r in results if r["protocol"] != protocol]
    if others:
        notes.append(f"{len(others)} result(s) of another protocol left out.")
    results = [r for r in results if r["protocol"] == protocol]
    random_init = [r for r in results if not r.get("pretrained", False)]
    if random_init:
        notes.append(f"{len(random_init)} run(s) from randomly initialised encoders left out.")
        results = [r for r in results if r.get("pretrained", False)]

    use_paper = gfm == paper.TABLE1_GFM
    cells: dict[tuple[str, str], Cell] = {}
    tuned: dict[str, tuple[float | None, float | None]] = {}
    for key, label in rows:
        mine = [r for r in results if r.get("run") == key]
        pcts = [r["params"]["encoder_tuned_pct"] for r in mine]
        tuned[label] = (float(np.mean(pcts)) if pcts else None,
                        paper.TUNED_PERCENT.get(key) if use_paper else None)
        means: dict[str, float | None] = {}
        for col, ds in paper.DATASET_COLUMNS:
            runs = sorted((r for r in mine if r["dataset"] == ds), key=lambda r: r["seed"])
            metric = table_metric(ds, hls_metric)
            cell = Cell()
            if use_paper and key in paper.TABLE1:
                cell.paper, cell.paper_std = paper.TABLE1[key][col]
            if runs:
                schedules = {json.dumps(r.get("schedule"), sort_keys=True) for r in runs}
                if len(schedules) > 1:
                    raise ValueError(f"{label} / {col}: the runs differ in schedule "
                                     f"({sorted(schedules)}); they cannot share a cell: "
                                     f"{[r['path'] for r in runs]}")
                seeds = [r["seed"] for r in runs]
                if len(set(seeds)) != len(seeds):
                    raise ValueError(f"{label} / {col}: the same seed twice: "
                                     f"{[r['path'] for r in runs]}")
                vals = [100.0 * float(r["metrics"]["test"][metric]) for r in runs]
                cell.mean = float(np.mean(vals))
                cell.std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
                cell.n, cell.seeds = len(vals), seeds
                cell.paths = [r["path"] for r in runs if "path" in r]
            cells[(label, col)] = cell
            means[col] = cell.mean
        paper_avg, printed = (paper.paper_averages(key) if use_paper and key in paper.TABLE1
                              else ({}, False))
        groups = {"Avg. Class.": paper.CLASSIFICATION_COLUMNS,
                  "Avg. Segm.": paper.SEGMENTATION_COLUMNS,
                  "Avg. Perf.": paper.CLASSIFICATION_COLUMNS + paper.SEGMENTATION_COLUMNS}
        for col, members in groups.items():
            vals = [means[c] for c in members]
            cell = Cell(paper=paper_avg.get(col))
            if all(v is not None for v in vals):
                cell.mean = float(np.mean(vals))
                cell.n = min(cells[(label, c)].n for c in members)
            elif any(v is not None for v in vals):
                cell.note = "incomplete"
            if cell.paper is not None and not printed:
                cell.note = (cell.note + "; " if cell.note else "") + "paper value computed"
            cells[(label, col)] = cell
    burn = "mIoU over both classes" if hls_metric == "miou" else "IoU of the burn-scar class"
    notes.append(f"Burn Scars: ours = {burn} (the paper's column says IoU; PANGAEA reports "
                 f"mIoU).")
    return {"cells": cells, "tuned": tuned, "rows": [label for _, label in rows],
            "protocol": protocol, "gfm": gfm, "hls_metric": hls_metric, "notes": notes,
            "paper": use_paper}


def _fmt(mean: float | None, std: float | None, n: int = 0, digits: int = 1) -> str:
    if mean is None:
        return "not run"
    s = f"{mean:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    if n and n < 3:
        s += f" (n={n})"
    return s


def table_rows(table: Mapping[str, Any]) -> list[list[str]]:
    """Header + one row of strings per method (the Markdown layout)."""
    from deflect_min import paper

    header = ["Method", "Tuned %"] + list(paper.COLUMNS)
    out = [header]
    for label in table["rows"]:
        ours_t, paper_t = table["tuned"][label]
        t = "not run" if ours_t is None else f"{ours_t:.3g}"
        if paper_t is not None:
            t += f" ({paper_t:g})"
        row = [label, t]
        for col in paper.COLUMNS:
            c: Cell = table["cells"][(label, col)]
            s = "incomplete" if c.mean is None and c.note.startswith("incomplete") else \
                _fmt(c.mean, c.std, c.n)
            if c.paper is not None:
                s += f" ({_fmt(c.paper, c.paper_std)}{'*' if 'computed' in c.note else ''})"
            row.append(s)
        out.append(row)
    return out


def render_markdown(table: Mapping[str, Any]) -> str:
    """Table 1 as Markdown: ``ours mean ± std (paper mean ± std)`` per cell."""
    rows = table_rows(table)
    lines = [f"**Table 1 reproduction** — GFM `{table['gfm']}`, protocol `{table['protocol']}`. "
             f"Cells: ours, mean ± sample std over seeds, percent"
             + (" (the paper's value in brackets)" if table["paper"] else "") + ".", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join("---" for _ in rows[0]) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines.append("")
    foot = list(table["notes"])
    foot.append("Averages are computed from unrounded per-dataset means; Avg. Perf. is the mean "
                "over the five datasets. (n=k): fewer than 3 seeds. Tuned %: encoder parameters "
                "tuned, mean over our runs of the row (DEFLECT's depends on the input bands).")
    if table["paper"]:
        foot.append("* paper average computed from its rounded per-dataset values (not printed "
                    "in the paper).")
    lines += [f"- {n}" for n in foot]
    return "\n".join(lines) + "\n"


def render_csv(table: Mapping[str, Any]) -> str:
    """Table 1 as CSV, one line per (method, column)."""
    import csv
    import io

    from deflect_min import paper

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["gfm", "protocol", "method", "column", "metric", "status", "ours_mean",
                "ours_std", "n", "seeds", "paper_mean", "paper_std", "note"])
    metrics = dict(paper.COLUMN_METRICS)
    metrics["Burn Scars"] = "mIoU" if table["hls_metric"] == "miou" else "IoU (burn scar)"
    for label in table["rows"]:
        ours_t, paper_t = table["tuned"][label]
        w.writerow([table["gfm"], table["protocol"], label, "Tuned %", "encoder tuned params %",
                    "ok" if ours_t is not None else "not run",
                    "" if ours_t is None else f"{ours_t:.6g}", "", "", "",
                    "" if paper_t is None else paper_t, "", ""])
        for col in paper.COLUMNS:
            c: Cell = table["cells"][(label, col)]
            status = "ok" if c.mean is not None else (
                "incomplete" if c.note.startswith("incomplete") else "not run")
            w.writerow([table["gfm"], table["protocol"], label, col, metrics.get(col, "mean"),
                        status, "" if c.mean is None else f"{c.mean:.6g}",
                        "" if c.std is None else f"{c.std:.6g}", c.n,
                        " ".join(map(str, c.seeds)), "" if c.paper is None else f"{c.paper:.6g}",
                        "" if c.paper_std is None else c.paper_std, c.note])
    return buf.getvalue()


def write_table(table: Mapping[str, Any], prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv``; return both paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    md.write_text(render_markdown(table))
    csv_path.write_text(render_csv(table))
    return md, csv_path
