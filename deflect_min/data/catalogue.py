"""The datasets by name (the ``--dataset`` values of ``deflect-train``): the five benchmarks, and
the sample patches shipped with the package as a small cross-validated task."""

from __future__ import annotations

import functools

from .ben_samples import BigEarthNetSampleTask
from .geobench import MBrickKiln, MForestNet, MSo2Sat
from .hls_burn_scars import HLSBurnScars
from .mados import MADOS

__all__ = ["DATASETS", "SAMPLE_DATASETS", "dataset_class"]

DATASETS = {
    "m-so2sat": MSo2Sat,
    "m-brick-kiln": MBrickKiln,
    "m-forestnet": MForestNet,
    "hls-burn-scars": HLSBurnScars,
    "mados": MADOS,
}

#: Datasets that are not benchmarks of the paper: the real patches shipped in ``data/``
#: (:mod:`deflect_min.data.ben_samples`; ``dataset_kwargs`` choose the label and the fold).
SAMPLE_DATASETS = {"ben-samples": BigEarthNetSampleTask}


def dataset_class(name: str) -> type:
    """The dataset class of a ``--dataset`` value: a :data:`DATASETS` name, or the class path of a
    torchgeo ``NonGeoDataset`` (``"torchgeo.datasets.EuroSAT"``, see
    :func:`deflect_min.data.torchgeo_datasets.torchgeo_dataset`)."""
    if name in DATASETS:
        return DATASETS[name]
    if name in SAMPLE_DATASETS:
        return SAMPLE_DATASETS[name]
    if isinstance(name, str) and name.startswith("torchgeo."):
        return _torchgeo_class(name)
    raise ValueError(f"unknown dataset {name!r}; valid names are {list(DATASETS)}, "
                     f"{list(SAMPLE_DATASETS)}, or a torchgeo class path such as "
                     f"torchgeo.datasets.EuroSAT.")


@functools.lru_cache(maxsize=None)
def _torchgeo_class(path: str) -> type:
    """One wrapper class per torchgeo dataset (the trainer asks for it several times)."""
    from .torchgeo_datasets import torchgeo_dataset

    return torchgeo_dataset(path)
