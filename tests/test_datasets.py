"""Dataset classes on the fixtures of tests/data/ (real on-disk formats, tiny sizes, no network)."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchgeo.datasets import DatasetNotFoundError
from torchgeo.datasets.errors import RGBBandsMissingError

from deflect_min.data import (
    DATASETS,
    MADOS,
    ChecksumError,
    CorruptArchiveError,
    DataNotFoundError,
    HLSBurnScars,
    MBrickKiln,
    MForestNet,
    MSo2Sat,
    UnreadableFileError,
    make_dataloaders,
    sliding_window_logits,
)
from deflect_min.data import _download
from deflect_min.data.geobench import RestrictedUnpickler
from deflect_min.data.hls_burn_scars import pangaea_train_val_split

from tests.helpers import GEOBENCH, HLS, MADOS_ROOT

# (class, root, archive relative to root, expected lengths per split)
CASES = {
    "m-so2sat": (MSo2Sat, GEOBENCH, "classification_v1.0/m-so2sat.zip", (2, 1, 1)),
    "m-brick-kiln": (MBrickKiln, GEOBENCH, "classification_v1.0/m-brick-kiln.zip", (2, 1, 1)),
    "m-forestnet": (MForestNet, GEOBENCH, "classification_v1.0/m-forestnet.zip", (2, 1, 1)),
    "hls-burn-scars": (HLSBurnScars, HLS, "hls_burn_scars.tar.gz", (3, 1, 2)),
    "mados": (MADOS, MADOS_ROOT, "MADOS.zip", (2, 1, 1)),
}
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- every split
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("split", SPLITS)
def test_every_split_reads(name: str, split: str) -> None:
    cls, root, _, lengths = CASES[name]
    ds = cls(root=root, split=split)
    assert len(ds) == lengths[SPLITS.index(split)]
    assert ds.band_names == list(cls.all_bands)
    assert ds.num_classes == len(ds.classes)
    for i in range(len(ds)):
        sample = ds[i]
        image = sample["image"]
        assert image.dtype == torch.float32 and image.ndim == 3
        assert image.shape[0] == len(cls.all_bands)
        assert torch.isfinite(image).all()
        if cls.task == "classification":
            assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
            assert 0 <= int(sample["label"]) < ds.num_classes
        else:
            mask = sample["mask"]
            assert mask.dtype == torch.int64 and mask.shape == image.shape[1:]
            assert int(mask.min()) >= -1 and int(mask.max()) < ds.num_classes


def test_dataset_registry_and_metadata() -> None:
    assert set(DATASETS) == set(CASES)
    assert len(MSo2Sat.all_bands) == 10 and len(MBrickKiln.all_bands) == 13
    assert MForestNet.all_bands == ("L8_B04", "L8_B03", "L8_B02", "L8_B05", "L8_B06", "L8_B07")
    assert HLSBurnScars.all_bands == ("HLS_B02", "HLS_B03", "HLS_B04", "HLS_B8A", "HLS_B11",
                                      "HLS_B12")
    assert len(MADOS.all_bands) == 11
    assert (MSo2Sat.classes[0], len(MSo2Sat.classes)) == ("Compact high rise", 17)
    assert len(MForestNet.classes) == 12 and len(MADOS.classes) == 15
    ds = MForestNet(GEOBENCH)
    assert ds.rgb_bands == ("L8_B04", "L8_B03", "L8_B02")
    stats = ds.band_stats
    assert list(stats) == list(ds.band_names)
    # fixture band k holds 10 (k + 1) + [0, 5) in 8-bit units; reflectance = value / 255
    mean, std = stats["L8_B02"]
    assert 30 / 255 <= mean <= 35 / 255 and 0 < std < 5 / 255
    assert ds.mean.shape == ds.std.shape == (6,)
    assert HLSBurnScars(HLS).band_stats["HLS_B8A"] == (0.2323, 0.0779)
    assert MADOS(MADOS_ROOT, bands=["S2_B02"]).band_stats == {"S2_B02": (0.05223386, 0.03432253)}


def test_geobench_labels_from_pickle() -> None:
    labels = {s: [int(MSo2Sat(GEOBENCH, s)[i]["label"]) for i in range(n)]
              for s, n in zip(SPLITS, (2, 1, 1))}
    assert labels == {"train": [0, 16], "val": [5], "test": [3]}
    assert [int(MForestNet(GEOBENCH, "train")[i]["label"]) for i in range(2)] == [0, 11]
    assert int(MBrickKiln(GEOBENCH, "val")[0]["label"]) == 1


# ----------------------------------------------------------------------------- band order
@pytest.mark.parametrize("cls, bands, lows, unit", [
    # ForestNet's HDF5 keys sort Blue, Green, Red ... but bands_order is Red, Green, Blue ...
    (MForestNet, ["L8_B02", "L8_B04", "L8_B07"], [30, 10, 60], 1 / 255),
    (MSo2Sat, ["S2_B08", "S2_B02", "S2_B12"], [0.07, 0.01, 0.10], 1.0),
    (MBrickKiln, ["S2_B10", "S2_B8A", "S2_B01"], [1100, 900, 100], 1e-4),
])
def test_geobench_band_order(cls, bands, lows, unit) -> None:
    ds = cls(GEOBENCH, bands=bands)
    means = ds[0]["image"].mean(dim=(1, 2)).numpy()
    width = {1 / 255: 5, 1.0: 0.005, 1e-4: 50}[unit]
    for mean, low in zip(means, lows):
        assert low * unit - 1e-6 <= mean <= (low + width) * unit + 1e-6


def test_hls_band_order_and_nodata() -> None:
    ds = HLSBurnScars(HLS, "train", bands=["HLS_B11", "HLS_B02"])
    index = [i for i, (img, _) in enumerate(ds.files) if "T10SEH" in img.name][0]
    sample = ds[index]
    image, mask = sample["image"], sample["mask"]
    assert image.shape == (2, 32, 32)
    # band k holds 0.05 (k + 1) + [0, 0.01): B11 is k = 4, B02 is k = 0
    valid = mask[None].expand_as(image) != -1
    assert 0.25 <= image[0][valid[0]].min() and image[0][valid[0]].max() < 0.26
    assert 0.05 <= image[1][valid[1]].min() and image[1][valid[1]].max() < 0.06
    # -9999 in every band on [:2, :2] and 9999 in B11 at (0, 5): finite, band mean, ignored
    assert torch.isfinite(image).all()
    assert (mask[:2, :2] == -1).all() and mask[0, 5] == -1
    assert torch.allclose(image[0, :2, :2], torch.tensor(0.1973))
    assert torch.allclose(image[1, :2, :2], torch.tensor(0.0333))
    assert set(mask.unique().tolist()) <= {-1, 0, 1}
    assert (mask[0] == -1).all()  # the fixture's "missing" row


def test_hls_split_reproduces_pangaea() -> None:
    train, val = pangaea_train_val_split(540)
    assert len(val) == 54 and len(train) == 486
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(540))
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n in (4, 7, 540):
        s_train, s_val = sklearn.train_test_split(np.arange(n), test_size=0.1, random_state=23)
        ours = pangaea_train_val_split(n)
        assert ours[0].tolist() == s_train.tolist() and ours[1].tolist() == s_val.tolist()


def test_hls_split_files() -> None:
    names = sorted(p.name for p in (HLS / "training").glob("*_merged.tif"))
    train, val = pangaea_train_val_split(len(names))
    assert [p.name for p, _ in HLSBurnScars(HLS, "train").files] == [names[i] for i in train]
    assert [p.name for p, _ in HLSBurnScars(HLS, "val").files] == [names[i] for i in val]
    assert all(p.parent.name == "validation" for p, _ in HLSBurnScars(HLS, "test").files)


def test_mados_order_upsampling_nan_and_target() -> None:
    ds = MADOS(MADOS_ROOT, "train")
    assert ds.crops == ["Scene_0_1", "Scene_1_1"]
    for i in range(2):  # Scene_1 uses Sentinel-2B wavelengths (442, 559, 739 ...)
        image, mask = ds[i]["image"], ds[i]["mask"]
        assert image.shape == (11, 24, 24)
        valid = mask != -1
        for k in range(11):  # band k holds 0.01 (k + 1) + [0, 0.005)
            values = image[k][valid]
            assert 0.01 * (k + 1) - 1e-6 <= values.min() and values.max() < 0.01 * (k + 1) + 0.005
    image, mask = ds[0]["image"], ds[0]["mask"]
    assert torch.isfinite(image).all()
    assert (mask[0, 0:3] == -1).all()  # NaN in B2 there
    assert torch.allclose(image[1, 0, 0:3], torch.tensor(0.05223386))
    assert (mask[-1] == -1).all()  # cl == 0 (unlabelled) -> -1
    assert mask[-2, :3].tolist() == [0, 14, 6]  # cl - 1
    # a 60 m band (B1) upsampled x6 by nearest: constant 6 x 6 blocks
    b1 = image[0]
    assert torch.equal(b1[6:12, 6:12], b1[6, 6].expand(6, 6))
    sub = MADOS(MADOS_ROOT, "train", bands=["S2_B12", "S2_B01"])[1]["image"]
    assert sub.shape == (2, 24, 24) and 0.11 - 1e-6 <= float(sub[0].min()) and float(sub[1].max()) < 0.02


# ----------------------------------------------------------------------------- download
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_source(monkeypatch):
    """Serve the fixture archives instead of the Hugging Face hub / Zenodo; count downloads."""
    calls: list[str] = []
    archives = {archive: root / archive for _, root, archive, _ in CASES.values()}
    published: dict[str, _download.Published] = {}

    def fetch(remote, destination):
        calls.append(remote.relpath)
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archives[remote.relpath], destination)
        return Path(destination)

    def published_checksum(remote):
        assert remote.hf_repo or remote.zenodo_record  # a real source is configured
        if remote.relpath in published:
            return published[remote.relpath]
        algorithm = "sha256" if remote.hf_repo else "md5"
        digest = hashlib.new(algorithm, archives[remote.relpath].read_bytes()).hexdigest()
        return _download.Published(algorithm, digest, None, "fake source")

    monkeypatch.setattr(_download, "fetch", fetch)
    monkeypatch.setattr(_download, "published_checksum", published_checksum)
    return calls, published


@pytest.mark.parametrize("name", list(CASES))
def test_download_then_no_second_download(name: str, tmp_path: Path, fake_source) -> None:
    calls, _ = fake_source
    cls, _, archive, lengths = CASES[name]
    ds = cls(root=tmp_path, split="train", download=True)
    assert calls == [archive]
    assert len(ds) == lengths[0] and ds[0]["image"].dtype == torch.float32
    assert not (tmp_path / archive).exists()  # extracted, archive removed
    for split in SPLITS:
        assert len(cls(root=tmp_path, split=split, download=True)) == lengths[SPLITS.index(split)]
    assert calls == [archive]  # nothing downloaded again


def test_download_remotes_point_at_real_sources() -> None:
    so2sat = MSo2Sat.remote()
    assert (so2sat.hf_repo, so2sat.hf_path) == ("recursix/geo-bench-1.0",
                                                "classification_v1.0/m-so2sat.zip")
    assert HLSBurnScars.remote.hf_repo == "ibm-nasa-geospatial/hls_burn_scars"
    assert MADOS.remote.zenodo_record == "10664073"
    assert MADOS.remote.url.startswith("https://zenodo.org/records/10664073/files/MADOS.zip")


def test_checksum_mismatch_deletes_file(tmp_path: Path, fake_source) -> None:
    calls, published = fake_source
    published["MADOS.zip"] = _download.Published("md5", "0" * 32, None, "Zenodo record 10664073")
    with pytest.raises(ChecksumError, match=r"MADOS: checksum mismatch .*MADOS\.zip") as info:
        MADOS(root=tmp_path, download=True)
    assert "MADOS(root=" in str(info.value) and "download=True" in str(info.value)
    assert not (tmp_path / "MADOS.zip").exists() and not (tmp_path / "MADOS").exists()
    assert calls == ["MADOS.zip"]


def test_local_archive_is_verified_and_extracted_without_download(tmp_path: Path,
                                                                  fake_source) -> None:
    calls, published = fake_source
    shutil.copyfile(HLS / "hls_burn_scars.tar.gz", tmp_path / "hls_burn_scars.tar.gz")
    assert len(HLSBurnScars(tmp_path, "test")) == 2 and calls == []
    shutil.copyfile(MADOS_ROOT / "MADOS.zip", tmp_path / "MADOS.zip")
    published["MADOS.zip"] = _download.Published("md5", "f" * 32, None, "Zenodo")
    with pytest.raises(ChecksumError):
        MADOS(tmp_path)
    assert not (tmp_path / "MADOS.zip").exists()


def test_no_published_checksum_checks_size(tmp_path: Path, fake_source) -> None:
    _, published = fake_source
    size = (MADOS_ROOT / "MADOS.zip").stat().st_size
    published["MADOS.zip"] = _download.Published(None, None, size, "a source without hashes")
    with pytest.warns(UserWarning, match="publishes no checksum"):
        assert len(MADOS(tmp_path, download=True)) == 2
    published["hls_burn_scars.tar.gz"] = _download.Published(None, None, 1, "no hashes")
    with pytest.warns(UserWarning), pytest.raises(ChecksumError, match="size is"):
        HLSBurnScars(tmp_path, download=True)


def test_truncated_archive_names_file(tmp_path: Path, fake_source) -> None:
    data = (GEOBENCH / "classification_v1.0" / "m-forestnet.zip").read_bytes()
    (tmp_path / "classification_v1.0").mkdir()
    bad = tmp_path / "classification_v1.0" / "m-forestnet.zip"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArchiveError, match=r"m-forestnet\.zip is truncated"):
        MForestNet(tmp_path, checksum=False)
    tar = (HLS / "hls_burn_scars.tar.gz").read_bytes()
    (tmp_path / "hls_burn_scars.tar.gz").write_bytes(tar[: len(tar) // 2])
    with pytest.raises(CorruptArchiveError, match=r"hls_burn_scars\.tar\.gz"):
        HLSBurnScars(tmp_path, checksum=False)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", list(CASES))
def test_missing_root_names_dataset_and_call(name: str, tmp_path: Path) -> None:
    cls = CASES[name][0]
    root = tmp_path / "nothing"
    with pytest.raises(DataNotFoundError) as info:
        cls(root=root)
    message = str(info.value)
    assert isinstance(info.value, DatasetNotFoundError)
    assert message.startswith(f"{cls.__name__}:")
    assert f"{cls.__name__}(root={str(root)!r}, download=True)" in message


@pytest.mark.parametrize("name", list(CASES))
def test_unknown_split_and_band(name: str) -> None:
    cls, root, _, _ = CASES[name]
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*\['train', 'val', 'test'\]"):
        cls(root=root, split="validation")
    with pytest.raises(ValueError, match=r"unknown band name\(s\) \['B04'\].*Valid bands") as info:
        cls(root=root, bands=["B04"])
    assert cls.all_bands[0] in str(info.value) and cls.__name__ in str(info.value)
    with pytest.raises(ValueError, match="string"):
        cls(root=root, bands=cls.all_bands[0])


def _hls_scene(folder: Path, stem: str, height: int, width: int) -> None:
    """One scene in the real archive's format (tests/data/hls_burn_scars/data.py), any size."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hls_fixture", HLS / "data.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    image = np.full((6, height, width), 0.1, dtype=np.float32)
    fixture.write_scene(folder, stem, image, np.zeros((height, width), np.int16), 0)


def test_hls_scenes_must_have_the_size_of_their_name(tmp_path: Path) -> None:
    """Every scene of the real archive is ``subsetted_512x512_...`` and 512 x 512 px; one that is
    not the size its name states (cropped, cut short) is refused, naming the file."""
    from deflect_min.data.hls_burn_scars import SCENE_SIZE, scene_shape

    assert SCENE_SIZE == 512
    assert scene_shape("subsetted_512x512_HLS.S30.T10SEH.2018190.v1.4_merged.tif") == (512, 512)
    assert scene_shape("my_scene_merged.tif") == (512, 512)
    assert scene_shape(next((HLS / "training").glob("*_merged.tif"))) == (32, 32)
    root = tmp_path / "hls"
    for sub in ("training", "validation"):
        (root / sub).mkdir(parents=True)
    _hls_scene(root / "training", "subsetted_512x512_HLS.S30.T10SEH.2018190.v1.4", 512, 512)
    _hls_scene(root / "validation", "subsetted_512x512_HLS.S30.T10TEK.2018250.v1.4", 512, 512)
    _hls_scene(root / "validation", "subsetted_512x512_HLS.S30.T13SDA.2020260.v1.4", 500, 512)
    _hls_scene(root / "validation", "HLS.S30.T14SDA.2020261_merged", 256, 256)
    assert HLSBurnScars(root, "val")[0]["image"].shape == (6, 512, 512)  # 1 scene: val
    test = HLSBurnScars(root, "test")
    names = [image.name for image, _ in test.files]
    assert test[names.index("subsetted_512x512_HLS.S30.T10TEK.2018250.v1.4_merged.tif")][
        "mask"].shape == (512, 512)
    bad = "subsetted_512x512_HLS.S30.T13SDA.2020260.v1.4_merged.tif"
    with pytest.raises(UnreadableFileError, match=rf"cannot read .*{bad} .*500 x 512 px, not the "
                                                  r"512 x 512 px of HLS Burn Scars scenes"):
        test[names.index(bad)]


def test_forestnet_forest_loss_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The polygon of meta_info["forest_loss_region"] (WKT written by shapely, as geo-bench's
    converter writes it; tests/data/geobench/data.py), drawn as the converter drew it: PIL
    outline + fill of each exterior ring, holes ignored."""
    from PIL import Image, ImageDraw

    def drawn(*rings):
        img = Image.new("L", (16, 16), 0)
        for ring in rings:
            ImageDraw.Draw(img).polygon(ring, outline=1, fill=1)
        return torch.from_numpy(np.array(img, dtype=bool))

    expected = {  # the fixture's polygons, by sample name
        "forestnet_0000": drawn([(2, 3), (12, 4), (10, 13), (3, 11), (2, 3)]),
        "forestnet_0001": drawn([(1, 1), (4, 1), (4, 4), (1, 4), (1, 1)],
                                [(8.5, 8.5), (14, 9), (12, 14.5), (8.5, 8.5)]),
        "forestnet_0002": torch.ones(16, 16, dtype=torch.bool),  # the hole is not cut out
        "forestnet_0003": drawn([(3, 12), (13, 12), (8, 2), (3, 12)]),
    }
    seen = 0
    for split in SPLITS:
        ds = MForestNet(GEOBENCH, split)
        for i, path in enumerate(ds.files):
            mask = ds.forest_loss_mask(i)
            assert mask.dtype == torch.bool and mask.shape == ds[i]["image"].shape[-2:]
            assert torch.equal(mask, expected[path.stem]), path.stem
            seen += 1
    assert seen == 4
    assert 0 < int(expected["forestnet_0000"].sum()) < 256

    import deflect_min.data.geobench as gb_module

    real = gb_module.read_geobench_attrs

    def without_polygon(h5):
        attrs = real(h5)
        for key in attrs["bands_order"]:
            attrs[key]["meta_info"].pop("forest_loss_region", None)
        return attrs

    monkeypatch.setattr(gb_module, "read_geobench_attrs", without_polygon)
    with pytest.raises(UnreadableFileError, match="forestnet_0000.hdf5 .*no 'forest_loss_region'"):
        MForestNet(GEOBENCH, "train").forest_loss_mask(0)
    with pytest.raises(ValueError, match="not a POLYGON or MULTIPOLYGON"):
        gb_module._wkt_exteriors("POINT (1 2)")


def test_wrong_sensor_band_hint() -> None:
    with pytest.raises(ValueError, match=r"did you mean \['L8_B04'\]"):
        MForestNet(GEOBENCH, bands=["S2_B04"])


def test_truncated_files_are_named(tmp_path: Path) -> None:
    shutil.copytree(GEOBENCH / "classification_v1.0" / "m-so2sat", tmp_path / "gb")
    h5 = sorted((tmp_path / "gb").glob("*.hdf5"))[0]
    h5.write_bytes(h5.read_bytes()[:1000])
    ds = MSo2Sat(tmp_path / "gb")
    index = [p.name for p in ds.files].index(h5.name)
    with pytest.raises(UnreadableFileError, match=f"MSo2Sat: cannot read .*{h5.name}"):
        ds[index]

    shutil.copytree(HLS / "training", tmp_path / "hls" / "training")
    shutil.copytree(HLS / "validation", tmp_path / "hls" / "validation")
    tif = sorted((tmp_path / "hls" / "validation").glob("*_merged.tif"))[0]
    tif.write_bytes(tif.read_bytes()[:300])
    with pytest.raises(UnreadableFileError, match=f"HLSBurnScars: cannot read .*{tif.name}"):
        HLSBurnScars(tmp_path / "hls", "test")[0]

    shutil.copytree(MADOS_ROOT / "MADOS", tmp_path / "MADOS")
    band = tmp_path / "MADOS" / "Scene_2" / "20" / "Scene_2_L2R_rhorc_865_3.tif"
    band.write_bytes(b"not a tiff")
    with pytest.raises(UnreadableFileError, match="Scene_2_L2R_rhorc_865_3.tif"):
        MADOS(tmp_path, "test")[0]
    band.unlink()
    with pytest.raises(UnreadableFileError, match="Scene_2_3"):
        MADOS(tmp_path, "test")


# ----------------------------------------------------------------------------- unpickler
def test_restricted_unpickler_stubs_and_refuses() -> None:
    import h5py

    from deflect_min.data.geobench import read_geobench_attrs

    with h5py.File(next((GEOBENCH / "classification_v1.0" / "m-brick-kiln").glob("*.hdf5"))) as h5:
        attrs = read_geobench_attrs(h5)
    info = attrs["02 - Blue"]["band_info"]
    assert type(info).__module__.startswith("geobench") and info.name == "02 - Blue"
    assert type(attrs["02 - Blue"]["transform"]).__module__ == "affine"
    assert __import__("sys").modules.get("geobench") is None  # never imported

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


class _ArraySubclass(np.ndarray):
    pass


@pytest.mark.parametrize("payload, refused", [
    # an object array (geobench/_safe_pickle.py refuses them: their items are arbitrary objects)
    ({"label": np.array([1, "x", None], dtype=object)}, "array of Python objects|builtins.object"),
    # an ndarray subclass: its class is a global outside the allow-list
    ({"label": np.arange(3).view(_ArraySubclass)}, "_ArraySubclass"),
    # a global outside the allow-list, called by the pickle
    ({"label": __import__("subprocess").Popen}, "subprocess.Popen"),
])
def test_geobench_unpickler_refuses_dangerous_payloads(payload, refused) -> None:
    with pytest.raises(pickle.UnpicklingError, match=refused):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(payload, protocol=4))).load()


def test_geobench_unpickler_reads_plain_arrays_and_scalars() -> None:
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5),
            "d": np.dtype("int16")}
    out = RestrictedUnpickler(io.BytesIO(pickle.dumps(data, protocol=4))).load()
    assert type(out["a"]) is np.ndarray and np.array_equal(out["a"], data["a"])
    assert out["s"] == 2.5 and out["d"] == np.dtype("int16")


# ----------------------------------------------------------------------------- plot, loaders
def test_plot(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for ds in (MSo2Sat(GEOBENCH), HLSBurnScars(HLS, "test"), MADOS(MADOS_ROOT)):
        sample = ds[0]
        fig = ds.plot(sample, suptitle="x")
        plt.close(fig)
    ds = MADOS(MADOS_ROOT, bands=["S2_B08", "S2_B11"])
    with pytest.raises(RGBBandsMissingError):
        ds.plot(ds[0])


def test_make_dataloaders() -> None:
    loaders = make_dataloaders("hls-burn-scars", HLS, batch_size=2, num_workers=0, size=16)
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape == (2, 6, 16, 16) and batch["mask"].shape == (2, 16, 16)
    loaders = make_dataloaders(MADOS, MADOS_ROOT, batch_size=1, num_workers=0, size=32,
                               eval_mode="full", standardize=True)
    train = next(iter(loaders["train"]))
    assert train["image"].shape == (1, 11, 32, 32)  # padded with ignore_index in the mask
    assert (train["mask"][0, 24:] == -1).all()
    assert next(iter(loaders["test"]))["image"].shape == (1, 11, 24, 24)
    loaders = make_dataloaders("m-brick-kiln", GEOBENCH, batch_size=2, num_workers=0,
                               splits=("val",))
    assert next(iter(loaders["val"]))["image"].shape == (1, 13, 224, 224)
    with pytest.raises(ValueError, match="valid names"):
        make_dataloaders("so2sat", GEOBENCH)


def test_sliding_window_logits() -> None:
    image = torch.rand(2, 3, 40, 50)

    def model(x):  # per-pixel "logits": two classes from the first two channels
        return x[:, :2] * 2

    logits = sliding_window_logits(model, image, num_classes=2, window=16, stride=12)
    assert logits.shape == (2, 2, 40, 50)
    assert torch.allclose(logits, image[:, :2] * 2, atol=1e-6)
    small = sliding_window_logits(model, image[..., :8, :8], num_classes=2, window=16)
    assert torch.allclose(small, image[:, :2, :8, :8] * 2)


def test_flat_geobench_zip_goes_into_task_folder(tmp_path: Path, fake_source) -> None:
    import zipfile

    src = GEOBENCH / "classification_v1.0" / "m-forestnet.zip"
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(flat, "w") as zout:
        for info in zin.infolist():
            if not info.is_dir():
                zout.writestr(info.filename.split("/", 1)[1], zin.read(info))
    (tmp_path / "root" / "classification_v1.0").mkdir(parents=True)
    shutil.copyfile(flat, tmp_path / "root" / "classification_v1.0" / "m-forestnet.zip")
    ds = MForestNet(tmp_path / "root", checksum=False)
    assert ds.task_dir == tmp_path / "root" / "classification_v1.0" / "m-forestnet"
    assert len(ds) == 2


def test_checksum_source_unreachable_keeps_archive(tmp_path: Path, monkeypatch) -> None:
    def offline(remote):
        raise OSError("network is unreachable")

    monkeypatch.setattr(_download, "published_checksum", offline)
    shutil.copyfile(MADOS_ROOT / "MADOS.zip", tmp_path / "MADOS.zip")
    with pytest.raises(RuntimeError, match="checksum=False"):
        MADOS(tmp_path)
    assert (tmp_path / "MADOS.zip").exists()
    assert len(MADOS(tmp_path, checksum=False)) == 2


def test_published_checksum_reads_hub_and_zenodo_metadata(monkeypatch) -> None:
    import json
    import urllib.request

    import huggingface_hub
    from huggingface_hub.hf_api import RepoFile

    def get_paths_info(self, repo_id, paths, repo_type=None, **kwargs):
        assert (repo_id, paths, repo_type) == ("recursix/geo-bench-1.0",
                                               ["classification_v1.0/m-so2sat.zip"], "dataset")
        return [RepoFile(path=paths[0], size=10, oid="abc",
                         lfs={"size": 10, "oid": "ab" * 32, "pointerSize": 130})]

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", get_paths_info)
    published = _download.published_checksum(MSo2Sat.remote())
    assert (published.algorithm, published.hexdigest, published.size) == ("sha256", "ab" * 32, 10)

    record = {"files": [{"key": "MADOS.zip", "checksum": "md5:" + "cd" * 16, "size": 7}]}

    def urlopen(url, timeout=None):
        assert url == "https://zenodo.org/api/records/10664073"
        return io.BytesIO(json.dumps(record).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    published = _download.published_checksum(MADOS.remote)
    assert (published.algorithm, published.hexdigest, published.size) == ("md5", "cd" * 16, 7)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_sliding_window_batches_give_the_same_logits(batch_size) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 5, padding=2)  # a model whose windows see their borders
    image = torch.rand(2, 3, 45, 61)
    one = sliding_window_logits(conv, image, num_classes=4, window=16, stride=10, batch_size=1)
    many = sliding_window_logits(conv, image, num_classes=4, window=16, stride=10,
                                 batch_size=batch_size)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
    assert torch.equal(many.argmax(1), one.argmax(1))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        sliding_window_logits(conv, image, num_classes=4, window=16, batch_size=0)

