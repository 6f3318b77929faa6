"""HLS Burn Scars (IBM / NASA, Hugging Face ``ibm-nasa-geospatial/hls_burn_scars``).

804 HLS scenes of 512 x 512 px with 6 bands (Blue, Green, Red, NIR-narrow, SWIR1, SWIR2) and a
burn-scar mask (1 burn scar, 0 not burned, -1 missing). The archive ``hls_burn_scars.tar.gz``
unpacks to ``training/`` and ``validation/``, each with pairs::

    subsetted_512x512_HLS.S30.<tile>.<yyyyddd>.v1.4_merged.tif   (6 bands, float reflectance)
    subsetted_512x512_HLS.S30.<tile>.<yyyyddd>.v1.4.mask.tif     (1 band)

Splits follow PANGAEA: ``train`` / ``val`` are a 90 / 10 split of the sorted ``training/``
scenes made like ``sklearn.model_selection.train_test_split(test_size=0.1, random_state=23)``
(reproduced here without sklearn: ``RandomState(23).permutation(n)``, the first
``ceil(0.1 n)`` indices are ``val``); ``test`` is ``validation/``.

Scene size: every scene must have the size its file name states (``subsetted_512x512_``: 512 x
512 px, as in all of the real archive; 512 x 512 for a name without it); another size, e.g. a
scene cropped or cut short, is refused with an error that names the file.

Nodata: pixels equal to the file's nodata tag, to -9999 or to 9999 (the value PANGAEA zeroes),
or not finite, in any band, get the band's mean reflectance in the image (so spectral indices stay
finite) and -1 (ignored) in the mask.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _download
from ._common import BenchmarkDataset

__all__ = ["HLSBurnScars", "SCENE_SIZE", "pangaea_train_val_split", "scene_shape"]

HF_REPO = "ibm-nasa-geospatial/hls_burn_scars"
NODATA_VALUES = (-9999.0, 9999.0)
#: The side of every scene of the archive, in pixels.
SCENE_SIZE = 512
_SIZE_IN_NAME = re.compile(r"^subsetted_(\d+)x(\d+)_")


def scene_shape(path: str | Path) -> tuple[int, int]:
    """The (height, width) a scene file must have: the size in its name
    (``subsetted_512x512_HLS...``), else :data:`SCENE_SIZE` square."""
    m = _SIZE_IN_NAME.match(Path(path).name)
    return (int(m[1]), int(m[2])) if m else (SCENE_SIZE, SCENE_SIZE)


def pangaea_train_val_split(n: int, seed: int = 23, val_fraction: float = 0.1
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices equal to ``train_test_split(arange(n), test_size=0.1, random_state=23)``.

    sklearn's ShuffleSplit draws ``RandomState(seed).permutation(n)`` and takes the first
    ``ceil(test_size * n)`` entries as the test (here: val) part, the rest as train.
    """
    n_val = math.ceil(val_fraction * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


class HLSBurnScars(BenchmarkDataset):
    """HLS Burn Scars segmentation: ``{"image": float32 (C, 512, 512), "mask": int64 (512, 512)}``.

    Args:
        root: folder that holds (or will hold) ``training/`` and ``validation/``.
        split: ``"train"``, ``"val"`` (PANGAEA's 90 / 10 split of ``training/``) or ``"test"``
            (``validation/``).
        bands: band names (default: all 6, ``HLS_B02`` ... ``HLS_B12``).
        transforms: callable applied to each sample dict.
        download: download ``hls_burn_scars.tar.gz`` from the Hugging Face hub if needed.
        checksum: verify the archive against the SHA-256 the hub publishes before extracting.

    Example::

        ds = HLSBurnScars(root="data/hls_burn_scars", split="train", download=True)
    """

    all_bands = ("HLS_B02", "HLS_B03", "HLS_B04", "HLS_B8A", "HLS_B11", "HLS_B12")
    classes = ("Not burned", "Burn scar")
    task = "segmentation"
    ignore_index = -1
    #: PANGAEA ``configs/dataset/hlsburnscars.yaml`` statistics (reflectance).
    _mean = (0.0333, 0.0570, 0.0589, 0.2323, 0.1973, 0.1194)
    _std = (0.0227, 0.0268, 0.0400, 0.0779, 0.0871, 0.0724)
    remote = _download.Remote(
        relpath="hls_burn_scars.tar.gz", hf_repo=HF_REPO, hf_path="hls_burn_scars.tar.gz",
        url=f"https://huggingface.co/datasets/{HF_REPO}/resolve/main/hls_burn_scars.tar.gz")

    def _index(self) -> None:
        split = self.split
        self.data_dir = self._locate(self._find_data_dir, self.remote,
                                     "training/*_merged.tif and validation/*_merged.tif")
        folder = self.data_dir / ("validation" if split == "test" else "training")
        images = sorted(folder.glob("*_merged.tif"), key=lambda p: p.name)
        pairs = []
        for image in images:
            mask = image.with_name(image.name[: -len("_merged.tif")] + ".mask.tif")
            if not mask.is_file():
                raise self._unreadable(mask, FileNotFoundError("mask missing for " + image.name))
            pairs.append((image, mask))
        if split != "test":
            train, val = pangaea_train_val_split(len(pairs))
            pairs = [pairs[i] for i in (train if split == "train" else val)]
        self.files = pairs

    def _find_data_dir(self) -> Path | None:
        candidates = [self.root, self.root / "hls_burn_scars"]
        if self.root.is_dir():
            candidates += sorted(p for p in self.root.iterdir() if p.is_dir())
        for candidate in candidates:
            if all(any((candidate / sub).glob("*_merged.tif")) if (candidate / sub).is_dir()
                   else False for sub in ("training", "validation")):
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Return ``{"image": float32 (C, H, W) reflectance, "mask": int64 (H, W)}``."""
        import rasterio

        image_path, mask_path = self.files[index]
        try:
            with rasterio.open(image_path) as src:
                data = src.read(out_dtype="float32")
                nodata = src.nodata
            with rasterio.open(mask_path) as src:
                mask = src.read(1).astype(np.int64)
        except Exception as error:  # rasterio raises RasterioIOError, CPLE_* ...
            path = mask_path if "data" in locals() else image_path
            raise self._unreadable(path, error) from error
        if data.shape[0] != len(self.all_bands) or data.shape[1:] != mask.shape:
            raise self._unreadable(image_path, ValueError(
                f"expected {len(self.all_bands)} bands matching the mask {mask.shape}, "
                f"got {data.shape}"))
        expected = scene_shape(image_path)
        if data.shape[1:] != expected:
            raise self._unreadable(image_path, ValueError(
                f"the scene is {data.shape[1]} x {data.shape[2]} px, not the {expected[0]} x "
                f"{expected[1]} px of HLS Burn Scars scenes that its name states; was it cropped "
                f"or cut short?"))
        invalid = ~np.isfinite(data)
        for value in NODATA_VALUES + ((nodata,) if nodata is not None else ()):
            if value is not None and np.isfinite(value):
                invalid |= data == np.float32(value)
        invalid_px = invalid.any(axis=0)
        data = data[self.band_indices]
        if invalid_px.any():
            for c, b in enumerate(self.band_indices):
                data[c][invalid_px] = self._mean[b]
            mask[invalid_px] = self.ignore_index
        sample = {"image": torch.from_numpy(np.ascontiguousarray(data)),
                  "mask": torch.from_numpy(mask)}
        return self._apply(sample)
