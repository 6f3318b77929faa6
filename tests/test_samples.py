"""The real BigEarthNet sample patches in data/ and their loader (deflect_min.samples)."""

import re

import numpy as np
import pytest
import torch

from deflect_min.bands import resolve_bands
from deflect_min.samples import (
    BEN19_CLASSES,
    BEN43_TO_BEN19,
    SAMPLES_PATH,
    ben43_to_ben19,
    load_samples,
)

S2_BIGEARTHNET = ["S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07",
                  "S2_B08", "S2_B8A", "S2_B09", "S2_B11", "S2_B12"]


@pytest.fixture(scope="module")
def samples():
    return load_samples()


def test_shapes_and_dtypes(samples):
    n = len(samples)
    assert n == 30
    assert samples.reflectance.shape == (n, 12, 120, 120)
    assert samples.reflectance.dtype == torch.float32
    assert samples.labels.shape == (n, 19) and samples.labels.dtype == torch.bool
    for field in (samples.patch_ids, samples.country, samples.date, samples.source, samples.split):
        assert len(field) == n
    assert samples.seasonal_snow.shape == samples.cloud_or_shadow.shape == (n,)


def test_band_order(samples):
    assert samples.band_names == S2_BIGEARTHNET  # B10 (cirrus) is absent in BigEarthNet
    wavelengths = [band.wavelength for band in resolve_bands(samples.band_names)]
    assert wavelengths == sorted(wavelengths) and len(set(wavelengths)) == 12


def test_reflectance_is_plausible_l2a(samples):
    x = samples.reflectance
    assert torch.isfinite(x).all()
    assert x.min() >= 0 and x.max() < 2.0  # bright snow reaches ~1.6
    # vegetation: NIR (B08) above red (B04) in the median pixel
    b04, b08 = (samples.band_names.index(b) for b in ("S2_B04", "S2_B08"))
    assert x[:, b08].median() > 2 * x[:, b04].median()


def test_resampling():
    samples = load_samples(subset="all")  # the file's every row, in its order
    stored = np.load(SAMPLES_PATH)
    b02, b05, b01 = (samples.band_names.index(b) for b in ("S2_B02", "S2_B05", "S2_B01"))
    # 10 m bands are the stored values, unchanged
    native_10m = torch.from_numpy(stored["reflectance_x1e4_10m"][:, 0].astype(np.float32)) / 1e4
    torch.testing.assert_close(samples.reflectance[:, b02], native_10m)
    # bilinear upsampling stays within the native range and keeps the mean
    native_20m = torch.from_numpy(stored["reflectance_x1e4_20m"][:, 0].astype(np.float32)) / 1e4
    up = samples.reflectance[:, b05]
    assert up.min() >= native_20m.min() and up.max() <= native_20m.max()
    torch.testing.assert_close(up.mean(), native_20m.mean(), rtol=1e-3, atol=0)
    # nearest repeats each 20 m pixel over 2 x 2 and each 60 m pixel over 6 x 6 pixels
    nearest = load_samples(resample="nearest", subset="all").reflectance
    torch.testing.assert_close(nearest[:, b05, ::2, ::2], native_20m)
    native_60m = torch.from_numpy(stored["reflectance_x1e4_60m"][:, 0].astype(np.float32)) / 1e4
    torch.testing.assert_close(nearest[:, b01, 5::6, 5::6], native_60m)


def test_labels_and_metadata(samples):
    assert samples.class_names == list(BEN19_CLASSES) and len(set(BEN19_CLASSES)) == 19
    assert samples.labels.any(dim=1).all(), "every patch carries at least one class"
    assert len(set(samples.patch_ids)) == len(samples.patch_ids)
    assert samples.patch_ids == sorted(samples.patch_ids)
    assert samples.source.count("BENv2 via configilm 0.7.1") == 24
    assert samples.source.count("BENv1 via bigearthnet-common 2.8.0") == 6
    assert set(samples.country) <= {"Austria", "Finland", "Ireland", "Portugal"}
    for patch_id, date in zip(samples.patch_ids, samples.date):
        stamp = re.match(r"S2[AB]_MSIL2A_(\d{4})(\d{2})(\d{2})T", patch_id).groups()
        assert date == "-".join(stamp)
    assert set(samples.split) <= {"train", "validation", "test", ""}


def test_label_helpers(samples):
    forest = samples.label_of("Broad-leaved forest", "Coniferous forest", "Mixed forest")
    assert forest.shape == (30,) and forest.dtype == torch.bool
    assert torch.equal(forest, samples.label_of("Mixed forest") | samples.label_of(
        "Broad-leaved forest") | samples.label_of("Coniferous forest"))
    assert 0 < int(forest.sum()) < 30
    i = samples.patch_ids.index("S2B_MSIL2A_20170924T93020_69_24")
    assert samples.labels_of(i) == ["Coniferous forest", "Mixed forest",
                                    "Transitional woodland, shrub", "Inland wetlands",
                                    "Inland waters"]
    with pytest.raises(KeyError, match="unknown class"):
        samples.label_of("Forest")


def test_43_to_19_mapping():
    assert len(BEN43_TO_BEN19) == 43
    assert sum(v is None for v in BEN43_TO_BEN19.values()) == 11
    assert {v for v in BEN43_TO_BEN19.values() if v} == set(BEN19_CLASSES)
    assert ben43_to_ben19(["Transitional woodland/shrub"]) == ["Transitional woodland, shrub"]
    assert ben43_to_ben19(["Peatbogs", "Inland marshes"]) == ["Inland wetlands"]
    assert ben43_to_ben19(["Annual crops associated with permanent crops"]) == ["Permanent crops"]
    assert ben43_to_ben19(["Sea and ocean", "Estuaries", "Water courses"]) == [
        "Inland waters", "Marine waters"]
    assert ben43_to_ben19(["Airports", "Bare rock", "Intertidal flats"]) == []
    # the labels_metadata.json of S2B_MSIL2A_20170924T93020_69_24 (bigearthnet-common 2.8.0)
    assert ben43_to_ben19(["Coniferous forest", "Mixed forest", "Transitional woodland/shrub",
                           "Peatbogs", "Water bodies"]) == [
        "Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands",
        "Inland waters"]
    with pytest.raises(KeyError, match="unknown BigEarthNet 43-class"):
        ben43_to_ben19(["Forest"])


def test_all_sixty_patches_and_the_walkthrough_subset(samples):
    every = load_samples(subset="all")
    assert len(every) == 60 and every.patch_ids == sorted(every.patch_ids)
    assert len(set(every.patch_ids)) == 60  # no patch in two sources (make_samples checks v1 names)
    assert every.source.count("BENv1 via configilm 0.7.1") == 30
    # the walkthrough subset is exactly the other 30 rows, in the same order
    rows = [i for i, s in enumerate(every.source) if s != "BENv1 via configilm 0.7.1"]
    assert [every.patch_ids[i] for i in rows] == samples.patch_ids
    torch.testing.assert_close(every.reflectance[rows], samples.reflectance, rtol=0, atol=0)
    assert torch.equal(every.labels[rows], samples.labels)
    # configilm's BENv1 pickles: 12 bands of plausible L2A reflectance and 19-class labels
    v1 = [i for i, s in enumerate(every.source) if s == "BENv1 via configilm 0.7.1"]
    assert every.labels[v1].any(dim=1).all()
    b04, b08 = (every.band_names.index(b) for b in ("S2_B04", "S2_B08"))
    assert 0 <= every.reflectance[v1].min() and every.reflectance[v1].max() < 2.0
    assert every.reflectance[v1][:, b08].median() > every.reflectance[v1][:, b04].median()
    # the first pickle in the LMDB (S2A_MSIL2A_20170613T101031_39_24) is labelled 'Sea and ocean'
    i = every.patch_ids.index("S2A_MSIL2A_20170613T101031_39_24")
    assert every.labels_of(i) == ["Marine waters"] and every.country[i] == "Finland"


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python data/make_samples\.py"):
        load_samples(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="resample"):
        load_samples(resample="bicubic")
    with pytest.raises(ValueError, match="subset must be one of"):
        load_samples(subset="everything")
