"""The five benchmark datasets by name (the ``--dataset`` values of ``deflect-train``)."""

from __future__ import annotations

from .geobench import MBrickKiln, MForestNet, MSo2Sat
from .hls_burn_scars import HLSBurnScars
from .mados import MADOS

__all__ = ["DATASETS"]

DATASETS = {
    "m-so2sat": MSo2Sat,
    "m-brick-kiln": MBrickKiln,
    "m-forestnet": MForestNet,
    "hls-burn-scars": HLSBurnScars,
    "mados": MADOS,
}
