"""torchgeo datasets as ours: band names, reflectance scale, splits, tasks, statistics, errors.

The data are torchgeo's own test files in each dataset's real on-disk layout
(tests/data/torchgeo/README.md says where each comes from).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from deflect_min.data import make_dataloaders
from deflect_min.data.catalogue import dataset_class
from deflect_min.data.torchgeo_datasets import KNOWN, infer_task, torchgeo_dataset, wrap_torchgeo
from tests.helpers import DATA

TG = DATA / "torchgeo"
EUROSAT = TG / "eurosat"


def test_eurosat_bands_scale_and_splits():
    cls = dataset_class("torchgeo.datasets.EuroSAT")
    assert cls is dataset_class("torchgeo.datasets.EuroSAT")  # one class per dataset
    assert cls.all_bands[-1] == "S2_B8A" and cls.all_bands[9] == "S2_B10"
    train = cls(EUROSAT, split="train")
    assert train.classes == ("AnnualCrop", "Forest") and len(train) == 4
    assert train.task == cls.task == "classification"
    sample = train[0]
    assert sample["image"].dtype == torch.float32 and sample["label"].dtype == torch.int64
    assert 0.02 <= float(sample["image"].min()) and float(sample["image"].max()) <= 0.3  # x 1e-4
    assert len(cls(EUROSAT, split="val")) == 2 and len(cls(EUROSAT, split="test")) == 2
    subset = cls(EUROSAT, split="test", bands=["S2_B04", "S2_B08", "S2_B8A"])
    assert subset[0]["image"].shape == (3, 64, 64)
    full = cls(EUROSAT, split="test")[0]["image"]  # B8A is the 13th channel of the files
    assert torch.equal(subset[0]["image"], full[[3, 7, 12]])
    mean, std = subset.band_stats["S2_B08"]
    assert 0.1 < mean < 0.2 and 0.05 < std < 0.1
    assert subset.band_stats == cls(EUROSAT, split="test", bands=["S2_B08"]).band_stats | {
        b: subset.band_stats[b] for b in ("S2_B04", "S2_B8A")}  # deterministic, per band


def test_known_band_tables_match_torchgeo():
    """The table's channel names are the ones the installed torchgeo classes declare."""
    datasets = importlib.import_module("torchgeo.datasets")
    assert KNOWN["torchgeo.datasets.EuroSAT"].bands == datasets.EuroSAT.all_band_names
    assert KNOWN["torchgeo.datasets.So2Sat"].bands == datasets.So2Sat.all_s2_band_names
    assert KNOWN["torchgeo.datasets.SEN12MS"].bands == datasets.SEN12MS.BAND_SETS["s2-all"]
    for known in KNOWN.values():
        assert all(b in known.band_map for b in known.bands)


def test_so2sat_split_vocabulary():
    val = wrap_torchgeo("torchgeo.datasets.So2Sat", TG / "so2sat", "val")
    assert val.torchgeo_split == "validation" and len(val) == 2
    assert val.all_bands[0] == "S2_B02" and len(val.all_bands) == 10  # the S2 part only
    assert len(val.classes) == 17 and val[1]["image"].shape == (10, 32, 32)
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test'\], none of which is "
                                         r"our 'val'"):
        wrap_torchgeo("torchgeo.datasets.So2Sat", TG / "so2sat", "val", version="3_random")


def test_bigearthnet_multilabel():
    train = wrap_torchgeo("torchgeo.datasets.BigEarthNet", TG / "bigearthnet", "train",
                          bands=["S2_B04", "S2_B03", "S2_B02", "S2_B8A"])
    assert type(train).task == train.task == "multilabel" and len(train.classes) == 19
    sample = train[0]
    assert sample["image"].shape == (4, 120, 120) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (19,) and sample["label"].dtype == torch.int64
    assert float(sample["image"].max()) <= 3e-4  # stored 0..3, times 1e-4
    big = wrap_torchgeo("torchgeo.datasets.BigEarthNet", TG / "bigearthnet", "val",
                        num_classes=43)
    assert len(big.classes) == 43 and big[0]["label"].shape == (43,)


def test_sen12ms_segmentation_and_missing_split():
    test = wrap_torchgeo("torchgeo.datasets.SEN12MS", TG / "sen12ms", "test",
                         bands=["S2_B04", "S2_B03", "S2_B02"])
    sample = test[0]
    assert test.task == "segmentation" and test.ignore_index == -1 and len(test.classes) == 17
    assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.int64
    assert int(sample["mask"].min()) == -1 and int(sample["mask"].max()) <= 16  # IGBP 0 ignored
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test'\]"):
        wrap_torchgeo("torchgeo.datasets.SEN12MS", TG / "sen12ms", "val")


def test_infer_task():
    assert infer_task({"image": 0, "label": torch.tensor(3)}) == "classification"
    assert infer_task({"label": torch.zeros(5)}) == "multilabel"
    assert infer_task({"mask": torch.zeros(4, 4)}) == "segmentation"
    with pytest.raises(ValueError, match="pass task="):
        infer_task({"image": torch.zeros(3, 4, 4)})
    with pytest.raises(ValueError, match="look like classification.*pass task='classification'"):
        wrap_torchgeo("torchgeo.datasets.EuroSAT", EUROSAT, task="multilabel")


def test_loaders_of_a_torchgeo_dataset():
    loaders = make_dataloaders("torchgeo.datasets.EuroSAT", EUROSAT, bands=["S2_B02", "S2_B03",
                               "S2_B04", "S2_B08"], batch_size=2, num_workers=0)
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape == (2, 4, 224, 224) and batch["label"].shape == (2,)
    big = torchgeo_dataset("torchgeo.datasets.BigEarthNet")  # a class, passed like ours
    loaders = make_dataloaders(big, TG / "bigearthnet", batch_size=2, num_workers=0, size=32)
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape == (2, 12, 32, 32) and batch["label"].shape == (2, 19)


def test_clear_errors():
    with pytest.raises(ValueError, match="cannot import the dataset 'torchgeo.datasets.NoSuch'"):
        dataset_class("torchgeo.datasets.NoSuch")
    with pytest.raises(ValueError, match="reflectance scale is not known here; pass scale="):
        torchgeo_dataset("torchgeo.datasets.UCMerced", task="classification")
    with pytest.raises(ValueError, match=r"no band name of ours for \['B02', .*pass band_map="):
        torchgeo_dataset("torchgeo.datasets.EuroSAT", band_map={"B01": "S2_B01"})
    with pytest.raises(ValueError, match="does not list its channels.*their_bands="):
        torchgeo_dataset("torchgeo.datasets.UCMerced", scale=1 / 255)
    with pytest.raises(ValueError, match="not band names of ours"):
        torchgeo_dataset("torchgeo.datasets.EuroSAT", band_map={b: "B4" for b in
                                                                KNOWN["torchgeo.datasets.EuroSAT"]
                                                                .bands})
    with pytest.raises(ValueError, match="task must be one of"):
        torchgeo_dataset("torchgeo.datasets.EuroSAT", task="regression")
    with pytest.raises(ValueError, match="unknown dataset 'eurosat'.*torchgeo class path"):
        dataset_class("eurosat")


def test_the_trainer_refuses_a_multilabel_dataset_with_the_reason():
    from deflect_min.training import TrainConfig

    with pytest.raises(ValueError, match=r"torchgeo.datasets.BigEarthNet is a multilabel dataset; "
                       r"deflect-train trains classification and segmentation only"):
        TrainConfig(dataset="torchgeo.datasets.BigEarthNet", root="x").validate()
