"""Any torchgeo ``NonGeoDataset`` as a dataset of ours: ``--dataset torchgeo.datasets.EuroSAT``.

:func:`torchgeo_dataset` returns a :class:`~deflect_min.data._common.BenchmarkDataset` class
(constructor ``root, split, bands, transforms, download, checksum``, like the five benchmarks, so
:func:`~deflect_min.data.make_dataloaders` and the trainer take it); :func:`wrap_torchgeo` builds
one split of it directly. The wrapper

* builds the torchgeo dataset with its own ``split`` argument (ours ``train``/``val``/``test``
  mapped onto its vocabulary, e.g. So2Sat's ``validation``; a clear error when it has none);
* names the channels with our sensor-qualified bands (``S2_B04`` ...) and selects ``bands``;
* returns reflectance: the stored values times the dataset's ``scale``;
* gives ``classes``, ``task`` (``classification`` / ``multilabel`` / ``segmentation``),
  ``ignore_index`` and per-band ``band_stats`` (estimated on at most 64 evenly spaced samples).

Bands, scale, task and classes are known for the datasets in :data:`KNOWN`; any other dataset
takes ``band_map=`` (and ``their_bands=`` if the class does not list its channels) and
``scale=``. Nothing is guessed: without them the error says what to pass.

Example::

    from deflect_min.data.torchgeo_datasets import torchgeo_dataset, wrap_torchgeo
    ds = wrap_torchgeo("torchgeo.datasets.EuroSAT", root="data/eurosat", split="val",
                       bands=["S2_B04", "S2_B03", "S2_B02", "S2_B08"])
    Big = torchgeo_dataset("torchgeo.datasets.BigEarthNet", num_classes=19)  # multilabel
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from einops import reduce
from torch import Tensor

from ..bands import BANDS
from ._common import BenchmarkDataset

__all__ = ["KNOWN", "Known", "infer_task", "torchgeo_dataset", "wrap_torchgeo"]

TASKS = ("classification", "multilabel", "segmentation")

# Sentinel-2 band names as torchgeo writes them (B01 ... B12, B8A), and ours.
_S2 = {f"B{b}": f"S2_B{b}" for b in ("01", "02", "03", "04", "05", "06", "07", "08", "09", "10",
                                     "11", "12", "8A")}
_IDENTITY_S2 = {ours: ours for ours in _S2.values()}  # So2Sat already says "S2_B02"

# MODIS IGBP land-cover classes 1..17 (MCD12Q1 LC_Type1), SEN12MS's ``lc`` band 1.
_IGBP = ("Evergreen needleleaf forests", "Evergreen broadleaf forests",
         "Deciduous needleleaf forests", "Deciduous broadleaf forests", "Mixed forests",
         "Closed shrublands", "Open shrublands", "Woody savannas", "Savannas", "Grasslands",
         "Permanent wetlands", "Croplands", "Urban and built-up lands",
         "Cropland/natural vegetation mosaics", "Permanent snow and ice", "Barren",
         "Water bodies")


def _igbp_mask(mask: Tensor) -> Tensor:
    """SEN12MS IGBP values 1..17 -> class indices 0..16; 0 (no class) -> -1 (ignored)."""
    return mask.long() - 1


@dataclass(frozen=True)
class Known:
    """What the wrapper knows about one torchgeo dataset.

    Attributes:
        bands: torchgeo's names of the image channels, in order, when built with ``kwargs``.
        band_map: torchgeo band name -> ours (:data:`deflect_min.bands.BANDS`).
        scale: factor from the stored values to reflectance.
        task: ``"classification"``, ``"multilabel"`` or ``"segmentation"``.
        kwargs: constructor arguments that select those channels (e.g. ``bands="s2"``).
        classes: class names, or a function of the built torchgeo dataset returning them.
        target: maps the torchgeo label/mask to ours (default: ``.long()``).
        ignore_index: mask value ignored by losses and metrics (segmentation).
        splits: torchgeo's split names, where its class does not list them.
        source: where in torchgeo's source each fact was read.
    """

    bands: tuple[str, ...]
    band_map: Mapping[str, str]
    scale: float
    task: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    classes: Sequence[str] | Callable[[Any], Sequence[str]] | None = None
    target: Callable[[Tensor], Tensor] | None = None
    ignore_index: int | None = None
    splits: tuple[str, ...] | None = None
    source: str = ""


_EUROSAT = Known(
    # torchgeo/datasets/eurosat.py ``all_band_names`` (0.8.1 l.84, 0.10.1 l.85): B01 ... B12, then
    # B8A, the files' true order since torchgeo PR #2480 (0.7). L1C, uint16 reflectance x 10^4.
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12",
           "B8A"),
    band_map=_S2, scale=1e-4, task="classification",
    source="torchgeo/datasets/eurosat.py all_band_names; datamodules/eurosat.py MEAN (DN)")

#: torchgeo datasets whose bands, scale and task are known (their Sentinel-2 part).
KNOWN: dict[str, Known] = {
    "torchgeo.datasets.EuroSAT": _EUROSAT,
    "torchgeo.datasets.EuroSATSpatial": _EUROSAT,
    "torchgeo.datasets.EuroSAT100": _EUROSAT,
    # torchgeo/datasets/bigearthnet.py (0.8.1 and 0.10.1): docstring l.49 "Sentinel-2 bands:
    # (B01, ..., B08, B8A, B09, B11, B12)" = the per-band files sorted by sort_sentinel2_bands
    # (_load_paths); ``bands`` is a string ('s1', 's2', 'all'); labels are a multi-hot vector
    # of ``class_sets[num_classes]`` (l.134). L2A digital numbers = reflectance x 10^4
    # (datamodules/bigearthnet.py l.46-49: S2 maxs 9859 ... 15596).
    "torchgeo.datasets.BigEarthNet": Known(
        bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
               "B12"),
        band_map=_S2, scale=1e-4, task="multilabel", kwargs={"bands": "s2"},
        classes=lambda ds: ds.class_sets[ds.num_classes],
        source="torchgeo/datasets/bigearthnet.py l.49, l.134; datamodules/bigearthnet.py l.46"),
    # torchgeo/datasets/so2sat.py ``all_s2_band_names`` (l.172 in 0.8.1 and 0.10.1), already
    # our names; S1 channels (S1_B1..S1_B8, not physical bands) are left out. The HDF5 values
    # are reflectance (datamodules/so2sat.py l.24: S2 means ~0.1), so scale 1.
    "torchgeo.datasets.So2Sat": Known(
        bands=("S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08", "S2_B8A",
               "S2_B11", "S2_B12"),
        band_map=_IDENTITY_S2, scale=1.0, task="classification",
        kwargs={"bands": ("S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08",
                          "S2_B8A", "S2_B11", "S2_B12")},
        source="torchgeo/datasets/so2sat.py l.172; datamodules/so2sat.py l.24"),
    # torchgeo/datasets/sen12ms.py ``BAND_SETS['s2-all']`` (l.88 in 0.8.1 and 0.10.1); uint16
    # L1C reflectance x 10^4 (datamodules/sen12ms.py l.33 divides S2 by 1e4). The mask is the
    # IGBP layer (values 1..17), mapped to 0..16, 0 ("none") ignored.
    "torchgeo.datasets.SEN12MS": Known(
        bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
               "B11", "B12"),
        band_map=_S2, scale=1e-4, task="segmentation",
        kwargs={"bands": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                          "B10", "B11", "B12")},
        classes=_IGBP, target=_igbp_mask, ignore_index=-1, splits=("train", "test"),
        source="torchgeo/datasets/sen12ms.py l.88, l.195; datamodules/sen12ms.py l.33"),
}

#: Our split names and the names torchgeo datasets use for them, in order of preference.
_SPLITS = {"train": ("train", "training"), "val": ("val", "validation", "valid"),
           "test": ("test", "testing")}
#: Samples drawn (evenly spaced) to estimate band statistics.
STATS_SAMPLES = 64


def infer_task(sample: Mapping[str, Any]) -> str:
    """The task of a torchgeo sample: ``"mask"`` -> segmentation; a scalar ``"label"`` ->
    classification; a vector ``"label"`` -> multilabel; a 2-D ``"label"`` -> segmentation."""
    if "mask" in sample:
        return "segmentation"
    if "label" in sample:
        ndim = torch.as_tensor(sample["label"]).ndim
        if ndim in (0, 1, 2):
            return ("classification", "multilabel", "segmentation")[ndim]
    raise ValueError(f"cannot tell the task of a sample with keys {sorted(sample)} (and label "
                     f"shape); pass task= one of {list(TASKS)}.")


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import the dataset {path!r} ({e}); pass a class path such as "
                         f"torchgeo.datasets.EuroSAT.") from e


def _parameters(source: type) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(source.__init__, eval_str=True).parameters)
    except (NameError, TypeError, ValueError):  # unresolvable annotations
        return dict(inspect.signature(source.__init__).parameters)


def _their_splits(source: type, kwargs: Mapping[str, Any],
                  known: Known | None) -> tuple[str, ...] | None:
    """The split names ``source`` accepts, where the class says (None: not known)."""
    if known is not None and known.splits is not None:
        return known.splits
    by_version = getattr(source, "filenames_by_version", None)  # So2Sat: v3 has no validation
    if isinstance(by_version, dict):
        version = str(kwargs.get("version", _parameters(source)["version"].default))
        return tuple(by_version.get(version, {})) or None
    annotation = getattr(_parameters(source).get("split"), "annotation", None)
    if typing.get_origin(annotation) is typing.Literal:  # torchgeo >= 0.9
        return tuple(typing.get_args(annotation))
    for attr in ("splits", "valid_splits", "splits_metadata", "split_filenames"):
        names = getattr(source, attr, None)
        if isinstance(names, (tuple, list, dict)) and names and \
                all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def _channel_names(source: type, path: str) -> tuple[str, ...]:
    for attr in ("all_band_names", "all_bands", "band_names"):
        names = getattr(source, attr, None)
        if isinstance(names, (tuple, list)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    raise ValueError(f"{path} does not list its channels (no all_band_names / all_bands); pass "
                     f"their_bands=('B02', 'B03', ...) in the order of its image channels, and "
                     f"band_map= mapping each to ours.")


def torchgeo_dataset(path: str, *, band_map: Mapping[str, str] | None = None,
                     their_bands: Sequence[str] | None = None, scale: float | None = None,
                     task: str | None = None, classes: Sequence[str] | None = None,
                     ignore_index: int | None = None,
                     band_stats: Mapping[str, tuple[float, float]] | None = None,
                     stats_samples: int = STATS_SAMPLES,
                     **kwargs: Any) -> type[BenchmarkDataset]:
    """A dataset class of ours around the torchgeo dataset ``path``.

    The class takes ``root, split, bands, transforms, download, checksum`` like the five
    benchmarks; ``bands`` are our names (default: all mapped bands). Samples are
    ``{"image": float32 reflectance (C, H, W), "label" | "mask": int64}``.

    Args:
        path: the class path, e.g. ``"torchgeo.datasets.EuroSAT"``.
        band_map: torchgeo band name -> our band name (default: :data:`KNOWN`).
        their_bands: torchgeo's names of the image channels, in order (default:
            :data:`KNOWN`, else the class's ``all_band_names`` / ``all_bands``).
        scale: factor from the stored values to reflectance (default: :data:`KNOWN`).
        task: ``"classification"``, ``"multilabel"`` or ``"segmentation"`` (default:
            :data:`KNOWN`, else inferred from the first sample when a dataset is built).
        classes: class names (default: :data:`KNOWN`, else the dataset's ``classes``).
        ignore_index: mask value to ignore (segmentation).
        band_stats: our band -> (mean, std) in reflectance (default: estimated).
        stats_samples: at most this many evenly spaced samples estimate ``band_stats``.
        **kwargs: more arguments of the torchgeo class (``version="2"``, ``num_classes=43``).

    Raises:
        ValueError: not importable, unknown bands or scale, a bad task (the message says what
            to pass).
    """
    source = _import(path)
    known = KNOWN.get(path)
    band_map = dict(band_map if band_map is not None else known.band_map if known else {})
    scale = scale if scale is not None else known.scale if known else None
    task = task or (known.task if known else None)
    if task is not None and task not in TASKS:
        raise ValueError(f"{path}: task must be one of {list(TASKS)}, got {task!r}.")
    if scale is None:
        raise ValueError(f"{path}: its reflectance scale is not known here; pass scale= (the "
                         f"factor from stored values to reflectance, e.g. 1e-4 for reflectance "
                         f"x 10^4, 1.0 if already reflectance).")
    theirs = tuple(their_bands or (known.bands if known else _channel_names(source, path)))
    unknown = [b for b in theirs if b not in band_map]
    if unknown:
        raise ValueError(f"{path}: no band name of ours for {unknown}; pass band_map={{their "
                         f"name: ours}}, e.g. {{'B04': 'S2_B04'}} (deflect_min.bands.BANDS lists "
                         f"ours), or their_bands= to load fewer channels.")
    ours = tuple(band_map[b] for b in theirs)
    not_ours = [b for b in ours if b not in BANDS]
    if not_ours:
        raise ValueError(f"{path}: band_map gives {not_ours}, which are not band names of ours; "
                         f"choose from deflect_min.bands.BANDS, e.g. 'S2_B04'.")
    build_kwargs = {**(known.kwargs if known else {}), **kwargs}
    params = _parameters(source)
    target = known.target if known and known.target else (lambda t: t.long())
    fixed_classes = tuple(classes) if classes is not None else (
        tuple(known.classes) if known and isinstance(known.classes, Sequence) else
        tuple(getattr(source, "classes", ()) if isinstance(getattr(source, "classes", ()),
                                                          (tuple, list)) else ()))

    class Wrapped(BenchmarkDataset):
        all_bands: ClassVar[tuple[str, ...]] = ours
        splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

        def _index(self) -> None:
            self.torchgeo_split = self._their_split()
            args: dict[str, Any] = {"root": str(self.root), "split": self.torchgeo_split,
                                    **build_kwargs}
            if "download" in params:
                args["download"] = self.download
            if "checksum" in params:  # our checksum verifies downloads; never re-hash data
                args["checksum"] = bool(self.checksum and self.download)
            try:
                self.inner = source(**args)
            except AssertionError as e:  # torchgeo checks its arguments with assert
                raise ValueError(f"{path} rejected {args} ({e or 'assertion failed'}); check "
                                 f"its keyword arguments.") from e
            self.classes = fixed_classes or self._classes_of_inner()
            if not self.classes:
                raise ValueError(f"{path}: its class names are not known; pass classes=[...].")
            self.task = task
            if len(self.inner):
                inferred = infer_task(self.inner[0])
                if task is not None and inferred != task:
                    raise ValueError(f"{path}: its samples look like {inferred} (keys "
                                     f"{sorted(self.inner[0])}), not {task}; pass task="
                                     f"{inferred!r}.")
                self.task = inferred
            if self.task is None:
                raise ValueError(f"{path}: the {self.split} split is empty, so its task "
                                 f"cannot be inferred; pass task= one of {list(TASKS)}.")
            for attr in ("classes", "task"):  # the trainer reads them from the class
                if not getattr(type(self), attr):
                    setattr(type(self), attr, getattr(self, attr))

        def _their_split(self) -> str:
            accepted = _their_splits(source, build_kwargs, known)
            candidates = _SPLITS[self.split]
            if accepted is None:
                return candidates[0]
            found = next((s for s in candidates if s in accepted), None)
            if found is None:
                raise ValueError(f"{path}{' ' + str(kwargs) if kwargs else ''} has "
                                 f"the splits {list(accepted)}, none of which is our "
                                 f"{self.split!r} (one of {list(candidates)}); choose a version "
                                 f"of the dataset with a {self.split} split.")
            return found

        def _classes_of_inner(self) -> tuple[str, ...]:
            if known is not None and callable(known.classes):
                return tuple(known.classes(self.inner))
            return tuple(getattr(self.inner, "classes", ()) or ())

        def __len__(self) -> int:
            return len(self.inner)

        def _image(self, sample: Mapping[str, Tensor]) -> Tensor:
            image = sample["image"]
            if image.shape[0] != len(theirs):
                raise ValueError(f"{path} returned {image.shape[0]} channels, but their_bands "
                                 f"names {len(theirs)} ({list(theirs)}); pass their_bands= in "
                                 f"the order of its image channels.")
            return image[self.band_indices].float() * scale

        def __getitem__(self, index: int) -> dict[str, Tensor]:
            sample = self.inner[index]
            key = "mask" if self.task == "segmentation" else "label"
            label = sample["mask"] if "mask" in sample else sample["label"]
            return self._apply({"image": self._image(sample), key: target(label)})

        def _all_band_stats(self) -> dict[str, tuple[float, float]]:
            if band_stats is not None:
                return dict(band_stats)
            if getattr(self, "_stats", None) is None:
                self._stats = self._estimate_stats()
            return self._stats

        def _estimate_stats(self) -> dict[str, tuple[float, float]]:
            """Mean and std of each selected band over <= stats_samples evenly spaced samples."""
            n = len(self.inner)
            k = min(n, stats_samples)
            picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
            x = torch.stack([self._image(self.inner[i]) for i in picks]).double()
            mean = reduce(x, "n c h w -> c", "mean")
            std = reduce((x - mean[:, None, None]) ** 2, "n c h w -> c", "mean").sqrt()
            return {b: (float(m), max(float(s), 1e-6)) for b, m, s in zip(self.bands, mean, std)}

    Wrapped.__name__ = Wrapped.__qualname__ = source.__name__
    Wrapped.__doc__ = f"torchgeo's {path} as a dataset of ours (see torchgeo_dataset)."
    Wrapped.task = task  # type: ignore[assignment]  (None: inferred when first built)
    Wrapped.classes = fixed_classes
    Wrapped.ignore_index = ignore_index if ignore_index is not None else (
        known.ignore_index if known else None)
    Wrapped.scale = scale  # type: ignore[attr-defined]
    Wrapped.torchgeo_class = source  # type: ignore[attr-defined]
    return Wrapped


def wrap_torchgeo(path: str, root: str | Path = "data", split: str = "train",
                  bands: Sequence[str] | None = None, task: str | None = None,
                  scale: float | None = None, *, transforms: Callable | None = None,
                  download: bool = False, checksum: bool = True,
                  **kwargs: Any) -> BenchmarkDataset:
    """One split of the torchgeo dataset ``path`` as a dataset of ours.

    ``bands`` are our band names; ``task`` and ``scale`` as in :func:`torchgeo_dataset`, which
    also takes the other keyword arguments (``band_map=``, ``their_bands=``, ``classes=``,
    torchgeo's own such as ``version=``). Pass ``type(ds)`` to
    :func:`~deflect_min.data.make_dataloaders` for all three splits.
    """
    cls = torchgeo_dataset(path, task=task, scale=scale, **kwargs)
    return cls(root=root, split=split, bands=bands, transforms=transforms, download=download,
               checksum=checksum)
