"""Run settings: the protocols' constants, :class:`TrainConfig` and :func:`smoke_config`.

**Protocols** (named in every result; the table never mixes them):

* ``"full"``: PANGAEA's schedule (the PANGAEA benchmark's defaults, Marsocci et al. 2024): 50
  epochs for classification, 80 for segmentation, batch 8, AdamW lr 1e-4, weight decay 0.05.
* ``"reduced"``: meant for an evening on a Colab GPU (not measured there; the H100 times of
  ``benchmarks/train_cost.py`` are on the book's cost page): GEO-Bench's ``0.10x_train``
  partition for the classification tasks (the training split from the partition file;
  validation and test splits unchanged, so that both protocols are evaluated on the same
  images), and a fixed budget of optimizer steps (``max_steps``, default 1000) for the
  segmentation tasks (or for any task when ``max_steps`` is given).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..options import LOGGERS, PRECISIONS, PROTOCOLS

__all__ = [
    "PROTOCOLS",
    "TASK_EPOCHS",
    "REDUCED_PARTITION",
    "REDUCED_MAX_STEPS",
    "SMOKE_ARCH",
    "FIXTURES",
    "TrainConfig",
    "smoke_config",
]

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
_RESUME_FREE = {"resume", "overwrite", "download", "root", "out", "work_dir", "num_workers",
                "quiet", "progress_bar", "accelerator", "devices", "strategy", "logger"}
#: What a run name (``name``, a results sub-folder) may be made of: one folder, no path.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")



# ============================================================================ configuration
@dataclass
class TrainConfig:
    """Everything a run depends on; every field is recorded in the result.

    Attributes:
        dataset: a :data:`deflect_min.data.DATASETS` key (``"m-so2sat"``, ``"m-brick-kiln"``,
            ``"m-forestnet"``, ``"hls-burn-scars"``, ``"mados"``), ``"ben-samples"`` (the sample
            patches, :mod:`deflect_min.data.ben_samples`) or a torchgeo class path.
        root: the dataset's root folder.
        dataset_kwargs: further arguments of the dataset class (``"ben-samples"``: ``label``,
            ``folds``, ``fold``, ``repeat``).
        gfm: the backbone: a :data:`deflect_min.GFM_NAMES` name, ``timm:NAME`` (any timm ViT)
            or ``hf-hub:ORG/NAME`` (:func:`deflect_min.backbones.load_backbone`).
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
        overwrite: delete the checkpoints of an earlier run of the same key and start afresh
            (without it, or ``resume``, a run refuses a folder that holds a checkpoint).
        arch_overrides: timm ViT arguments replacing the GFM's architecture (tiny test models);
            makes the run a smoke run.
        head_kwargs: task head arguments (e.g. ``{"channels": 16}`` for a tiny UPerNet).
        smoke: mark the result as a smoke run (never enters a table).
        quiet: no progress bar, no model summary, no Lightning info messages (reproducible
            notebook outputs).
        progress_bar: override the progress bar (default: ``not quiet``).
        logger: ``"csv"`` (default: ``<run folder>/logs/metrics.csv``, drawn by
            ``deflect-plot``), ``"tensorboard"`` (needs the tensorboard package) or ``"none"``.
        name: results sub-folder of this run (default: :func:`run_name`).
    """

    dataset: str
    root: str = "data"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
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
    overwrite: bool = False
    arch_overrides: dict[str, Any] | None = None
    head_kwargs: dict[str, Any] | None = None
    smoke: bool = False
    quiet: bool = False
    progress_bar: bool | None = None
    name: str | None = None
    logger: str = "csv"

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
        from deflect_min.backbones import backbone_names_help
        from deflect_min.methods import config_of
        from deflect_min.models import GFM_NAMES

        task = _dataset_cls(self.dataset).task
        if not isinstance(self.dataset_kwargs, Mapping):
            raise ValueError(f"dataset_kwargs must be a mapping of the dataset class's arguments, "
                             f"got {self.dataset_kwargs!r}, e.g. {{'label': 'water', 'fold': 2}}.")
        if task not in ("classification", "segmentation"):
            raise ValueError(f"{self.dataset} is a {task} dataset; deflect-train trains "
                             f"classification and segmentation only (single-label cross-entropy). "
                             f"The dataset class itself works in your own training loop.")
        if self.is_smoke:
            for field_name, folder, default in (("out", self.out, "results"),
                                                ("work_dir", self.work_dir, "runs")):
                kept = {Path.cwd().resolve() / default,
                        Path(__file__).resolve().parents[2] / default}
                if folder is not None and Path(folder).resolve() in kept:
                    raise ValueError(
                        f"a smoke run's numbers mean nothing and its files never enter "
                        f"{Path(folder).resolve()} ({field_name} of real runs): pass "
                        f"{field_name}=None or a temporary folder (e.g. tempfile.mkdtemp()), "
                        f"as smoke_config does.")
        if self.name is not None and (not _NAME.fullmatch(str(self.name)) or ".." in self.name):
            raise ValueError(f"name={self.name!r} is not a plain folder name: a run name is one "
                             f"sub-folder of the results folder (letters, digits, '.', '_', "
                             f"'+', '=', '-'; no '/' or '..'), e.g. name='deflect_lr3e-4'.")
        if self.gfm not in GFM_NAMES and not str(self.gfm).startswith(("timm:", "hf-hub:")):
            raise ValueError(f"unknown gfm {self.gfm!r}; pass {backbone_names_help}.")
        if self.arch_overrides and self.gfm not in GFM_NAMES:
            raise ValueError("arch_overrides applies to the GFMs of load_gfm only; choose the "
                             "architecture of a timm backbone through its name.")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {list(LOGGERS)}, got {self.logger!r}.")
        if self.logger == "tensorboard":
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None \
                    and importlib.util.find_spec("tensorboardX") is None:
                raise ValueError("logger='tensorboard' needs the tensorboard package: pip "
                                 "install tensorboard, or use logger='csv'.")
        config_of(self.method, **self.method_kwargs)  # unknown methods and options named
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
        if self.task == "segmentation" and int(self.batch_size) < 2:
            raise ValueError(f"batch_size={self.batch_size} on {self.dataset}: the UPerNet head's "
                             f"BatchNorm needs at least 2 images per training batch; use "
                             f"batch_size >= 2 (PANGAEA: 8).")
        if not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r} "
                             f"(PANGAEA: 1e-4).")
        for name in ("seed", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if str(self.devices) in ("0", "[]"):
            raise ValueError(f"devices={self.devices!r} selects no device; use devices=1 (one "
                             f"GPU or the CPU), 2 ... with strategy='ddp', or 'auto'.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {list(PRECISIONS)} "
                             f"('auto': fp32 on CPU, bf16-mixed on compute capability >= 8.0).")
        if self.precision in ("16-mixed", "16-true") and self.accelerator in ("auto", "gpu",
                                                                              "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"precision={self.precision!r} needs a CUDA GPU and none is "
                                 f"visible: use precision='auto' (fp32 on the CPU), or run on a "
                                 f"GPU runtime.")
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
    Nothing is written to a results folder unless ``out`` is given, and never to ``results/``;
    checkpoints go to a new temporary folder unless ``work_dir`` is given, never to ``runs/``.
    """
    task = _dataset_cls(dataset).task
    base: dict[str, Any] = dict(
        dataset=dataset, root=str(root), weights=None, arch_overrides=dict(SMOKE_ARCH),
        img_size=32, epochs=2, batch_size=2, num_workers=0, precision="32-true",
        accelerator="cpu", smoke=True, quiet=True, protocol="full", out=None,
        head_kwargs={"channels": 16} if task == "segmentation" else None,
    )
    if "work_dir" not in overrides:
        base["work_dir"] = tempfile.mkdtemp(prefix="deflect-smoke-runs-")
    base.update(overrides)
    return TrainConfig(**base)


def _dataset_cls(name: str):
    from deflect_min.data.catalogue import dataset_class

    return dataset_class(name)


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
