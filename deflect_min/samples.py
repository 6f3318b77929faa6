"""Real Sentinel-2 sample patches: 60 labelled BigEarthNet patches shipped in ``data/``.

The walkthrough notebooks and the tests run on real data rather than random tensors. The file
``data/bigearthnet_samples.npz`` holds **60 real BigEarthNet Sentinel-2 L2A patches** (1.2 km x
1.2 km, 120 x 120 px at 10 m), taken from two registry packages by ``data/make_samples.py``:

* 24 BigEarthNet v2 (reBEN) patches, from the LMDB of safetensors in ``configilm`` 0.7.1;
* 6 BigEarthNet-S2 v1.0 patches, from the GeoTIFF example archive in ``bigearthnet-common`` 2.8.0;
* 30 BigEarthNet-S2 v1.0 patches, from the LMDB of pickles in ``configilm`` 0.7.1, read with a
  restricted unpickler (:mod:`deflect_min.safe_pickle`) that runs none of the pickled code.

``load_samples()`` returns the 30 patches of the first two sources (``subset="walkthrough"``, the
set the walkthrough notebooks were written on); ``load_samples(subset="all")`` returns all 60.

Each patch has the 12 bands BigEarthNet keeps (``S2_B01`` ... ``S2_B12`` in wavelength order;
the cirrus band ``S2_B10`` is absent, as in BigEarthNet). The file stores each band at its
native resolution (10 m: 120 x 120 px, 20 m: 60 x 60 px, 60 m: 20 x 20 px) as ``uint16`` =
reflectance x 10^4; :func:`load_samples` returns ``float32`` L2A surface reflectance with the
20 m and 60 m bands upsampled to the 10 m grid, so all 12 bands share the 120 x 120 grid.

Labels are **multi-label**, in the 19-class BigEarthNet nomenclature (Sumbul et al. 2020, 2021).
The v1 patches carry the older 43 CORINE level-3 classes; they were mapped to the 19 classes with
the official mapping :data:`BEN43_TO_BEN19`. A patch carries about four classes, and the
data give no area fraction per class, so there is no "dominant" class: a figure is coloured by
one chosen class (present / absent) with :meth:`BigEarthNetSamples.label_of`.

Licence of the data: CDLA-Permissive-1.0. Contains modified Copernicus Sentinel data 2017-2018.
See ``data/README.md`` for provenance and citations.

Axes: ``n`` patch, ``c`` spectral band, ``h w`` pixel rows and columns, ``k`` class.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BEN19_CLASSES",
    "BEN43_TO_BEN19",
    "SAMPLES_PATH",
    "SUBSETS",
    "BigEarthNetSamples",
    "ben43_to_ben19",
    "load_samples",
]

#: Default location of the sample file: package data of ``deflect_min`` (in the repository a link
#: to ``data/bigearthnet_samples.npz``; a wheel holds the file itself).
SAMPLES_PATH: Path = Path(str(importlib.resources.files("deflect_min")
                              / "sample_data" / "bigearthnet_samples.npz"))

#: The 19 classes of the BigEarthNet nomenclature, in the official order of
#: ``label_indices.json`` (BigEarthNet-S2_19-classes_models, TU Berlin RSiM), which is also
#: ``NEW_LABELS_ORIGINAL_ORDER`` in bigearthnet-common and configilm.
BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

#: The official BigEarthNet mapping from the 43 CORINE level-3 classes of BigEarthNet v1.0 to
#: the 19-class nomenclature; ``None`` marks the 11 classes that the nomenclature drops.
#: Source: the 19-class nomenclature of Sumbul et al., "BigEarthNet Dataset with a New
#: Class-Nomenclature for Remote Sensing Image Understanding", arXiv:2001.06372 (2020), and
#: "BigEarthNet-MM: A Large-Scale, Multimodal, Multilabel Benchmark Archive for Remote Sensing
#: Image Classification and Retrieval", IEEE Geosci. Remote Sens. Mag. 9(3), 2021; in
#: machine-readable form, ``label_conversion`` in ``label_indices.json`` of
#: https://git.tu-berlin.de/rsim/BigEarthNet-S2_19-classes_models. Keys are in that file's order.
#: ``data/make_samples.py`` checks this dict against ``OLD2NEW_LABELS_DICT`` in
#: ``bigearthnet_common/constants.py`` (bigearthnet-common 2.8.0) and stops if they differ.
BEN43_TO_BEN19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}


def ben43_to_ben19(labels: Iterable[str]) -> list[str]:
    """Map BigEarthNet v1 labels (43 classes) to the 19-class nomenclature.

    Dropped classes vanish, duplicates merge (``Peatbogs`` and ``Inland marshes`` both give
    ``Inland wetlands``), and the result is in the order of :data:`BEN19_CLASSES`.
    """
    labels = [labels] if isinstance(labels, str) else list(labels)
    unknown = [name for name in labels if name not in BEN43_TO_BEN19]
    if unknown:
        raise KeyError(f"unknown BigEarthNet 43-class label(s) {unknown}; the known ones are "
                       f"the keys of deflect_min.samples.BEN43_TO_BEN19.")
    mapped = {BEN43_TO_BEN19[name] for name in labels} - {None}
    return [name for name in BEN19_CLASSES if name in mapped]


@dataclass(frozen=True, eq=False)
class BigEarthNetSamples:
    """The sample patches, their bands and their labels.

    Attributes:
        reflectance: ``(n, c, h, w) = (30, 12, 120, 120)`` float32 L2A surface reflectance.
        band_names: the ``c`` sensor-qualified band names (``deflect_min.bands``), in
            wavelength order.
        patch_ids: BigEarthNet patch names, sorted.
        labels: ``(n, k) = (30, 19)`` bool multi-hot labels, columns as in ``class_names``.
        class_names: the 19 class names (:data:`BEN19_CLASSES`).
        country: country of each patch.
        date: acquisition date of each patch, ISO ``YYYY-MM-DD``.
        source: ``"BENv2 via configilm 0.7.1"`` or ``"BENv1 via bigearthnet-common 2.8.0"``.
        split: the source's own split (``train``/``validation``/``test``; ``""`` where the
            source leaves the patch out of its split). BENv1 and BENv2 splits differ.
        seasonal_snow: whether the source flags the patch as covered by seasonal snow.
        cloud_or_shadow: whether the source flags the patch as cloudy or shadowed.
    """

    reflectance: torch.Tensor
    band_names: list[str]
    patch_ids: list[str]
    labels: torch.Tensor
    class_names: list[str]
    country: list[str]
    date: list[str]
    source: list[str]
    split: list[str]
    seasonal_snow: torch.Tensor
    cloud_or_shadow: torch.Tensor

    def __len__(self) -> int:
        return len(self.patch_ids)

    def label_of(self, *class_names: str) -> torch.Tensor:
        """``(n,)`` bool: does each patch carry any of ``class_names``?

        The labels are multi-label and carry no area fractions, so the notebooks colour a
        figure by one chosen class (or a union, e.g. the three forest classes) present/absent.
        """
        if not class_names:
            raise ValueError("give at least one class name, e.g. label_of('Coniferous forest').")
        unknown = [c for c in class_names if c not in self.class_names]
        if unknown:
            raise KeyError(f"unknown class name(s) {unknown}; the classes are {self.class_names}.")
        columns = [self.class_names.index(c) for c in class_names]
        return self.labels[:, columns].any(dim=1)

    def labels_of(self, index: int) -> list[str]:
        """The class names carried by patch ``index``."""
        return [c for c, on in zip(self.class_names, self.labels[index].tolist()) if on]


def _strings(array: np.ndarray) -> list[str]:
    return [str(s) for s in array.tolist()]


def _upsample(x: torch.Tensor, *, size: int, mode: str) -> torch.Tensor:
    """(n, c, h, w) -> (n, c, size, size)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode=mode,
                         align_corners=None if mode == "nearest" else False)


#: ``load_samples`` subsets: the sources each one takes from the sample file.
SUBSETS: dict[str, tuple[str, ...]] = {
    "walkthrough": ("BENv2 via configilm 0.7.1", "BENv1 via bigearthnet-common 2.8.0"),
    "all": ("BENv2 via configilm 0.7.1", "BENv1 via bigearthnet-common 2.8.0",
            "BENv1 via configilm 0.7.1"),
}


def load_samples(path: str | Path | None = None, *, resample: str = "bilinear",
                 subset: str = "walkthrough") -> BigEarthNetSamples:
    """Load the BigEarthNet sample patches (default: ``data/bigearthnet_samples.npz``).

    ``subset="walkthrough"`` (default) gives the 30 patches the walkthrough notebooks use,
    ``"all"`` all 60 (see :data:`SUBSETS`), in patch-id order.

    The 20 m bands (60 x 60 px) and 60 m bands (20 x 20 px) are upsampled to the 10 m grid
    (120 x 120 px). ``resample="bilinear"`` (default) uses ``align_corners=False``, so each
    coarse pixel stays centred on the block of 10 m pixels it covers (the geometry of
    GDAL/rasterio's bilinear resampling, which torchgeo's BigEarthNet loader uses); it gives
    smooth maps without 2 x 2 or 6 x 6 blocks, and creates no value outside the input range.
    ``resample="nearest"`` repeats each coarse pixel instead, keeping the measured values.
    """
    if resample not in ("bilinear", "nearest"):
        raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}.")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}.")
    path = SAMPLES_PATH if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"BigEarthNet sample file not found: {path}. It is committed in the repository's "
            f"data/ folder; to regenerate it run, from the repository root: "
            f'pip install -e ".[data]" && python data/make_samples.py'
        )
    with np.load(path, allow_pickle=False) as f:
        band_names = _strings(f["band_names"])
        groups, group_names = [], []
        for group in ("10m", "20m", "60m"):
            # reflectance = DN / 10^4 (L2A; BigEarthNet's 2017-2018 products have no offset)
            x = torch.from_numpy(f[f"reflectance_x1e4_{group}"].astype(np.float32) / 1e4)
            groups.append(_upsample(x, size=120, mode=resample))
            group_names += _strings(f[f"bands_{group}"])
        # (n, c, h, w), bands back in wavelength order
        reflectance = torch.cat(groups, dim=1)[:, [group_names.index(b) for b in band_names]]
        source = _strings(f["source"])
        keep = [i for i, s in enumerate(source) if s in SUBSETS[subset]]

        def rows(key: str) -> list[str]:
            values = _strings(f[key])
            return [values[i] for i in keep]

        def flags(key: str) -> torch.Tensor:
            return torch.from_numpy(f[key].astype(bool)[keep])

        return BigEarthNetSamples(
            reflectance=reflectance[keep].contiguous(),
            band_names=band_names,
            patch_ids=rows("patch_ids"),
            labels=flags("labels"),
            class_names=_strings(f["class_names"]),
            country=rows("country"),
            date=rows("date"),
            source=rows("source"),
            split=rows("split"),
            seasonal_snow=flags("seasonal_snow"),
            cloud_or_shadow=flags("cloud_or_shadow"),
        )
