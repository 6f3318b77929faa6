"""The five benchmark datasets of DEFLECT's Table 1, as torchgeo ``NonGeoDataset`` classes.

Classification (GEO-Bench v1, macro F1): :class:`MSo2Sat`, :class:`MBrickKiln`,
:class:`MForestNet`. Segmentation (PANGAEA, IoU / mIoU): :class:`HLSBurnScars`, :class:`MADOS`.

Every class takes ``root, split, bands, transforms, download=False, checksum=True`` and returns
float32 reflectance images ``(C, H, W)`` with an int64 ``"label"`` or ``"mask"`` (-1 = ignore).
:func:`make_dataloaders` builds the train / val / test loaders with the crops and resizing the
models need.
"""

from ._common import BenchmarkDataset, DataNotFoundError, UnreadableFileError
from ._download import ChecksumError, CorruptArchiveError
from .catalogue import DATASETS
from .geobench import GeoBenchClassification, MBrickKiln, MForestNet, MSo2Sat
from .hls_burn_scars import HLSBurnScars
from .loaders import (
    CenterCrop,
    RandomCrop,
    Resize,
    Standardize,
    make_dataloaders,
    sliding_window_logits,
)
from .mados import MADOS
from .torchgeo_datasets import torchgeo_dataset as torchgeo_dataset, wrap_torchgeo as wrap_torchgeo

#: Name -> class, for configuration files and notebooks.
__all__ = [
    "BenchmarkDataset",
    "CenterCrop",
    "ChecksumError",
    "CorruptArchiveError",
    "DATASETS",
    "DataNotFoundError",
    "GeoBenchClassification",
    "HLSBurnScars",
    "MADOS",
    "MBrickKiln",
    "MForestNet",
    "MSo2Sat",
    "RandomCrop",
    "Resize",
    "Standardize",
    "UnreadableFileError",
    "make_dataloaders",
    "sliding_window_logits",
]
