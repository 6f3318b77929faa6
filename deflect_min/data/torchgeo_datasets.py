"""Any torchgeo ``NonGeoDataset`` as a dataset of ours: ``--dataset torchgeo.datasets.EuroSAT``.

:func:`torchgeo_dataset` returns a :class:`~deflect_min.data._common.BenchmarkDataset` class
that builds the torchgeo dataset with its own ``split`` argument and gives the trainer what it
needs: our sensor-qualified band names (``S2_B04`` ...), reflectance (the stored values times the
dataset's scale), the classes, the task, and per-band statistics. Band names and scales are
known for the datasets in :data:`KNOWN`; any other dataset takes ``band_map=`` and ``scale=``,
and without them the error says so: nothing is guessed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._common import BenchmarkDataset

__all__ = ["KNOWN", "torchgeo_dataset"]

_S2 = {f"B{b}": f"S2_B{b}" for b in ("01", "02", "03", "04", "05", "06", "07", "08", "09", "10",
                                     "11", "12", "8A")}

#: torchgeo datasets whose bands, scale and task are known: ``path -> (band map, scale, task)``.
#: EuroSAT (torchgeo/datasets/eurosat.py, ``all_band_names``: B01 ... B12, then B8A, the order
#: of the files' 13 bands): Sentinel-2 L1C, stored as reflectance x 10^4 (uint16), 10 classes.
KNOWN: dict[str, tuple[Mapping[str, str], float, str]] = {
    "torchgeo.datasets.EuroSAT": (_S2, 1e-4, "classification"),
    "torchgeo.datasets.EuroSAT100": (_S2, 1e-4, "classification"),
}

#: Our split names and the names torchgeo datasets use for them.
_SPLITS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
#: Samples drawn (evenly spaced) to estimate band statistics when the dataset has none.
_STATS_SAMPLES = 64


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import the dataset {path!r} ({e}); pass a class path such as "
                         f"torchgeo.datasets.EuroSAT.") from e


def torchgeo_dataset(path: str, *, band_map: Mapping[str, str] | None = None,
                     scale: float | None = None, task: str | None = None,
                     **kwargs: Any) -> type[BenchmarkDataset]:
    """A dataset class of ours around the torchgeo dataset ``path``.

    Args:
        path: the class path, e.g. ``"torchgeo.datasets.EuroSAT"``.
        band_map: torchgeo band name -> our band name (default: :data:`KNOWN`).
        scale: factor from the stored values to reflectance (default: :data:`KNOWN`).
        task: ``"classification"`` (samples with a ``"label"``) or ``"segmentation"`` (a
            ``"mask"``) (default: :data:`KNOWN`).
        **kwargs: more arguments of the torchgeo class.

    Raises:
        ValueError: not importable, unknown bands or scale (the message says what to pass).
    """
    source = _import(path)
    known_map, known_scale, known_task = KNOWN.get(path, (None, None, None))
    band_map = dict(band_map or known_map or {})
    scale = scale if scale is not None else known_scale
    task = task or known_task
    if task not in ("classification", "segmentation"):
        raise ValueError(f"{path}: pass task='classification' (samples with a 'label') or "
                         f"task='segmentation' (a 'mask'); got {task!r}.")
    their_bands = tuple(getattr(source, "all_band_names", getattr(source, "all_bands", ())))
    if scale is None:
        raise ValueError(f"{path}: its reflectance scale is not known here; pass scale= (the "
                         f"factor from stored values to reflectance, e.g. 1e-4 for reflectance "
                         f"x 10^4).")
    unknown = [b for b in their_bands if b not in band_map]
    if not their_bands or unknown:
        raise ValueError(f"{path}: no band name of ours for {unknown or 'its bands'}; pass "
                         f"band_map={{their name: ours}}, e.g. {{'B04': 'S2_B04'}} "
                         f"(deflect_min.bands lists ours).")

    class Wrapped(BenchmarkDataset):
        all_bands: ClassVar[tuple[str, ...]] = tuple(band_map[b] for b in their_bands)
        classes: ClassVar[tuple[str, ...]] = tuple(getattr(source, "classes", ()))
        splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

        def _index(self) -> None:
            accepted = tuple(getattr(source, "splits", ()))
            theirs = next((s for s in _SPLITS[self.split] if not accepted or s in accepted), None)
            if theirs is None:
                raise ValueError(f"{path} has the splits {list(accepted)}, none of which is "
                                 f"our {self.split!r}; pass a dataset with train/val/test.")
            wanted = [their_bands[self.all_bands.index(b)] for b in self.bands]
            self.inner = source(root=str(self.root), split=theirs, bands=wanted,
                                download=self.download, checksum=self.checksum, **kwargs)
            if not type(self).classes:
                type(self).classes = tuple(getattr(self.inner, "classes", ()))

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, index: int) -> dict[str, Tensor]:
            sample = self.inner[index]
            out = {"image": sample["image"].float() * scale}
            key = "mask" if "mask" in sample else "label"
            out[key] = sample[key].long()
            return self._apply(out)

        def _all_band_stats(self) -> dict[str, tuple[float, float]]:
            if getattr(self, "_stats", None) is None:
                self._stats = self._estimate_stats()
            return self._stats

        def _estimate_stats(self) -> dict[str, tuple[float, float]]:
            n = len(self.inner)
            picks = sorted({round(i * (n - 1) / max(1, _STATS_SAMPLES - 1))
                            for i in range(min(n, _STATS_SAMPLES))})
            x = torch.stack([self.inner[i]["image"].float() * scale for i in picks]).double()
            mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
            return {b: (float(m), max(float(s), 1e-6)) for b, m, s in zip(self.bands, mean, std)}

    Wrapped.__name__ = Wrapped.__qualname__ = source.__name__
    Wrapped.task = task
    return Wrapped
