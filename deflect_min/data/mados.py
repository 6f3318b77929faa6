"""MADOS: Marine Debris and Oil Spill (Kikaki et al. 2024; Zenodo record 10664073).

Sentinel-2 L2R (ACOLITE) patches of 240 x 240 px at 10 m. The zip ``MADOS.zip`` unpacks to
``MADOS/``::

    MADOS/Scene_<k>/10/Scene_<k>_L2R_rhorc_<wavelength>_<crop>.tif   (B2, B3, B4, B8)
    MADOS/Scene_<k>/20/Scene_<k>_L2R_rhorc_<wavelength>_<crop>.tif   (B5, B6, B7, B8A, B11, B12)
    MADOS/Scene_<k>/60/Scene_<k>_L2R_rhorc_<wavelength>_<crop>.tif   (B1)
    MADOS/Scene_<k>/10/Scene_<k>_L2R_cl_<crop>.tif                   (classes, 0 = unlabelled)
    MADOS/splits/{train,val,test}_X.txt                              (Scene_<k>_<crop> per line)

Reading, as in PANGAEA and the original MADOS code:

* the 11 band files of a crop are ordered by their wavelength (the integer before the crop id),
  giving B1, B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12;
* 20 m and 60 m bands are upsampled to 10 m (nearest, factor ``resolution // 10``);
* the target is ``cl - 1``: unlabelled pixels become -1 (ignored), classes are 0 ... 14;
* NaN reflectance (ACOLITE leaves some) is replaced by the band's mean reflectance, as the
  original MADOS code does (PANGAEA uses 0), and those pixels are set to -1 in the mask.

Files are read lazily, one crop per ``__getitem__``: the whole set (about 7 GB as float32) does
not fit in Colab's RAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _download
from ._common import BenchmarkDataset

__all__ = ["MADOS"]

ZENODO_RECORD = "10664073"


class MADOS(BenchmarkDataset):
    """MADOS segmentation: ``{"image": float32 (C, 240, 240), "mask": int64 (240, 240)}``.

    Args:
        root: folder that holds (or will hold) ``MADOS/`` (the ``MADOS`` folder itself works too).
        split: ``"train"``, ``"val"`` or ``"test"`` (the official ``splits/<split>_X.txt``).
        bands: band names (default: the 11 bands ``S2_B01`` ... ``S2_B12``, no B9 / B10).
        transforms: callable applied to each sample dict.
        download: download ``MADOS.zip`` from Zenodo if needed.
        checksum: verify the zip against the MD5 Zenodo publishes before extracting it.

    Example::

        ds = MADOS(root="data/mados", split="train", download=True)
    """

    all_bands = ("S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07",
                 "S2_B08", "S2_B8A", "S2_B11", "S2_B12")
    classes = ("Marine Debris", "Dense Sargassum", "Sparse Floating Algae",
               "Natural Organic Material", "Ship", "Oil Spill", "Marine Water",
               "Sediment-Laden Water", "Foam", "Turbid Water", "Shallow Water",
               "Waves & Wakes", "Oil Platform", "Jellyfish", "Sea snot")
    task = "segmentation"
    ignore_index = -1
    #: PANGAEA ``configs/dataset/mados.yaml`` statistics (reflectance).
    _mean = (0.0582676, 0.05223386, 0.04381474, 0.0357083, 0.03412902, 0.03680401, 0.03999107,
             0.03566642, 0.03965081, 0.0267993, 0.01978944)
    _std = (0.03240627, 0.03432253, 0.0354812, 0.0375769, 0.03785412, 0.04992323, 0.05884482,
            0.05545856, 0.06423746, 0.04211187, 0.03019115)
    remote = _download.Remote(
        relpath="MADOS.zip", zenodo_record=ZENODO_RECORD,
        url=f"https://zenodo.org/records/{ZENODO_RECORD}/files/MADOS.zip?download=1")

    def _index(self) -> None:
        self.data_dir = self._locate(self._find_data_dir, self.remote,
                                     "MADOS/splits/train_X.txt and MADOS/Scene_*/")
        split_file = self.data_dir / "splits" / f"{self.split}_X.txt"
        try:
            names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        except OSError as error:
            raise self._unreadable(split_file, error) from error
        self.crops = names
        self.files: list[tuple[list[Path], Path]] = [self._crop_files(n) for n in names]

    def _find_data_dir(self) -> Path | None:
        for candidate in (self.root / "MADOS", self.root):
            if (candidate / "splits" / "train_X.txt").is_file():
                return candidate
        return None

    def _crop_files(self, crop_name: str) -> tuple[list[Path], Path]:
        scene, _, crop = crop_name.rpartition("_")
        scene_dir = self.data_dir / scene
        bands = [p for res in ("10", "20", "60")
                 for p in (scene_dir / res).glob(f"{scene}_L2R_rhorc_*_{crop}.tif")]
        bands.sort(key=lambda p: int(p.stem.split("_")[-2]))
        label = scene_dir / "10" / f"{scene}_L2R_cl_{crop}.tif"
        if len(bands) != len(self.all_bands) or not label.is_file():
            raise self._unreadable(
                scene_dir, FileNotFoundError(
                    f"crop {crop_name} listed in splits/{self.split}_X.txt needs "
                    f"{len(self.all_bands)} rhorc bands and a _cl_ file, found {len(bands)} "
                    f"bands{'' if label.is_file() else ' and no ' + label.name}"))
        return bands, label

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Return ``{"image": float32 (C, H, W) reflectance, "mask": int64 (H, W)}``."""
        import rasterio
        from rasterio.enums import Resampling

        band_paths, label_path = self.files[index]
        path = label_path
        try:
            with rasterio.open(label_path) as src:
                mask = src.read(1).astype(np.int64) - 1
            height, width = mask.shape
            channels = []
            for b in self.band_indices:
                path = band_paths[b]
                with rasterio.open(path) as src:
                    factor = int(path.parent.name) // 10
                    band = src.read(1, out_shape=(src.height * factor, src.width * factor),
                                    resampling=Resampling.nearest, out_dtype="float32")
                if band.shape != (height, width):
                    raise ValueError(f"band is {band.shape} after upsampling x{factor}, "
                                     f"label is {(height, width)}")
                channels.append(band)
        except Exception as error:  # rasterio errors, shape mismatch
            raise self._unreadable(path, error) from error
        image = np.stack(channels)
        nan = ~np.isfinite(image)
        if nan.any():
            for c, b in enumerate(self.band_indices):
                image[c][nan[c]] = self._mean[b]
            mask[nan.any(axis=0)] = self.ignore_index
        mask[mask < -1] = self.ignore_index
        return self._apply({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)})
