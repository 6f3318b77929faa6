#!/usr/bin/env python3
"""Write a tiny HLS Burn Scars fixture in the real layout and format.

``training/`` (4 scenes: PANGAEA's 90 / 10 split gives 3 train, 1 val) and ``validation/``
(2 scenes, the test split), each scene a pair of GeoTIFFs named as in the real archive:

* ``subsetted_32x32_HLS.S30.<tile>.<yyyyddd>.v1.4_merged.tif``: 6 float32 bands
  (B02, B03, B04, B8A, B11, B12), UTM georeferencing, ``nodata=-9999``;
* ``subsetted_32x32_HLS.S30.<tile>.<yyyyddd>.v1.4.mask.tif``: 1 int16 band, 1 / 0 / -1.

32 x 32 px instead of 512, and named so: the real archive names every scene
``subsetted_512x512_HLS...``, and the loader refuses a scene whose size is not the one its name
states (a 512 x 512 scene is tested in tests/test_datasets.py, written there). Band ``k`` holds ``0.05 (k + 1) + [0, 0.01)`` so a test can check
band order. The first training scene has -9999 in every band on its top-left 2 x 2 pixels and
9999 in band B11 at pixel (0, 5); the mask marks the first row of each scene -1 (missing).
Everything is tarred into ``hls_burn_scars.tar.gz`` (members ``training/...``,
``validation/...``) for the download test.

Run: ``.venv/bin/python tests/data/hls_burn_scars/data.py``
"""

import shutil
import tarfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
SIZE = 32
SCENES = {
    "training": [("T10SEH", "2018190"), ("T10SFH", "2019200"), ("T11SKB", "2020210"),
                 ("T12RUV", "2021220")],
    "validation": [("T10TEK", "2018250"), ("T13SDA", "2020260")],
}


def write_scene(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, index: int) -> None:
    """One scene as the real archive holds it: ``<stem>_merged.tif`` (6 float32 bands,
    nodata -9999) and ``<stem>.mask.tif`` (int16), UTM 30 m, placed ``index`` km apart."""
    profile = dict(driver="GTiff", width=image.shape[-1], height=image.shape[-2],
                   crs="EPSG:32610", transform=from_origin(500000 + 1000 * index, 4200000, 30, 30),
                   compress="deflate")
    with rasterio.open(folder / f"{stem}_merged.tif", "w", count=6, dtype="float32",
                       nodata=-9999, **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"{stem}.mask.tif", "w", count=1, dtype="int16", **profile) as dst:
        dst.write(mask[None])


def main() -> None:
    rng = np.random.default_rng(0)
    for folder, scenes in SCENES.items():
        out = HERE / folder
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        for i, (tile, date) in enumerate(scenes):
            image = np.stack([0.05 * (k + 1) + np.floor(rng.random((SIZE, SIZE)) * 10) / 1024
                              for k in range(6)]).astype(np.float32)
            if folder == "training" and i == 0:
                image[:, :2, :2] = -9999
                image[4, 0, 5] = 9999
            mask = rng.integers(0, 2, (SIZE, SIZE)).astype(np.int16)
            mask[0, :] = -1
            write_scene(out, f"subsetted_{SIZE}x{SIZE}_HLS.S30.{tile}.{date}.v1.4", image, mask, i)
    with tarfile.open(HERE / "hls_burn_scars.tar.gz", "w:gz") as tar:
        for folder in SCENES:
            for path in sorted((HERE / folder).iterdir()):
                tar.add(path, arcname=f"{folder}/{path.name}")


if __name__ == "__main__":
    main()
