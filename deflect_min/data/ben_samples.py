"""The 60 BigEarthNet sample patches as a binary task with cross-validation folds.

:class:`BigEarthNetSampleTask` (``--dataset ben-samples``) turns the real Sentinel-2 patches of
:func:`deflect_min.load_samples` (``subset="all"``) into a two-class task that the trainer
takes like any benchmark: ``label="forest"`` (any of the three forest classes) or
``label="water"`` (inland or marine waters), present or absent.

**Folds** (repeated stratified k-fold): with ``repeat=r`` the patches of each class are
shuffled by ``numpy.random.default_rng(r)`` and dealt in turn to ``folds`` folds (the counts of
each class differ by at most one between folds; the deal of the second class continues where the
first stopped, so fold sizes differ by at most one too). For ``fold=k``:

* ``test``: fold ``k``;
* ``val``: fold ``(k + 1) % folds``, the inner validation fold on which the trainer keeps the
  best epoch and a sweep chooses the learning rate; it is never the test fold;
* ``train``: the other ``folds - 2`` folds.

**Band statistics** (the model's standardisation) are the per-band mean and std of the ``train``
patches of the fold, whatever ``split`` is asked: nothing of the val or test patches enters the
model through them.

Example::

    from deflect_min.data.ben_samples import BigEarthNetSampleTask
    ds = BigEarthNetSampleTask(split="test", label="water", fold=2, repeat=1)
    sample = ds[0]          # image (12, 120, 120) reflectance, label 0 / 1
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from ..samples import SAMPLES_PATH, BigEarthNetSamples, load_samples
from ._common import BenchmarkDataset

__all__ = ["LABELS", "BigEarthNetSampleTask", "fold_of"]

#: The binary tasks: name -> the BigEarthNet 19-class names whose presence makes a positive.
LABELS: dict[str, tuple[str, ...]] = {
    "forest": ("Broad-leaved forest", "Coniferous forest", "Mixed forest"),
    "water": ("Inland waters", "Marine waters"),
}


def fold_of(y: Sequence[int] | np.ndarray, *, folds: int, repeat: int) -> np.ndarray:
    """``(n,)`` fold index of each sample: stratified by ``y``, shuffled by ``repeat``.

    Each class's samples are permuted with ``numpy.random.default_rng(repeat)`` (classes in
    increasing order, one generator) and dealt round-robin, the deal continuing from class to
    class.
    """
    y = np.asarray(y)
    if folds < 3:
        raise ValueError(f"folds must be at least 3 (train, val and test folds), got {folds}.")
    counts = np.bincount(y)
    if counts[counts > 0].min() < folds:
        raise ValueError(f"a class has {counts[counts > 0].min()} samples, fewer than "
                         f"folds={folds}: every fold must hold each class; use fewer folds.")
    rng = np.random.default_rng(int(repeat))
    fold = np.empty(len(y), dtype=np.int64)
    dealt = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


@functools.lru_cache(maxsize=4)
def _samples(path: str) -> BigEarthNetSamples:
    return load_samples(path, subset="all")


class BigEarthNetSampleTask(BenchmarkDataset):
    """A fold of the 60 real BigEarthNet patches, labelled ``label`` present / absent.

    Args:
        root: the sample file ``bigearthnet_samples.npz`` or the folder holding it (default:
            the copy shipped in the package, :data:`deflect_min.samples.SAMPLES_PATH`).
        split: ``"train"``, ``"val"`` or ``"test"`` (see the module docstring).
        bands: band names (default: all 12).
        transforms: a function of the sample dict.
        download, checksum: unused (the data are shipped); accepted like every dataset's.
        label: a key of :data:`LABELS` (``"forest"`` or ``"water"``).
        folds, fold, repeat: ``folds``-fold cross-validation, test fold ``fold`` of the
            shuffle ``repeat``.
    """

    all_bands: ClassVar[tuple[str, ...]] = (
        "S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08",
        "S2_B8A", "S2_B09", "S2_B11", "S2_B12")
    classes: ClassVar[tuple[str, ...]] = ("absent", "present")
    #: The trainer keeps the epoch with the best validation balanced accuracy (the classes are
    #: unbalanced: 42 of the 60 patches hold forest, 32 water).
    metric: ClassVar[str] = "balanced_accuracy"

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 bands: Sequence[str] | None = None,
                 transforms: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                 download: bool = False, checksum: bool = True, *, label: str = "forest",
                 folds: int = 5, fold: int = 0, repeat: int = 0) -> None:
        if label not in LABELS:
            raise ValueError(f"BigEarthNetSampleTask: unknown label {label!r}; valid labels are "
                             f"{list(LABELS)}.")
        if not 0 <= int(fold) < int(folds):
            raise ValueError(f"BigEarthNetSampleTask: fold={fold} is not in 0 ... {folds - 1} "
                             f"(folds={folds}).")
        self.label, self.folds, self.fold, self.repeat = label, int(folds), int(fold), int(repeat)
        super().__init__(SAMPLES_PATH if root is None else root, split, bands, transforms,
                         download, checksum)

    def _index(self) -> None:
        path = self.root / SAMPLES_PATH.name if self.root.is_dir() else self.root
        if not path.is_file():
            raise self._not_found(f"{SAMPLES_PATH.name}; the package ships it at "
                                  f"{SAMPLES_PATH}")
        self.samples = _samples(str(path))
        if list(self.samples.band_names) != list(self.all_bands):
            raise ValueError(f"{path} holds the bands {self.samples.band_names}, not "
                             f"{list(self.all_bands)}: regenerate it with data/make_samples.py.")
        self.y = self.samples.label_of(*LABELS[self.label]).long().numpy()
        fold = fold_of(self.y, folds=self.folds, repeat=self.repeat)
        val_fold = (self.fold + 1) % self.folds
        chosen = {"test": fold == self.fold, "val": fold == val_fold,
                  "train": (fold != self.fold) & (fold != val_fold)}
        self.indices = np.flatnonzero(chosen[self.split])
        self.train_indices = np.flatnonzero(chosen["train"])
        self._stats: dict[str, tuple[float, float]] | None = None

    def _download_call(self) -> str:
        return f"{type(self).__name__}(root={str(SAMPLES_PATH)!r})"

    @property
    def patch_ids(self) -> list[str]:
        """BigEarthNet names of this split's patches, in sample order."""
        return [self.samples.patch_ids[i] for i in self.indices]

    def _all_band_stats(self) -> dict[str, tuple[float, float]]:
        if self._stats is None:  # band_stats, mean and std all come through here
            x = self.samples.reflectance[self.train_indices]
            pixels = rearrange(x, "n c h w -> c (n h w)").double()
            mean, std = pixels.mean(dim=1), pixels.std(dim=1)
            self._stats = {b: (float(m), float(s)) for b, m, s in zip(self.all_bands, mean, std)}
        return self._stats

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(self.indices[index])
        image = self.samples.reflectance[i, self.band_indices]
        return self._apply({"image": image, "label": torch.tensor(int(self.y[i]))})
