"""What the five dataset classes share: band and split checks, errors, statistics, plotting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset
from torchgeo.datasets.errors import RGBBandsMissingError

from ..bands import BANDS, rgb_of
from . import _download

__all__ = ["DataNotFoundError", "UnreadableFileError", "BenchmarkDataset"]


class DataNotFoundError(DatasetNotFoundError):
    """The data are not under ``root``; the message gives the exact call that downloads them.

    A subclass of torchgeo's :class:`~torchgeo.datasets.DatasetNotFoundError` (and so of
    :class:`FileNotFoundError`), with a message that names the dataset.
    """

    def __init__(self, message: str) -> None:
        FileNotFoundError.__init__(self, message)


class UnreadableFileError(OSError):
    """A data file is truncated, corrupt or not in the expected format; the message names it."""


class BenchmarkDataset(NonGeoDataset):
    """Base class: ``root``, ``split``, ``bands`` (sensor-qualified names) and ``transforms``.

    Subclasses set the class attributes below and implement ``__len__`` / ``__getitem__``.
    Images are float32 reflectance (C, H, W); standardisation is left to the model (spectral
    indices need reflectance), with the per-band statistics in :attr:`band_stats`.
    """

    #: Every band the dataset has, in its true order (sensor-qualified names).
    all_bands: ClassVar[tuple[str, ...]] = ()
    #: Class names, index = label value.
    classes: ClassVar[tuple[str, ...]] = ()
    #: Split names accepted by ``split``.
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: "classification" (sample key "label") or "segmentation" (sample key "mask").
    task: ClassVar[str] = "classification"
    #: Mask value ignored by losses and metrics (segmentation only).
    ignore_index: ClassVar[int | None] = None

    #: Per-band reflectance mean and std in ``all_bands`` order, for datasets with fixed
    #: statistics (others override :meth:`_all_band_stats`).
    _mean: ClassVar[tuple[float, ...]] = ()
    _std: ClassVar[tuple[float, ...]] = ()

    root: Path
    split: str
    bands: tuple[str, ...]
    transforms: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None

    def __init__(self, root: str | Path = "data", split: str = "train",
                 bands: Sequence[str] | None = None,
                 transforms: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                 download: bool = False, checksum: bool = True) -> None:
        self._setup(root, split, bands, transforms, download, checksum)
        self._index()

    def _index(self) -> None:
        """Find the data (downloading them if allowed) and list the split's samples."""
        raise NotImplementedError

    def _setup(self, root: str | Path, split: str, bands: Sequence[str] | None,
               transforms: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None,
               download: bool, checksum: bool) -> None:
        self.root = Path(root)
        self.download = download
        self.checksum = checksum
        self.transforms = transforms
        name = type(self).__name__
        if split not in self.splits:
            raise ValueError(f"{name}: unknown split {split!r}; valid splits are "
                             f"{list(self.splits)}, e.g. {name}(root=..., split={self.splits[0]!r}).")
        self.split = split
        if bands is None:
            bands = self.all_bands
        if isinstance(bands, str):
            raise ValueError(f"{name}: bands must be a list of band names, got the string "
                             f"{bands!r}; write bands=[{bands!r}, ...].")
        bands = tuple(bands)
        unknown = [b for b in bands if b not in self.all_bands]
        if unknown:
            hint = ""
            same = [b for b in self.all_bands if b.split("_", 1)[1] in
                    {u.split("_", 1)[-1] for u in unknown}]
            if same:
                hint = f" (band names are sensor-qualified: did you mean {same}?)"
            raise ValueError(f"{name}: unknown band name(s) {unknown}{hint}. Valid bands of "
                             f"{name} are {list(self.all_bands)}.")
        if not bands:
            raise ValueError(f"{name}: bands is empty; choose from {list(self.all_bands)}.")
        if len(set(bands)) != len(bands):
            raise ValueError(f"{name}: duplicate band names in {list(bands)}.")
        self.bands = bands
        self.band_indices = [self.all_bands.index(b) for b in bands]

    # ------------------------------------------------------------------ metadata
    @property
    def band_names(self) -> list[str]:
        """The selected bands, in the order of the image channels."""
        return list(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of classes (the ignore value of a mask is not a class)."""
        return len(self.classes)

    @property
    def rgb_bands(self) -> tuple[str, str, str] | None:
        """(red, green, blue) band names among the selected bands, or None if one is missing."""
        try:
            return rgb_of(list(self.bands))
        except ValueError:
            return None

    @property
    def wavelengths(self) -> list[float]:
        """Centre wavelength (nm) of each selected band."""
        return [BANDS[b].wavelength for b in self.bands]

    @property
    def band_stats(self) -> dict[str, tuple[float, float]]:
        """Per-band (mean, std) of the selected bands, in reflectance units."""
        stats = self._all_band_stats()
        return {b: stats[b] for b in self.bands}

    @property
    def mean(self) -> Tensor:
        """Per-channel mean (reflectance) as a float32 tensor of shape (C,)."""
        return torch.tensor([m for m, _ in self.band_stats.values()], dtype=torch.float32)

    @property
    def std(self) -> Tensor:
        """Per-channel standard deviation (reflectance) as a float32 tensor of shape (C,)."""
        return torch.tensor([s for _, s in self.band_stats.values()], dtype=torch.float32)

    def _all_band_stats(self) -> dict[str, tuple[float, float]]:
        if not self._mean:
            raise NotImplementedError
        return {b: (m, s) for b, m, s in zip(self.all_bands, self._mean, self._std)}

    # ------------------------------------------------------------------ finding the data
    def _locate(self, find: Callable[[], Path | None], remote: _download.Remote,
                looked_for: str, **extract: Any) -> Path:
        """The extracted data folder under ``root``; downloads and extracts the archive first
        when it is missing and ``download=True`` (or when the archive already lies in root)."""
        found = find()
        if found is None and _download.download_and_extract(
                remote, self.root, dataset=type(self).__name__, download=self.download,
                checksum=self.checksum, retry_call=self._download_call(), **extract):
            found = find()
        if found is None:
            raise self._not_found(looked_for)
        return found

    # ------------------------------------------------------------------ errors
    def _download_call(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, download=True)"

    def _not_found(self, looked_for: str) -> DataNotFoundError:
        name = type(self).__name__
        return DataNotFoundError(
            f"{name}: dataset not found in root={str(self.root)!r} (looked for {looked_for}). "
            f"Download it with {self._download_call()}, or pass the root that holds it."
        )

    def _unreadable(self, path: Path | str, error: BaseException) -> UnreadableFileError:
        name = type(self).__name__
        return UnreadableFileError(
            f"{name}: cannot read {path} ({type(error).__name__}: {error}). The file is truncated, "
            f"corrupt or not in the expected format; delete the dataset folder and download it "
            f"again with {self._download_call()}."
        )

    def _apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def __str__(self) -> str:
        return (f"{type(self).__name__} Dataset\n    type: NonGeoDataset\n    split: {self.split}"
                f"\n    bands: {list(self.bands)}\n    size: {len(self)}")

    # ------------------------------------------------------------------ plotting
    def plot(self, sample: dict[str, Tensor], show_titles: bool = True,
             suptitle: str | None = None):
        """Plot an RGB composite of a sample and its label or mask (and prediction, if any).

        Raises:
            RGBBandsMissingError: if the selected bands lack red, green or blue.
        """
        import matplotlib.pyplot as plt

        rgb = self.rgb_bands
        if rgb is None:
            raise RGBBandsMissingError()
        image = rearrange(sample["image"][[self.bands.index(b) for b in rgb]].numpy(),
                          "c h w -> h w c")
        finite = image[np.isfinite(image).all(-1)]
        if finite.size:
            lo, hi = np.percentile(finite, 2, axis=0), np.percentile(finite, 98, axis=0)
        else:
            lo, hi = 0.0, 1.0
        image = np.clip((image - lo) / np.maximum(hi - lo, 1e-6), 0, 1)

        panels = [("Image", image, None)]
        if "mask" in sample:
            panels.append(("Mask", sample["mask"].numpy(), "mask"))
        if "prediction" in sample and sample["prediction"].ndim >= 2:
            panels.append(("Prediction", sample["prediction"].numpy(), "mask"))
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for ax, (title, data, kind) in zip(axes[0], panels):
            if kind == "mask":
                shown = np.ma.masked_equal(data, self.ignore_index) if self.ignore_index is not None \
                    else data
                ax.imshow(shown, cmap="tab20", vmin=0, vmax=max(self.num_classes - 1, 1),
                          interpolation="nearest")
            else:
                ax.imshow(data)
            ax.axis("off")
            if show_titles:
                if title == "Image" and "label" in sample:
                    title = f"Label: {self.classes[int(sample['label'])]}"
                    if "prediction" in sample and sample["prediction"].ndim == 0:
                        title += f"\nPrediction: {self.classes[int(sample['prediction'])]}"
                ax.set_title(title)
        if suptitle is not None:
            fig.suptitle(suptitle)
        return fig
