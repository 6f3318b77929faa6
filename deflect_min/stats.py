"""Scores of a small cross-validated experiment, with bootstrap intervals over the samples.

Every method of a repeated k-fold predicts each sample once per repeat (its test fold). The
score of a method is computed on the pooled test predictions of each repeat and averaged over
the repeats; its uncertainty is a percentile bootstrap over the **samples** (the patches are
resampled with replacement, the same draw for every repeat), which is where the variance of a
60-patch experiment lies. A paired comparison resamples the same patches for both methods, so
what they share cancels out.

Axes: ``r`` repeat (seed), ``n`` sample, ``b`` bootstrap draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["METRICS", "Interval", "score", "bootstrap", "paired_bootstrap"]


def _counts(y: np.ndarray, pred: np.ndarray, w: np.ndarray, c: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted tp, fp, fn of class ``c``: ``y`` (n,), ``pred`` (r, n), ``w`` (b, n) -> (b, r)."""
    hit = (pred == c).astype(float)  # (r, n)
    is_c = (y == c).astype(float)  # (n,)
    tp = w @ (hit * is_c).T
    fp = w @ (hit * (1 - is_c)).T
    fn = w @ ((1 - hit) * is_c).T
    return tp, fp, fn


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (in the weighted sample): (b, r)."""
    recalls, present = [], []
    for c in np.unique(y):
        tp, _, fn = _counts(y, pred, w, c)
        support = tp + fn
        recalls.append(np.where(support > 0, tp / np.maximum(support, 1e-300), 0.0))
        present.append(support > 0)
    return np.sum(recalls, axis=0) / np.maximum(np.sum(present, axis=0), 1)


def _f1_macro(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes that occur in targets or predictions: (b, r)."""
    f1s, present = [], []
    for c in np.union1d(np.unique(y), np.unique(pred)):
        tp, fp, fn = _counts(y, pred, w, c)
        den = 2 * tp + fp + fn
        f1s.append(np.where(den > 0, 2 * tp / np.maximum(den, 1e-300), 0.0))
        present.append(den > 0)
    return np.sum(f1s, axis=0) / np.maximum(np.sum(present, axis=0), 1)


#: The metrics by name (scikit-learn's ``balanced_accuracy_score`` and ``f1_score(average=
#: "macro")`` on unit weights).
METRICS = {"balanced_accuracy": _balanced_accuracy, "f1_macro": _f1_macro}


@dataclass(frozen=True)
class Interval:
    """A score and its percentile bootstrap interval (fractions in [0, 1])."""

    value: float
    low: float
    high: float
    #: For a paired difference: the fraction of draws where it is <= 0 (else ``None``).
    p_not_above_zero: float | None = None


def _check(y: np.ndarray, pred: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}.")
    y, pred = np.asarray(y), np.atleast_2d(np.asarray(pred))
    if y.ndim != 1 or pred.shape[1] != len(y):
        raise ValueError(f"targets must be (n,) and predictions (repeats, n) of the same "
                         f"samples; got {y.shape} and {pred.shape}.")
    return y, pred


def score(y: np.ndarray, pred: np.ndarray, metric: str = "balanced_accuracy") -> float:
    """The metric of each repeat's predictions ``pred`` (r, n) against ``y`` (n,), averaged."""
    y, pred = _check(y, pred, metric)
    return float(METRICS[metric](y, pred, np.ones((1, len(y)))).mean())


def _draws(n: int, draws: int, seed: int) -> np.ndarray:
    """(b, n) multiplicities of the samples in ``draws`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)


def bootstrap(y: np.ndarray, pred: np.ndarray, metric: str = "balanced_accuracy", *,
              draws: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """:func:`score` and its percentile interval over ``draws`` resamples of the samples."""
    y, pred = _check(y, pred, metric)
    boot = METRICS[metric](y, pred, _draws(len(y), draws, seed)).mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Interval(score(y, pred, metric), float(lo), float(hi))


def paired_bootstrap(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     metric: str = "balanced_accuracy", *, draws: int = 2000,
                     level: float = 0.95, seed: int = 0) -> Interval:
    """Score of ``a`` minus score of ``b`` on the same samples, with its interval and the
    fraction of resamples in which ``a`` does not beat ``b``."""
    y, pred_a = _check(y, pred_a, metric)
    _, pred_b = _check(y, pred_b, metric)
    w = _draws(len(y), draws, seed)
    diff = METRICS[metric](y, pred_a, w).mean(axis=1) - METRICS[metric](y, pred_b, w).mean(axis=1)
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    return Interval(score(y, pred_a, metric) - score(y, pred_b, metric), float(lo), float(hi),
                    float((diff <= 0).mean()))
