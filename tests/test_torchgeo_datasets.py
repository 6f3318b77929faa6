"""torchgeo datasets as ours: band names, reflectance scale, splits, statistics, clear errors."""

from __future__ import annotations

import pytest
import torch

from deflect_min.data import make_dataloaders
from deflect_min.data.catalogue import dataset_class
from deflect_min.data.torchgeo_datasets import torchgeo_dataset
from tests.helpers import DATA

EUROSAT = DATA / "torchgeo" / "eurosat"


def test_eurosat_bands_scale_and_splits():
    cls = dataset_class("torchgeo.datasets.EuroSAT")
    assert cls is dataset_class("torchgeo.datasets.EuroSAT")  # one class per dataset
    assert cls.all_bands[-1] == "S2_B8A" and cls.all_bands[9] == "S2_B10"
    train = cls(EUROSAT, split="train")
    assert train.classes == ("AnnualCrop", "Forest") and len(train) == 4
    sample = train[0]
    assert sample["image"].dtype == torch.float32 and sample["label"].dtype == torch.int64
    assert 0.02 <= float(sample["image"].min()) and float(sample["image"].max()) <= 0.3  # x 1e-4
    assert len(cls(EUROSAT, split="val")) == 2 and len(cls(EUROSAT, split="test")) == 2
    subset = cls(EUROSAT, split="test", bands=["S2_B04", "S2_B08", "S2_B8A"])
    assert subset[0]["image"].shape == (3, 64, 64)
    mean, std = subset.band_stats["S2_B08"]
    assert 0.1 < mean < 0.2 and 0.05 < std < 0.1


def test_loaders_of_a_torchgeo_dataset():
    loaders = make_dataloaders("torchgeo.datasets.EuroSAT", EUROSAT, bands=["S2_B02", "S2_B03",
                               "S2_B04", "S2_B08"], batch_size=2, num_workers=0)
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape[:2] == (2, 4) and batch["label"].shape == (2,)


def test_clear_errors():
    with pytest.raises(ValueError, match="cannot import the dataset 'torchgeo.datasets.NoSuch'"):
        dataset_class("torchgeo.datasets.NoSuch")
    with pytest.raises(ValueError, match="reflectance scale is not known here; pass scale="):
        torchgeo_dataset("torchgeo.datasets.So2Sat", task="classification")
    with pytest.raises(ValueError, match=r"no band name of ours for .*pass band_map="):
        torchgeo_dataset("torchgeo.datasets.EuroSAT", band_map={"B01": "S2_B01"})
    with pytest.raises(ValueError, match="pass task='classification'"):
        torchgeo_dataset("torchgeo.datasets.So2Sat", scale=1.0)
    with pytest.raises(ValueError, match="unknown dataset 'eurosat'.*torchgeo class path"):
        dataset_class("eurosat")
