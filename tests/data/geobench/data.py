#!/usr/bin/env python3
"""Write tiny GEO-Bench v1 classification fixtures with the ``geobench`` package's own writer.

Run ONCE, in a throwaway environment that has the writer (it is deliberately not a dependency of
deflect_min)::

    python3.11 -m venv /tmp/gbvenv
    /tmp/gbvenv/bin/pip install geobench "numpy<2" shapely  # geobench 1.0.0 on Python 3.11
    /tmp/gbvenv/bin/python tests/data/geobench/data.py              # or: ... data.py m-forestnet

The generated files are committed, so the tests never need ``geobench``. The layout is the one the
Hugging Face dataset ``recursix/geo-bench-1.0`` unpacks to::

    classification_v1.0/<m-name>.zip                 (what download=True fetches)
    classification_v1.0/<m-name>/task_specs.pkl
    classification_v1.0/<m-name>/default_partition.json   (train / valid / test)
    classification_v1.0/<m-name>/band_stats.json
    classification_v1.0/<m-name>/<sample>.hdf5       (one HDF5 dataset per band + attrs["pickle"])

Band values are ``c_k + noise`` where ``c_k`` depends only on the band's position ``k`` in the
true band order (``bands_order``), so a test can check that a band selected by name comes back
in its named position although h5py lists the HDF5 keys alphabetically. The sizes are tiny
(8 x 8 for So2Sat and Brick Kiln, 16 x 16 for ForestNet, instead of 32 / 64 / 332 px) to keep the tree under 300 KB.

m-forestnet's bands carry ``meta_info["forest_loss_region"]``, the WKT of the forest-loss polygon
in pixel coordinates, written as the converter writes it (``forest_loss_polygon.wkt`` of a
shapely geometry: geo-bench ``make_benchmark/dataset_converters/forestnet.py`` at 4777011, lines
166-170 and 189-193): a polygon, a multipolygon, a polygon with a hole and a triangle, one per
sample. The pixels are not blended with white outside it (the values stay ``c_k + noise``).

geobench's ``Partition.save(as_default=True)`` makes ``default_partition.json`` a symlink; it is
replaced here by a regular copy so that git and zip archives carry the content.
"""

import datetime
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import rasterio.transform

import geobench as gb  # noqa: F401  (registers the historic module aliases)
from geobench import dataset as gbd
from geobench.label import Classification
from geobench.task import TaskSpecifications
from shapely.geometry import MultiPolygon, Polygon

HERE = Path(__file__).resolve().parent
BENCH = HERE / "classification_v1.0"
SIZE = 16  # ForestNet; So2Sat and Brick Kiln use 8 px (18 and 13 bands)
SPLITS = {"train": 2, "valid": 1, "test": 1}

SO2SAT_CLASSES = [
    "Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise",
    "Open mid rise", "Open low rise", "Lightweight low rise", "Large low rise",
    "Sparsely built", "Heavy industry", "Dense trees", "Scattered trees", "Bush, scrub",
    "Low plants", "Bare rock or paved", "Bare soil or sand", "Water",
]
FORESTNET_CLASSES = [
    "Oil palm plantation", "Timber plantation", "Other large-scale plantations",
    "Grassland shrubland", "Small-scale agriculture", "Small-scale mixed plantation",
    "Small-scale oil palm plantation", "Mining", "Fish pond", "Logging", "Secondary forest",
    "Other",
]


#: The forest-loss polygons of the four m-forestnet samples (pixel coordinates of 16 x 16 px).
FOREST_LOSS = [
    Polygon([(2, 3), (12, 4), (10, 13), (3, 11)]),
    MultiPolygon([Polygon([(1, 1), (4, 1), (4, 4), (1, 4)]),
                  Polygon([(8.5, 8.5), (14, 9), (12, 14.5)])]),
    Polygon([(0, 0), (15, 0), (15, 15), (0, 15)], holes=[[(5, 5), (10, 5), (10, 10), (5, 10)]]),
    Polygon([(3, 12), (13, 12), (8, 2)]),
]


def so2sat_band(k: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 reflectance (So2Sat stores reflectance): 0.01 (k + 1) + [0, 0.005)."""
    noise = np.floor(rng.random((SIZE, SIZE)) * 10) / 2048
    return (0.01 * (k + 1) + noise).astype(np.float32)


def brick_band(k: int, rng: np.random.Generator) -> np.ndarray:
    """Sentinel-2 digital numbers (reflectance x 10000): 100 (k + 1) + [0, 50)."""
    return (100 * (k + 1) + rng.integers(0, 50, (SIZE, SIZE))).astype(np.uint16)


def forest_band(k: int, rng: np.random.Generator) -> np.ndarray:
    """8-bit Landsat-8 brightness, as ForestNet ships it: 10 (k + 1) + [0, 5)."""
    return (10 * (k + 1) + rng.integers(0, 5, (SIZE, SIZE))).astype(np.uint8)


def write_task(name, bands_info, labels, n_classes, class_names, make_band, resolution,
               geo=False, dated=False, s1=0, size=SIZE, regions=None):
    global SIZE
    SIZE = size
    rng = np.random.default_rng(0)
    out = BENCH / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    TaskSpecifications(
        dataset_name=name,
        benchmark_name="classification_v1.0",
        bands_info=bands_info,
        spatial_resolution=resolution,
        patch_size=(SIZE, SIZE),
        n_time_steps=1,
        label_type=Classification(n_classes, class_names),
    ).save(str(out), overwrite=True)

    partition = gbd.Partition()
    values: dict[str, list[np.ndarray]] = {}
    i = 0
    for split, n in SPLITS.items():
        for _ in range(n):
            sample_name = f"{name.replace('m-', '')}_{i:04d}"
            date = datetime.date(2016 + i, 1, 1) if dated else None
            transform = rasterio.transform.from_bounds(
                100 + i, 1, 100.01 + i, 1.01, SIZE, SIZE) if geo else None
            crs = "EPSG:4326" if geo else None
            meta = {"n_cloud_pixels": None, "is_composite": True} if dated else None
            if regions is not None:
                meta["forest_loss_region"] = regions[i].wkt
            bands = []
            for j, info in enumerate(bands_info):
                if j < s1:  # So2Sat's Sentinel-1 channels: noise
                    data = rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32)
                else:
                    data = make_band(j - s1, rng)
                values.setdefault(info.name, []).append(data.ravel())
                bands.append(gbd.Band(data=data, band_info=info, spatial_resolution=resolution,
                                      date=date, transform=transform, crs=crs, meta_info=meta,
                                      convert_to_int16=False))
            gbd.Sample(bands, label=int(labels[i]), sample_name=sample_name).write(str(out))
            partition.add(split, sample_name)
            i += 1
    partition.save(str(out), "original", as_default=True)
    default = out / "default_partition.json"
    default.unlink()
    shutil.copyfile(out / "original_partition.json", default)

    stats = {k: gbd.compute_stats(np.concatenate(v)).to_dict() for k, v in values.items()}
    with open(out / "band_stats.json", "w") as fd:
        json.dump(stats, fd, indent=2)

    archive = BENCH / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(out.rglob("*")):
            zf.write(path, path.relative_to(BENCH).as_posix())
    print(archive.name, archive.stat().st_size, "bytes")


def main(tasks: list[str]) -> None:
    s2 = gbd.sentinel2_13_bands
    l8 = gbd.landsat8_9_bands
    if "m-so2sat" in tasks:
        write_task("m-so2sat", gbd.sentinel1_8_bands + s2[1:9] + s2[-2:], [0, 16, 5, 3], 17,
                   SO2SAT_CLASSES, so2sat_band, 10, s1=8, size=8)
    if "m-brick-kiln" in tasks:
        write_task("m-brick-kiln", s2, [0, 1, 1, 0], 2, ["not brick kiln", "brick kiln"],
                   brick_band, 10, geo=True, size=8)
    if "m-forestnet" in tasks:
        write_task("m-forestnet", l8[3:0:-1] + l8[4:7], [0, 11, 7, 2], 12, FORESTNET_CLASSES,
                   forest_band, 15, geo=True, dated=True, size=16, regions=FOREST_LOSS)


if __name__ == "__main__":
    main(sys.argv[1:] or ["m-so2sat", "m-brick-kiln", "m-forestnet"])
