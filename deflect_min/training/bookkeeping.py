"""Where a run's files go and what its result records besides metrics (versions, device,
protocol, schedule), and the silencing of Lightning in quiet runs."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import lightning.pytorch as L

from .config import TrainConfig

__all__ = ["run_name", "result_path"]


# ============================================================================ bookkeeping
def run_name(method: str, method_kwargs: Mapping[str, Any] | None = None) -> str:
    """Results sub-folder of a run: the method, plus its non-default settings.

    ``run_name("deflect")`` is ``"deflect"`` (a Table 1 row);
    ``run_name("deflect", {"rank": 4, "stream": "single"})`` is
    ``"deflect_rank-4_stream-single"`` (an ablation, kept apart).
    """
    kwargs = method_kwargs or {}
    parts = [method]
    for k in sorted(kwargs):
        v = kwargs[k]
        if isinstance(v, (list, tuple)):
            v = ".".join(str(i) for i in v)
        parts.append(re.sub(r"[^A-Za-z0-9.+=-]", "", f"{k}-{v}"))
    return "_".join(parts)


def _run_label(cfg: TrainConfig) -> str:
    """The run's sub-folder: ``cfg.name`` or :func:`run_name`."""
    return cfg.name or run_name(cfg.method, cfg.method_kwargs)


def _seed_path(cfg: TrainConfig, root: str | os.PathLike) -> Path:
    """``<root>/<dataset>/<gfm>/<run>/seed<k>`` (``seed<k>.reduced`` when reduced)."""
    suffix = "" if cfg.protocol == "full" else f".{cfg.protocol}"
    return Path(root) / cfg.dataset / cfg.gfm / _run_label(cfg) / f"seed{cfg.seed}{suffix}"


def result_path(cfg: TrainConfig, out: str | os.PathLike | None = None) -> Path:
    """``<out>/<dataset>/<gfm>/<run>/seed<k>.json`` (``seed<k>.reduced.json`` when reduced)."""
    seed = _seed_path(cfg, out if out is not None else (cfg.out or "results"))
    return seed.with_name(seed.name + ".json")


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    return _seed_path(cfg, cfg.work_dir)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    import deflect_min

    out: dict[str, str | None] = {"python": sys.version.split()[0],
                                  "deflect_min": deflect_min.__version__}
    for pkg in ("torch", "timm", "lightning", "torchmetrics", "torchgeo", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
        out["deflect_min_git"] = commit.stdout.strip() or None if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        out["deflect_min_git"] = None
    return out


def _device(trainer: L.Trainer) -> str:
    """The run's device, e.g. ``"cpu (8 threads)"``, preceded by ``"<n> x "`` when the run
    has several (DDP processes)."""
    dev = trainer.strategy.root_device
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        desc = f"{torch.cuda.get_device_name(dev)} (compute capability {major}.{minor})"
    elif dev.type == "cpu":
        desc = f"cpu ({torch.get_num_threads()} threads)"
    else:
        desc = dev.type
    return f"{trainer.num_devices} x {desc}" if trainer.num_devices > 1 else desc


def _protocol_detail(cfg: TrainConfig, sizes: Mapping[str, int]) -> str:
    text = ("SMOKE RUN (tiny or random model, not a benchmark number), " if cfg.is_smoke
            else "")
    if cfg.protocol == "full":
        text += f"full: PANGAEA schedule, {cfg.num_epochs} epochs"
    elif cfg.train_partition is not None:
        text += f"reduced: GEO-Bench {cfg.train_partition} partition, {cfg.num_epochs} epochs"
    else:
        text += f"reduced: {cfg.step_budget} optimizer steps"
    if cfg.step_budget is not None and cfg.protocol == "full":
        text += f", max {cfg.step_budget} steps"
    text += (f", batch {cfg.batch_size}, AdamW lr {cfg.lr:g} wd {cfg.weight_decay:g}, "
             f"MultiStepLR at {'/'.join(f'{m:.0%}' for m in cfg.milestones)} "
             f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']} samples)")
    return text


def _epoch_limit(cfg: TrainConfig) -> int | None:
    """The run's epoch limit; ``None`` where only the step budget ends it."""
    return cfg.num_epochs if cfg.step_budget is None or cfg.epochs is not None else None


def _schedule(cfg: TrainConfig) -> dict[str, Any]:
    return {"epochs": _epoch_limit(cfg), "max_steps": cfg.step_budget, "partition": cfg.train_partition,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "milestones": list(cfg.milestones), "img_size": cfg.img_size,
            "eval_mode": cfg.eval_mode if cfg.task == "segmentation" else None}


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Lightning's info messages and its environment-dependent warnings."""
    if not enabled:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
             "lightning_fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning(\.|_|$)")
            warnings.filterwarnings("ignore", module=r"pytorch_lightning")
            warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers"
                                    r"|smaller than the logging interval|LeafSpec|"
                                    r"litlogger|litmodels).*")
            from lightning.fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
