"""Write a tiny EuroSAT in torchgeo's on-disk layout (run from this folder).

The layout follows torchgeo's own test data generator, microsoft/torchgeo
``tests/data/eurosat/data.py`` (commit 9abbc7a, MIT licence): 13-band uint16 GeoTIFFs of 64 x 64
px under ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<k>.tif``, LZW,
UTM; and the split lists ``eurosat-{train,val,test}.txt`` that ``torchgeo.datasets.EuroSAT``
reads (torchgeo/datasets/eurosat.py: one file name per line, ``.jpg`` names mapped to ``.tif``).
Values are random reflectance x 10^4 (the real files' scale).
"""

import numpy as np
import rasterio
from rasterio.transform import from_origin

BASE = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
FILES = {"AnnualCrop": ["AnnualCrop_1", "AnnualCrop_2"], "Forest": ["Forest_1", "Forest_2"]}
SPLITS = {"train": ["AnnualCrop_1", "Forest_1", "AnnualCrop_2", "Forest_2"],
          "val": ["AnnualCrop_2", "Forest_2"], "test": ["AnnualCrop_1", "Forest_1"]}

rng = np.random.default_rng(0)
for cls, names in FILES.items():
    for name in names:
        data = rng.integers(300, 3000, size=(13, 64, 64), dtype=np.uint16)
        path = f"{BASE}/{cls}/{name}.tif"
        __import__("os").makedirs(f"{BASE}/{cls}", exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", dtype="uint16", count=13, height=64,
                           width=64, crs="EPSG:32635", compress="lzw",
                           transform=from_origin(624602.23, 4877286.03, 10, 10)) as dst:
            dst.write(data)
for split, names in SPLITS.items():
    with open(f"eurosat-{split}.txt", "w") as f:
        f.write("".join(f"{n}.jpg\n" for n in names))
