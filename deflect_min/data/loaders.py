"""Train / val / test ``DataLoader``s for the five benchmarks, with the crops the models need.

The datasets already return **reflectance** (each class applies its own scaling: GEO-Bench
m-brick-kiln digital numbers x 1e-4, m-forestnet 8-bit / 255, the others are stored as
reflectance), so nothing here rescales by default. The ViT backbones take 224 x 224 inputs:

* classification (32 / 64 / 332 px images): every split is **resized** to 224 (bilinear);
* segmentation (512 px HLS, 240 px MADOS): training takes a **random 224 crop**; evaluation takes
  the **centre 224 crop** (``eval_mode="center"``, quick) or the **full image**
  (``eval_mode="full"``) to be predicted with :func:`sliding_window_logits`, which tiles it with
  overlapping 224 windows and averages the logits (the way PANGAEA evaluates).

Standardisation is the model's job (spectral indices need reflectance); pass
``standardize=True`` to get images standardised with the dataset's ``band_stats`` instead.

Example::

    from deflect_min.data import make_dataloaders
    loaders = make_dataloaders("hls-burn-scars", root="data/hls", download=True, batch_size=8)
    batch = next(iter(loaders["train"]))     # image (8, 6, 224, 224), mask (8, 224, 224)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import Compose  # applies sample-dict transforms in order

from .catalogue import dataset_class

__all__ = ["Resize", "RandomCrop", "CenterCrop", "Standardize", "Compose", "make_dataloaders",
           "sliding_window_logits", "window_origins"]

Sample = dict[str, Tensor]


class Resize:
    """Resize ``image`` (bilinear) and ``mask`` (nearest) to ``size`` x ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        image = sample["image"]
        if image.shape[-2:] != (self.size, self.size):
            sample["image"] = F.interpolate(image[None], size=(self.size, self.size),
                                            mode="bilinear", align_corners=False)[0]
        if "mask" in sample and sample["mask"].shape[-2:] != (self.size, self.size):
            mask = sample["mask"][None, None].float()
            sample["mask"] = F.interpolate(mask, size=(self.size, self.size),
                                           mode="nearest")[0, 0].long()
        return sample


def _pad_to(sample: Sample, size: int, ignore_index: int) -> Sample:
    h, w = sample["image"].shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return sample
    sample = dict(sample)
    sample["image"] = F.pad(sample["image"], (0, pw, 0, ph), value=0.0)
    if "mask" in sample:
        sample["mask"] = F.pad(sample["mask"], (0, pw, 0, ph), value=ignore_index)
    return sample


class _Crop:
    """``size`` x ``size`` crop of image and mask (padding with ``ignore_index`` if small)."""

    def __init__(self, size: int, ignore_index: int = -1) -> None:
        self.size, self.ignore_index = size, ignore_index

    def _origin(self, max_top: int, max_left: int) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, sample: Sample) -> Sample:
        sample = _pad_to(sample, self.size, self.ignore_index)
        h, w = sample["image"].shape[-2:]
        top, left = self._origin(h - self.size, w - self.size)
        window = (..., slice(top, top + self.size), slice(left, left + self.size))
        out = dict(sample)
        out["image"] = sample["image"][window]
        if "mask" in sample:
            out["mask"] = sample["mask"][window]
        return out


class RandomCrop(_Crop):
    """Random ``size`` x ``size`` crop of image and mask (padding with ``ignore_index`` if small)."""

    def _origin(self, max_top: int, max_left: int) -> tuple[int, int]:
        return int(torch.randint(0, max_top + 1, ())), int(torch.randint(0, max_left + 1, ()))


class CenterCrop(_Crop):
    """Centre ``size`` x ``size`` crop of image and mask (padding with ``ignore_index`` if small)."""

    def _origin(self, max_top: int, max_left: int) -> tuple[int, int]:
        return max_top // 2, max_left // 2


class Standardize:
    """``(image - mean) / std`` per channel (reflectance statistics of the dataset).

    A sample-dict wrapper around :class:`deflect_min.embedding.Standardize`; a zero std is
    clamped to 1e-12.
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        from ..embedding import Standardize as _Standardize

        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten().clamp_min(1e-12)
        self._standardize = _Standardize(bands=[str(i) for i in range(len(mean))],
                                         band_stats=(mean, std))

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        sample["image"] = self._standardize(sample["image"])
        return sample


def make_dataloaders(dataset: str | type, root: str | Path, *, bands: Sequence[str] | None = None,
                     batch_size: int = 32, eval_batch_size: int | None = None,
                     num_workers: int = 2, size: int = 224, eval_mode: str = "center",
                     standardize: bool = False, download: bool = False, checksum: bool = True,
                     seed: int = 0, splits: Sequence[str] = ("train", "val", "test"),
                     dataset_kwargs: Mapping[str, Any] | None = None,
                     **loader_kwargs: Any) -> dict[str, DataLoader]:
    """Build ``{"train", "val", "test"}`` DataLoaders for one benchmark.

    Args:
        dataset: a class (``MSo2Sat`` ...) or a key of :data:`deflect_min.data.DATASETS`
            (``"m-so2sat"``, ``"m-brick-kiln"``, ``"m-forestnet"``, ``"hls-burn-scars"``,
            ``"mados"``).
        root: the dataset's root folder.
        bands: band names (default: all bands of the dataset).
        batch_size: training batch size; ``eval_batch_size`` defaults to it.
        num_workers: DataLoader worker processes (Colab has 2 CPU cores).
        size: model input size (224 for the ViTs).
        eval_mode: segmentation only: ``"center"`` (centre crop) or ``"full"`` (whole images,
            for :func:`sliding_window_logits`).
        standardize: standardise with the dataset's per-band statistics (default: leave
            reflectance, the model standardises).
        download, checksum: passed to the dataset classes.
        seed: seed of the training shuffle.
        splits: which loaders to build.
        dataset_kwargs: further arguments of the dataset class (e.g. ``label``, ``fold`` and
            ``repeat`` of ``"ben-samples"``).
        **loader_kwargs: extra ``DataLoader`` arguments (``pin_memory`` ...).
    """
    cls = dataset_class(dataset) if isinstance(dataset, str) else dataset
    if eval_mode not in ("center", "full"):
        raise ValueError(f"eval_mode must be 'center' or 'full', got {eval_mode!r}.")
    segmentation = cls.task == "segmentation"
    ignore = cls.ignore_index if cls.ignore_index is not None else -1
    loaders: dict[str, DataLoader] = {}
    standardizer = None
    for split in splits:
        if segmentation:
            if split == "train":
                geometric: list = [RandomCrop(size, ignore)]
            else:
                geometric = [CenterCrop(size, ignore)] if eval_mode == "center" else []
        else:
            geometric = [Resize(size)]
        ds = cls(root=root, split=split, bands=bands, download=download, checksum=checksum,
                 **(dataset_kwargs or {}))
        download = False  # the first split fetched everything
        if len(ds) == 0:
            raise ValueError(f"{cls.__name__}: the {split} split under root={str(root)!r} is "
                             f"empty (its split list names no sample): the data are incomplete; "
                             f"delete them and download them again (download=True).")
        if standardize:  # the first split's statistics serve every split
            standardizer = standardizer or Standardize(ds.mean, ds.std)
            geometric.append(standardizer)
        ds.transforms = Compose(geometric)
        generator = torch.Generator().manual_seed(seed) if split == "train" else None
        loaders[split] = DataLoader(
            ds, batch_size=batch_size if split == "train" else (eval_batch_size or batch_size),
            shuffle=split == "train", generator=generator, num_workers=num_workers,
            persistent_workers=False, **loader_kwargs)
    return loaders


@torch.no_grad()
def window_origins(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis of ``size`` px: every ``stride`` px, the last flush with
    the end (``size >= window``)."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window_logits(model: Callable[[Tensor], Tensor], image: Tensor, num_classes: int,
                          window: int = 224, stride: int | None = None,
                          batch_size: int = 8, progress: bool = False) -> Tensor:
    """Segment a (B, C, H, W) batch larger than the model's input with overlapping windows.

    Windows of ``window`` px are placed every ``stride`` px (default: half a window), always
    including the last row / column; ``model`` maps (N, C, window, window) to
    (N, num_classes, window, window) logits, which are averaged where windows overlap. Images
    smaller than a window are zero-padded. The windows go through ``model`` ``batch_size``
    window positions at a time (``batch_size x B`` windows per call; 1: one position at a time),
    which gives the same logits up to floating-point rounding. Returns (B, num_classes, H, W).
    """
    stride = stride or window // 2
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    b, _, h, w = image.shape
    ph, pw = max(window - h, 0), max(window - w, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    H, W = image.shape[-2:]
    origins = [(top, left) for top in window_origins(H, window, stride)
               for left in window_origins(W, window, stride)]
    logits = image.new_zeros((b, num_classes, H, W))
    counts = image.new_zeros((1, 1, H, W))
    chunks = [origins[i:i + batch_size] for i in range(0, len(origins), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="windows", unit="batch")
    for chunk in chunks:
        crops = torch.stack([image[..., t:t + window, c:c + window] for t, c in chunk])
        out = model(rearrange(crops, "k b c h w -> (k b) c h w"))
        out = rearrange(out, "(k b) n h w -> k b n h w", k=len(chunk))
        for (t, c), tile in zip(chunk, out):
            logits[..., t:t + window, c:c + window] += tile
            counts[..., t:t + window, c:c + window] += 1
    return (logits / counts)[..., :h, :w]
