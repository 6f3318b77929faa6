#!/usr/bin/env python3
"""Write a tiny MADOS fixture in the real layout and format.

``MADOS/Scene_<k>/{10,20,60}/Scene_<k>_L2R_rhorc_<wavelength>_<crop>.tif`` single-band float32
GeoTIFFs (24 / 12 / 4 px at 10 / 20 / 60 m instead of 240 / 120 / 40), the class raster
``Scene_<k>_L2R_cl_<crop>.tif`` (uint8, 0 = unlabelled, 1 ... 15) with ``_conf_`` and ``_rep_``
companions in ``10/``, and ``MADOS/splits/{train,val,test}_X.txt``. Scene_1 uses the
Sentinel-2B wavelengths (442, 492, 559, ...) to check ordering by wavelength.

Band ``k`` (in wavelength order) holds ``0.01 (k + 1)`` plus noise in ``[0, 0.005)``; crop
``Scene_0_1`` has NaN in band B2 (492 nm) at pixels ``[0, 0:3]``. Zipped as ``MADOS.zip`` with
the top-level ``MADOS/`` folder, as on Zenodo.

Run: ``.venv/bin/python tests/data/mados/data.py``
"""

import shutil
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
ROOT = HERE / "MADOS"
SIZE = 24
S2A = [(443, 60), (492, 10), (560, 10), (665, 10), (704, 20), (740, 20), (783, 20), (833, 10),
       (865, 20), (1614, 20), (2202, 20)]
S2B = [(442, 60), (492, 10), (559, 10), (665, 10), (704, 20), (739, 20), (780, 20), (833, 10),
       (864, 20), (1610, 20), (2186, 20)]
CROPS = {"Scene_0": ([1, 2], S2A), "Scene_1": ([1], S2B), "Scene_2": ([3], S2A)}
SPLITS = {"train": ["Scene_0_1", "Scene_1_1"], "val": ["Scene_0_2"], "test": ["Scene_2_3"]}


def write(path: Path, array: np.ndarray, res: int, dtype: str) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
                       count=1, dtype=dtype, crs="EPSG:32634", compress="deflate",
                       transform=from_origin(600000, 4000000, res, res)) as dst:
        dst.write(array.astype(dtype)[None])


def main() -> None:
    rng = np.random.default_rng(0)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    for scene, (crops, wavelengths) in CROPS.items():
        for res in (10, 20, 60):
            (ROOT / scene / str(res)).mkdir(parents=True)
        for crop in crops:
            for k, (wl, res) in enumerate(wavelengths):
                n = SIZE * 10 // res
                band = 0.01 * (k + 1) + np.floor(rng.random((n, n)) * 10) / 2048
                if scene == "Scene_0" and crop == 1 and wl == 492:
                    band[0, 0:3] = np.nan
                write(ROOT / scene / str(res) / f"{scene}_L2R_rhorc_{wl}_{crop}.tif", band, res,
                      "float32")
            cl = rng.integers(0, 16, (SIZE, SIZE))
            cl[-1, :] = 0  # unlabelled
            cl[-2, :3] = [1, 15, 7]
            ten = ROOT / scene / "10"
            write(ten / f"{scene}_L2R_cl_{crop}.tif", cl, 10, "uint8")
            write(ten / f"{scene}_L2R_conf_{crop}.tif", rng.integers(1, 4, (SIZE, SIZE)), 10,
                  "uint8")
            write(ten / f"{scene}_L2R_rep_{crop}.tif", rng.integers(1, 3, (SIZE, SIZE)), 10,
                  "uint8")
    (ROOT / "splits").mkdir()
    for split, names in SPLITS.items():
        (ROOT / "splits" / f"{split}_X.txt").write_text("\n".join(names) + "\n")
    with zipfile.ZipFile(HERE / "MADOS.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(ROOT.rglob("*")):
            zf.write(path, path.relative_to(HERE).as_posix())


if __name__ == "__main__":
    main()
