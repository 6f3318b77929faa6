"""Loaders of a run: band checks, GEO-Bench train partitions, :func:`build_loaders`, and their
hand-over to Lightning (:class:`_RunData`: unpadded evaluation shards under DDP)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import lightning.pytorch as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from .config import TrainConfig

__all__ = ["check_bands", "apply_geobench_partition", "build_loaders"]


# ============================================================================ data
def check_bands(model_bands: Sequence[str], data_bands: Sequence[str], where: str = "data"
                ) -> None:
    """Raise ``ValueError`` unless the data's bands are the model's, in the same order."""
    model_bands, data_bands = list(model_bands), list(data_bands)
    if model_bands == data_bands:
        return
    if sorted(model_bands) == sorted(data_bands):
        detail = "the same bands in another order (channels are matched by position)"
    else:
        missing = [b for b in model_bands if b not in data_bands]
        extra = [b for b in data_bands if b not in model_bands]
        detail = f"the model expects {missing} which the data lack" if missing else ""
        if extra:
            detail += ("; " if detail else "") + f"the data hold {extra} which the model does not"
    raise ValueError(
        f"band mismatch between the model and the {where}: model bands {model_bands}, "
        f"{where} bands {data_bands}: {detail}. Load the data with bands={model_bands} or "
        f"build the model for the data's bands (TrainConfig.bands).")


def _dataset_of(loader: Any) -> Any:
    ds = getattr(loader, "dataset", None)
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return ds


def _loader_bands(loader: Any) -> list[str] | None:
    ds = _dataset_of(loader)
    for attr in ("band_names", "bands"):
        value = getattr(ds, attr, None)
        if value is not None and not isinstance(value, str):
            return list(value)
    return None


def apply_geobench_partition(ds: Any, partition: str, split: str) -> None:
    """Restrict a GEO-Bench dataset to ``split`` of ``<task_dir>/<partition>_partition.json``."""
    task_dir = Path(ds.task_dir)
    path = task_dir / f"{partition}_partition.json"
    if not path.is_file():
        found = sorted(p.name[: -len("_partition.json")] for p in task_dir.glob("*_partition.json"))
        raise FileNotFoundError(
            f"GEO-Bench partition {partition!r} not found: no {path}. This task folder has the "
            f"partitions {found}. GEO-Bench v1 ships 0.01x_train ... 1.00x_train with each task; "
            f"download the task again or pass partition=None with max_steps= for a step budget.")
    part = json.loads(path.read_text())
    key = {"val": "valid"}.get(split, split)
    if key not in part:
        raise ValueError(f"{path} has no {key!r} split (it has {list(part)}).")
    missing = [n for n in part[key] if not (task_dir / f"{n}.hdf5").is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists {len(missing)} {key} sample(s) with no file in "
                                f"{task_dir}, e.g. {missing[:3]}: the task folder is incomplete; "
                                f"delete it and download the task again (download=True).")
    ds.sample_names = list(part[key])
    ds.files = [task_dir / f"{n}.hdf5" for n in ds.sample_names]


def check_train_split(n: int, cfg: TrainConfig) -> None:
    """Raise a ``ValueError`` naming the dataset and root when the training split is empty."""
    if n == 0:
        raise ValueError(f"the training split of {cfg.dataset} is empty (root={cfg.root!r}, "
                         f"partition={cfg.train_partition!r}): check that the data are "
                         f"complete under root, or download them again (download=True).")


def build_loaders(cfg: TrainConfig) -> dict[str, torch.utils.data.DataLoader]:
    """Train / val / test loaders of ``cfg`` (partition of the reduced protocol applied).

    The training loader shuffles with its own ``torch.Generator`` seeded with ``cfg.seed`` (whose
    state the checkpoints keep) and drops the last incomplete batch (a batch of one breaks the
    heads' BatchNorm), unless the split is smaller than a batch.
    """
    from deflect_min.data import make_dataloaders

    pin = torch.cuda.is_available() and cfg.accelerator != "cpu"
    common = dict(bands=cfg.bands, size=cfg.img_size, download=cfg.download,
                  num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=pin,
                  dataset_kwargs=cfg.dataset_kwargs)
    train_ds = make_dataloaders(cfg.dataset, cfg.root, batch_size=cfg.batch_size,
                                splits=("train",), **common)["train"].dataset
    common["download"] = False
    evals = make_dataloaders(cfg.dataset, cfg.root, batch_size=cfg.batch_size,
                             eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
                             eval_mode=cfg.eval_mode, splits=("val", "test"), **common)
    partition = cfg.train_partition
    if partition is not None:
        apply_geobench_partition(train_ds, partition, "train")  # val and test stay the default
    check_train_split(len(train_ds), cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, generator=generator,
        num_workers=cfg.num_workers, drop_last=len(train_ds) >= cfg.batch_size,
        pin_memory=pin, persistent_workers=False)  # workers reseeded from `generator` each epoch
    return {"train": train_loader, "val": evals["val"], "test": evals["test"]}


class _RunData(L.LightningDataModule):
    """The run's loaders, handed to Lightning. Under DDP the val and test loaders shard their
    split without padding, so that every sample is evaluated once (Lightning's default
    ``DistributedSampler`` repeats samples to give every process as many, which counts them
    twice in the metrics); the processes' confusion matrices are summed at ``compute()``. The
    training loader is left to Lightning."""

    def __init__(self, loaders: dict[str, torch.utils.data.DataLoader]) -> None:
        super().__init__()
        self.loaders = loaders

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self.loaders["train"]

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._unpadded("val")

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._unpadded("test")

    def setup(self, stage: str) -> None:
        """Check both evaluation splits before anything trains (under DDP: a sample for every
        process)."""
        world = self.trainer.world_size
        for split in ("val", "test"):
            n = len(self.loaders[split].dataset)
            if n == 0:
                raise ValueError(f"the {split} split is empty (0 samples): the data under the "
                                 f"dataset's root lack it; check that they are complete, or "
                                 f"download them again (download=True).")
            if n < world:  # a process without a batch skips the evaluation and its collectives
                raise ValueError(f"the {split} split has {n} samples for {world} processes: "
                                 f"each process must evaluate at least one sample; use fewer "
                                 f"devices.")

    def _unpadded(self, split: str) -> torch.utils.data.DataLoader:
        loader, world = self.loaders[split], self.trainer.world_size
        if world == 1:
            return loader
        sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=world,
                                               rank=self.trainer.global_rank, shuffle=False)
        return torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler,
            collate_fn=loader.collate_fn, num_workers=loader.num_workers,
            pin_memory=loader.pin_memory, drop_last=loader.drop_last,
            worker_init_fn=loader.worker_init_fn)
