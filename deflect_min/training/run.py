""":func:`train` (one run: fit, validate, test the best checkpoint, write the result) and
:func:`load_model`.

What happens, in order:

1. **Data** (:func:`build_loaders`): the benchmark's train / val / test loaders with the crops of
   :func:`deflect_min.data.make_dataloaders` (classification resized to ``img_size``;
   segmentation trained on random crops, evaluated on whole images with
   :func:`~deflect_min.data.sliding_window_logits`, as PANGAEA does).
2. **Model**: :func:`~deflect_min.load_gfm` + :func:`~deflect_min.build_model`; the band names
   of every loader must equal the model's ``bands`` (order included), checked **before** training.
3. **Lightning** (:class:`TaskModule`): AdamW, MultiStepLR at 60 % and 90 % of the optimizer
   steps, cross-entropy (ignore index -1), validation each epoch, a checkpoint every epoch
   (``last.ckpt``) and the best one by the validation metric (``best.ckpt``), then the test split
   with the best checkpoint. The checkpoint folder is locked while the run lasts, a checkpoint
   already there is kept unless ``resume`` or ``overwrite`` says what to do with it, and the
   best checkpoint's settings are compared with the run's before testing it
   (:mod:`~deflect_min.training.guard`). Under DDP each process evaluates its own share of the
   val / test split, without the repeated samples of Lightning's default sampler (:class:`_RunData`).
4. **Result**: metrics, per-class values, confusion matrix, learning curves, tuned parameters,
   wall time, device, versions, the full config and its identity (``run_id``), written atomically to
   ``<out>/<dataset>/<gfm>/<run>/seed<k>.json`` (``seed<k>.reduced.json`` under the reduced
   protocol, so that the two never overwrite each other).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from .bookkeeping import (_checkpoint_dir, _device, _epoch_limit, _protocol_detail, _quiet,
                          _run_label, _schedule, _versions, result_path)
from .config import _POSITIVE_CLASS, TrainConfig, _dataset_cls, _jsonable
from .data import (_dataset_of, _loader_bands, _RunData, build_loaders, check_bands,
                   check_train_split)
from ..adapters import save_adapter
from .guard import RunLock, check_checkpoint, claim_folder, read_checkpoint, run_id, write_atomic
from .metrics import _scalars, default_precision, table_metric
from .module import TaskModule, _RunState, _StepBudget

__all__ = ["train", "load_model"]


# ============================================================================ train
def train(config: TrainConfig | Mapping[str, Any], *,
          loaders: Mapping[str, Any] | None = None,
          callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train, validate each epoch, test the best checkpoint; return (and write) the result.

    Args:
        config: a :class:`TrainConfig` (or a dict of its fields).
        loaders: ``{"train", "val", "test"}`` DataLoaders to use instead of
            :func:`build_loaders` (their datasets' ``band_names`` are checked against the
            model's bands).
        callbacks: extra Lightning callbacks (plots, an interruption in a test ...).

    Returns:
        The result dict (also written to :func:`result_path` when ``config.out`` is set):
        ``metrics["test"]`` / ``metrics["val_best"]`` (fractions), ``table_metric`` and
        ``table_value``, ``per_class``, ``confusion_matrix``, ``history`` (learning curves),
        ``params`` (tuned encoder and head parameters), ``wall_time_s``, ``device``,
        ``precision``, ``versions``, ``config``, ``protocol``, ``protocol_detail``,
        ``schedule``, ``smoke``, ``pretrained``, ``checkpoint`` ...

    Raises:
        ValueError: bad settings, bands of the data that differ from the model's, an empty
            training split, a resume with other settings.
        FileExistsError: the checkpoint folder holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        RuntimeError: another run holds the checkpoint folder; an unreadable ``last.ckpt``.
        FloatingPointError: a NaN/inf loss (the message names the step and the likely cause).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    ds_cls = _dataset_cls(cfg.dataset)
    task = ds_cls.task
    metric = table_metric(cfg.dataset, cfg.hls_metric)
    precision = default_precision(cfg.accelerator) if cfg.precision == "auto" else cfg.precision
    config_dict = cfg.to_dict()
    progress = (not cfg.quiet) if cfg.progress_bar is None else bool(cfg.progress_bar)

    with _quiet(cfg.quiet), contextlib.ExitStack() as held:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        loaders = dict(loaders) if loaders is not None else build_loaders(cfg)
        missing = [s for s in ("train", "val", "test") if s not in loaders]
        if missing:
            raise ValueError(f"loaders lack the splits {missing}; pass a dict with 'train', "
                             f"'val' and 'test' DataLoaders, or loaders=None to build them.")

        # ---- bands: fail before anything trains
        data_bands = {s: _loader_bands(loaders[s]) for s in ("train", "val", "test")}
        bands = list(cfg.bands) if cfg.bands is not None else data_bands["train"]
        if bands is None:
            raise ValueError("the training data do not name their bands (no band_names on the "
                             "dataset): set TrainConfig.bands")
        for split, db in data_bands.items():
            if db is not None:
                check_bands(bands, db, where=f"{split} data")
        train_ds = _dataset_of(loaders["train"])
        check_train_split(len(train_ds), cfg)
        band_stats = getattr(train_ds, "band_stats", None)
        if band_stats is not None:
            band_stats = {b: band_stats[b] for b in bands}

        # ---- model
        model = _build(cfg, bands, band_stats)
        check_bands(model.encoder.adaptation["bands"], bands, where="configured bands")
        module = TaskModule(model, task=task, num_classes=len(ds_cls.classes),
                            ignore_index=ds_cls.ignore_index if ds_cls.ignore_index is not None
                            else -1,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                            milestones=cfg.milestones, gamma=cfg.gamma, eval_mode=cfg.eval_mode,
                            window=cfg.img_size, positive=_POSITIVE_CLASS.get(cfg.dataset),
                            precision=precision, max_steps=cfg.step_budget)

        # ---- the run's folder: locked, its checkpoints kept unless told otherwise
        ckpt_dir = _checkpoint_dir(cfg)
        if rank_zero_only.rank == 0:  # DDP: the launching process holds the lock for all
            held.enter_context(RunLock(folder=ckpt_dir, config=config_dict))
            claim_folder(ckpt_dir, config_dict, resume=cfg.resume, overwrite=cfg.overwrite)
        last = ckpt_dir / "last.ckpt"
        resume_from = last if cfg.resume and last.is_file() else None
        if resume_from is not None:
            read_checkpoint(last)  # a clear error for a truncated file; _RunState checks settings

        # ---- trainer
        state = _RunState(getattr(loaders["train"], "generator", None), config_dict)
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=f"val/{metric}",
                               mode="max", save_top_k=1, every_n_epochs=1,
                               save_on_train_epoch_end=True, enable_version_counter=False,
                               auto_insert_metric_name=False)
        # every epoch (Lightning's save_last only follows new best checkpoints)
        latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1,
                                 every_n_epochs=1, save_on_train_epoch_end=True,
                                 enable_version_counter=False, auto_insert_metric_name=False)
        step_budget = cfg.step_budget
        max_epochs = _epoch_limit(cfg)
        if max_epochs is None:  # the budget in epochs, so that the progress bar can count them
            max_epochs = -(-int(step_budget) // max(1, len(loaders["train"])))
        write_atomic(ckpt_dir / "config.yaml", effective_config_yaml(config_dict))
        # the step budget is _StepBudget's, not Lightning's max_steps: under max_steps Lightning
        # resumes an epoch-end checkpoint by replaying that epoch's end (a bogus history row)
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
            precision=precision, logger=_logger(cfg.logger, ckpt_dir),
            callbacks=[state, *([_StepBudget(step_budget)] if step_budget else []), *callbacks,
                       ckpt, latest],
            enable_progress_bar=progress, enable_model_summary=not cfg.quiet,
            num_sanity_val_steps=0, check_val_every_n_epoch=1, default_root_dir=ckpt_dir,
            log_every_n_steps=1,
        )
        data = _RunData(loaders)
        with warnings.catch_warnings():  # claim_folder has dealt with what the folder holds
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            trainer.fit(module, datamodule=data,
                        ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
        best = ckpt.best_model_path
        if not best or not Path(best).is_file():
            raise RuntimeError(f"no best checkpoint was written in {ckpt_dir}: did validation "
                               f"run? (val split of {len(loaders['val'].dataset)} samples)")
        check_checkpoint(best, config_dict, what="this run")
        state.active = False  # testing the best checkpoint must not rewind the run state
        trainer.test(module, datamodule=data, ckpt_path=best, verbose=not cfg.quiet,
                     weights_only=True)
        adapter = None
        if trainer.is_global_zero:  # the tested (best) weights, reloadable from the folder alone
            adapter = save_adapter(model, ckpt_dir / "adapter", base=_base_recipe(cfg))

    test = module.test_result or {}
    best_entry = None  # as ModelCheckpoint chooses: the first epoch with the highest (float32) score
    for h in state.history:
        v = h.get(f"val_{metric}")
        if v is not None and (best_entry is None
                              or np.float32(v) > np.float32(best_entry[f"val_{metric}"])):
            best_entry = h
    counts = model.parameter_counts()
    counts["encoder_tuned_pct"] = 100.0 * counts["encoder_tuned"] / max(counts["encoder_total"], 1)
    sizes = {s: len(_dataset_of(loaders[s])) for s in ("train", "val", "test")}
    card = getattr(model.encoder, "gfm_card", None)
    per_key = "f1_per_class" if task == "classification" else "iou_per_class"
    result: dict[str, Any] = {
        "schema": 1,
        "dataset": cfg.dataset,
        "task": task,
        "gfm": cfg.gfm,
        "method": cfg.method,
        "method_kwargs": config_dict["method_kwargs"],
        "run": _run_label(cfg),
        "run_id": run_id(config_dict),
        "seed": int(cfg.seed),
        "protocol": cfg.protocol,
        "protocol_detail": _protocol_detail(cfg, sizes),
        "schedule": _schedule(cfg),
        "smoke": cfg.is_smoke,
        "pretrained": bool(card.pretrained) if card is not None else cfg.weights is not None,
        "weights": card.weights if card is not None else cfg.weights,
        "table_metric": metric,
        "table_value": test.get(metric),
        "metrics": {"test": _scalars(test),
                    "val_best": {k[4:]: v for k, v in (best_entry or {}).items()
                                 if k.startswith("val_")}},
        "metric_scale": "fraction in [0, 1]",
        "best_epoch": best_entry["epoch"] if best_entry else None,
        "class_names": list(ds_cls.classes),
        "per_class": {per_key: test.get(per_key)},
        "confusion_matrix": {"test": test.get("confusion_matrix"),
                             "layout": "rows = target, columns = prediction"},
        "history": state.history,
        "params": counts,
        "split_sizes": sizes,
        "bands": bands,
        "band_stats": band_stats,
        "steps": int(trainer.global_step),
        "epochs_run": len(state.history),
        "resumed": state.resumed_from_epoch is not None,
        "wall_time_s": state.elapsed(),
        "device": _device(trainer),
        "precision": precision,
        "versions": _versions(),
        "config": config_dict,
        "checkpoint": str(best),
        "adapter": str(adapter) if adapter is not None else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg.out is not None and trainer.is_global_zero:
        path = result_path(cfg)
        write_atomic(path, json.dumps(result, indent=1, default=_jsonable) + "\n")
        result["path"] = str(path)
    return result


def _base_recipe(cfg: TrainConfig) -> dict[str, Any]:
    """How :func:`deflect_min.load_adapter` rebuilds this run's base model (the frozen weights
    of a randomly initialised base come from the seed)."""
    return {"backbone": cfg.gfm, "weights": cfg.weights, "img_size": int(cfg.img_size),
            "seed": int(cfg.seed), "arch_overrides": cfg.arch_overrides}


def _logger(kind: str, folder: Path):
    """Lightning's CSV (``<folder>/logs/version_<k>/metrics.csv``, one version per session of
    a resumed run) or TensorBoard logger, or none."""
    if kind == "none":
        return False
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cls = CSVLogger if kind == "csv" else TensorBoardLogger
    return cls(folder, name="logs")


def effective_config_yaml(config: Mapping[str, Any]) -> str:
    """The run's every setting as YAML: ``deflect-train --config`` takes it back."""
    import yaml

    plain = json.loads(json.dumps(dict(config), default=_jsonable))
    return "# the effective settings of this run (deflect-train --config takes this file)\n" + \
        yaml.safe_dump(plain, sort_keys=False)


def _build(cfg: TrainConfig, bands: list[str], band_stats: Mapping[str, Any] | None
           ) -> nn.Module:
    """The run's model: the backbone (:func:`~deflect_min.backbones.load_backbone`, or
    :func:`~deflect_min.load_gfm` for a smoke run's tiny architecture) +
    :func:`~deflect_min.build_model` (the same in :func:`train` and :func:`load_model`, so that
    a checkpoint fits its rebuild)."""
    from deflect_min.backbones import load_backbone
    from deflect_min.build import build_model
    from deflect_min.models import load_gfm

    ds_cls = _dataset_cls(cfg.dataset)
    if cfg.arch_overrides:
        encoder = load_gfm(cfg.gfm, weights=cfg.weights, img_size=cfg.img_size,
                           _arch_overrides=cfg.arch_overrides)
    else:
        encoder = load_backbone(cfg.gfm, weights=cfg.weights, img_size=cfg.img_size)
    return build_model(ds_cls.task, encoder, cfg.method, bands=bands,
                       num_classes=len(ds_cls.classes), band_stats=band_stats,
                       head_kwargs=cfg.head_kwargs, **cfg.method_kwargs)


def load_model(result: Mapping[str, Any] | str | os.PathLike,
               checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """The trained model of a result (its best checkpoint), in eval mode, on the CPU.

    Rebuilds the model from ``result["config"]`` (downloading nothing that the run did not:
    the same ``weights``) and loads the checkpoint's tuned parameters and buffers. Like
    :func:`train`, it seeds the global RNGs with the run's seed first, so that the frozen
    weights of a randomly initialised encoder are those the run had.

    Args:
        result: a result dict of :func:`train` or the path of its JSON file.
        checkpoint: another checkpoint of the same run (default: ``result["checkpoint"]``).

    Raises:
        ValueError: the checkpoint was written with other settings than the result's (another
            run of the same key overwrote it).
    """
    source = result.get("path") if isinstance(result, Mapping) else str(result)
    if not isinstance(result, Mapping):
        result = json.loads(Path(result).read_text())
    cfg = TrainConfig.from_dict(result["config"])
    ckpt = check_checkpoint(checkpoint or result["checkpoint"], result["config"],
                            what=f"the result {source}" if source else "this result")
    stats = result.get("band_stats")
    stats = {b: tuple(v) for b, v in stats.items()} if stats else None
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = _build(cfg, list(result["bands"]), stats)
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    bad = [k for k in missing if k not in frozen]
    if bad or unexpected:
        raise RuntimeError(f"the checkpoint does not fit the rebuilt model: missing {bad[:5]}, "
                           f"unexpected {list(unexpected)[:5]}; pass the checkpoint written by "
                           f"this result's own run (result['checkpoint']).")
    return model.eval()
