"""Metrics from confusion matrices, the table's metric per dataset, and the default precision.

**Metrics** (torchmetrics confusion matrix, accumulated over the split; all values are fractions
in [0, 1]): ``accuracy``, ``balanced_accuracy`` and ``f1_macro`` for classification;
``accuracy`` (pixels), ``miou`` and the per-class IoU for segmentation, plus ``iou_burn_scar``
(IoU of the burn-scar class) for HLS Burn Scars. Macro averages skip classes absent from both the
targets and the predictions of the split (torchmetrics' and scikit-learn's convention).
**Burn Scars in the table**: the paper's column says "IoU" while PANGAEA, whose protocol and code
the paper follows, reports the mIoU over both classes for this dataset; ``miou`` therefore fills
the table by default (``hls_metric="iou_burn_scar"`` picks the other, for training and for
``deflect-table``), and both are recorded in every result. Which one the paper printed is not
known.

**Precision** (:func:`default_precision`): fp32 on CPU, ``"bf16-mixed"`` on GPUs with native
bf16 (compute capability >= 8.0), ``"16-mixed"`` (fp16 autocast with a gradient scaler) below
(the T4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import _dataset_cls

__all__ = ["table_metric", "default_precision", "metrics_from_confusion"]


def table_metric(dataset: str, hls_metric: str = "miou") -> str:
    """The metric of ``dataset``'s Table 1 column (and of the best-checkpoint choice); a dataset
    class may name its own (``BigEarthNetSampleTask.metric = "balanced_accuracy"``)."""
    cls = _dataset_cls(dataset)
    task = cls.task
    if getattr(cls, "metric", None):
        return cls.metric
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

    Classification: ``accuracy`` (overall), ``balanced_accuracy`` (mean recall over the
    classes present in the targets), ``f1_macro`` and ``f1_per_class``. Segmentation:
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
        # the mean recall over the classes present in the targets (scikit-learn's
        # balanced_accuracy_score); a class never predicted nor present is skipped
        recall = tp / cm.sum(1).clamp_min(1e-300)
        observed = cm.sum(1) > 0
        out["balanced_accuracy"] = float(recall[observed].mean()) if observed.any() \
            else float("nan")
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
