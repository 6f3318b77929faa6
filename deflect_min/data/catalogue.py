"""The five benchmark datasets by name (the ``--dataset`` values of ``deflect-train``)."""

from __future__ import annotations

import functools

from .geobench import MBrickKiln, MForestNet, MSo2Sat
from .hls_burn_scars import HLSBurnScars
from .mados import MADOS

__all__ = ["DATASETS", "dataset_class"]

DATASETS = {
    "m-so2sat": MSo2Sat,
    "m-brick-kiln": MBrickKiln,
    "m-forestnet": MForestNet,
    "hls-burn-scars": HLSBurnScars,
    "mados": MADOS,
}


def dataset_class(name: str) -> type:
    """The dataset class of a ``--dataset`` value: a :data:`DATASETS` name, or the class path of a
    torchgeo ``NonGeoDataset`` (``"torchgeo.datasets.EuroSAT"``, see
    :func:`deflect_min.data.torchgeo_datasets.torchgeo_dataset`)."""
    if name in DATASETS:
        return DATASETS[name]
    if isinstance(name, str) and name.startswith("torchgeo."):
        return _torchgeo_class(name)
    raise ValueError(f"unknown dataset {name!r}; valid names are {list(DATASETS)}, or a torchgeo "
                     f"class path such as torchgeo.datasets.EuroSAT.")


@functools.lru_cache(maxsize=None)
def _torchgeo_class(path: str) -> type:
    """One wrapper class per torchgeo dataset (the trainer asks for it several times)."""
    from .torchgeo_datasets import torchgeo_dataset

    return torchgeo_dataset(path)
