"""The Lightning side: :class:`TaskModule` and the callbacks that keep a run resumable.

**Resume**: ``resume=True`` continues from ``last.ckpt``. Lightning's checkpoint does not hold
the random-number state, so the checkpoint also holds the torch (CPU and CUDA), numpy and python
RNG states and the state of the training sampler's generator: on CPU, a run interrupted after
any epoch and resumed ends with bit-identical metrics to an uninterrupted one. (On several GPUs
each process has its own RNG; only the first one's is saved, so a resumed DDP run continues
correctly but is not bit-identical.) Checkpoints hold the tuned parameters and the buffers only:
frozen pretrained weights are rebuilt from the GFM's weights, so a PEFT checkpoint of ViT-L takes
megabytes, not gigabytes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassConfusionMatrix

from .config import _RESUME_FREE
from .metrics import _scalars, metrics_from_confusion

__all__ = ["TaskModule"]


# ============================================================================ Lightning module
class TaskModule(L.LightningModule):
    """A :func:`~deflect_min.build_model` model trained with PANGAEA's recipe.

    Args:
        model: a ``GFMClassifier`` / ``GFMSegmenter`` (anything mapping images to logits).
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: classes of the head.
        ignore_index: target value ignored by the loss and the metrics.
        lr, weight_decay, betas: AdamW (only parameters with ``requires_grad``).
        milestones, gamma: MultiStepLR at these fractions of the optimizer steps (stepped
            every optimizer step).
        eval_mode: segmentation: ``"full"`` evaluates whole images with sliding windows of
            ``window`` px; ``"center"`` evaluates the loader's crops as they are.
        window: sliding-window size (the encoder's input size).
        positive: ``(class index, metric name)`` of a recorded per-class IoU (HLS burn scar).
        precision: the run's precision (named in NaN messages).
        max_steps: the run's step budget (:class:`_StepBudget`), which bounds the schedule's
            length; ``None``: the epochs alone.

    After ``trainer.validate``/``fit``, ``last_val`` holds the latest validation metrics; after
    ``trainer.test``, ``test_result`` holds the test metrics, per-class values and confusion
    matrix.
    """

    def __init__(self, model: nn.Module, *, task: str, num_classes: int, ignore_index: int = -1,
                 lr: float = 1e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999),
                 milestones: Sequence[float] = (0.6, 0.9), gamma: float = 0.1,
                 eval_mode: str = "full", window: int = 224,
                 positive: tuple[int, str] | None = None, precision: str = "32-true",
                 max_steps: int | None = None) -> None:
        super().__init__()
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
        self.model = model
        self.task = task
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.milestones, self.gamma = tuple(milestones), gamma
        self.eval_mode, self.window = eval_mode, int(window)
        self.positive = positive
        self.precision_name = precision
        self.max_steps = max_steps
        self.val_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index)
        self.test_confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=ignore_index)
        self.strict_loading = False  # checkpoints omit frozen weights; checked in on_load_checkpoint
        self.last_val: dict[str, float] = {}
        self.test_result: dict[str, Any] | None = None
        self._loss_sum: Tensor | float = 0.0
        self._loss_n = 0
        self._val_loss_sum: Tensor | float = 0.0
        self._val_loss_n = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ steps
    def _unpack(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        target = batch["label"] if self.task == "classification" else batch["mask"]
        return batch["image"], target

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if self.task == "segmentation" and not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0  # every pixel ignored: no signal (not NaN)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def _nan_message(self, loss: Tensor, x: Tensor, batch_idx: int) -> str:
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            cause = (f"the input batch holds {bad} NaN/inf values: the data are not clean (a "
                     f"nodata value the dataset did not mask, or a corrupt file)")
        elif any(not bool(torch.isfinite(p).all()) for p in self.model.parameters()
                 if p.requires_grad):
            cause = (f"the tuned parameters are no longer finite, so an earlier update diverged: "
                     f"lower the learning rate (lr={self.lr:g})")
        elif self.precision_name.startswith("16"):
            cause = ("an fp16 overflow in the forward pass (precision='16-mixed'): use "
                     "precision='bf16-mixed' on GPUs with compute capability >= 8.0, or "
                     "'32-true'")
        else:
            cause = (f"the forward pass turned finite inputs and weights into NaN/inf (an "
                     f"exploding activation): lower the learning rate (lr={self.lr:g}) or use "
                     f"precision='32-true'")
        return (f"training stopped: the loss is {float(loss.detach())} at optimizer step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx}). "
                f"Likely cause: {cause}.")

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0
        self.last_val = {}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        x, y = self._unpack(batch)
        loss = self._loss(self.model(x), y)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(self._nan_message(loss, x, batch_idx))
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_n += 1
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def _eval_logits(self, x: Tensor) -> Tensor:
        if self.task == "segmentation" and self.eval_mode == "full":
            from deflect_min.data import sliding_window_logits

            return sliding_window_logits(self.model, x, self.num_classes, window=self.window)
        return self.model(x)

    def _eval_step(self, batch: Mapping[str, Tensor], confmat: MulticlassConfusionMatrix
                   ) -> tuple[Tensor, Tensor]:
        """(loss, logits) of an evaluation batch, its predictions added to ``confmat``."""
        x, y = self._unpack(batch)
        logits = self._eval_logits(x)
        confmat.update(logits.argmax(1), y)
        return self._loss(logits, y).detach(), logits.detach()

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_loss_n = 0.0, 0

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._val_loss_sum = self._val_loss_sum + self._eval_step(batch, self.val_confmat)[0]
        self._val_loss_n += 1

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """The batch's logits, which callbacks receive as ``outputs`` in ``on_test_batch_end``."""
        return self._eval_step(batch, self.test_confmat)[1]

    def _epoch_metrics(self, confmat: MulticlassConfusionMatrix) -> dict[str, Any]:
        cm = confmat.compute().cpu()
        confmat.reset()
        m = metrics_from_confusion(cm, self.task, positive=self.positive)
        m["confusion_matrix"] = cm.long().tolist()
        return m

    def on_validation_epoch_end(self) -> None:
        m = self._epoch_metrics(self.val_confmat)
        scalars = _scalars(m)
        loss_sum, n = self._val_loss_sum, self._val_loss_n
        if self.trainer.world_size > 1:  # each process saw its share: the mean over all batches
            total = self.trainer.strategy.reduce(
                torch.tensor([float(loss_sum), n], dtype=torch.float64, device=self.device),
                reduce_op="sum")
            loss_sum, n = total.tolist()
        scalars["loss"] = float(loss_sum) / max(n, 1)
        self.last_val = scalars
        for k, v in scalars.items():
            self.log(f"val/{k}", v, prog_bar=k in ("f1_macro", "miou"))

    def on_test_epoch_end(self) -> None:
        m = self._epoch_metrics(self.test_confmat)
        self.test_result = m
        for k, v in _scalars(m).items():
            self.log(f"test/{k}", v)

    def train_loss(self) -> float:
        """Mean training loss of the current epoch so far."""
        return float(self._loss_sum) / max(self._loss_n, 1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameter: the method froze everything "
                             "and there is no head to train; check `method` and the task head.")
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas,
                                weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches  # inf without an epoch limit
        total = int(min(total, self.max_steps) if self.max_steps is not None else total)
        steps = sorted({max(1, int(round(f * total))) for f in self.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def _frozen_keys(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = self._frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k not in frozen}
        checkpoint["deflect_min_omitted_frozen"] = len(frozen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = set(self.state_dict())
        need = own - self._frozen_keys()
        saved = set(checkpoint["state_dict"])
        missing, unexpected = sorted(need - saved), sorted(saved - own)
        if missing or unexpected:
            raise RuntimeError(
                f"this checkpoint does not fit the model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]} ({len(missing)} / {len(unexpected)} in all). Was it written "
                f"by a run with another GFM, method or method settings?")


# ============================================================================ run state
class _RunState(Callback):
    """Learning curves, wall time and everything Lightning's checkpoint does not restore:
    the python / numpy / torch (CPU, CUDA) RNG states and the training sampler's generator."""

    def __init__(self, generator: torch.Generator | None, config: dict[str, Any]) -> None:
        self.generator = generator
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.resumed_from_epoch: int | None = None
        self.active = True

    @property
    def state_key(self) -> str:
        return "deflect_min_run_state"

    def elapsed(self) -> float:
        """Wall time of the run so far, previous sessions included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: TaskModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch),
                                 "step": int(trainer.global_step),
                                 "train_loss": pl_module.train_loss(), "lr": lr}
        entry.update({f"val_{k}": v for k, v in pl_module.last_val.items()})
        self.history.append(entry)

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.get_rng_state_all()
        return {
            "python_rng": random.getstate(),
            "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                          float(np_state[4])],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            "sampler_generator": self.generator.get_state() if self.generator is not None else None,
            "history": list(self.history),
            "elapsed": self.elapsed(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.active:
            return
        saved = state.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in self.config.items()
                if k not in _RESUME_FREE and saved.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume: the checkpoint was written with other settings "
                             f"({detail}). Use the same settings, or resume=False to start "
                             f"afresh.")
        random.setstate(_to_tuple(state["python_rng"]))
        s = state["numpy_rng"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4]))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.generator is not None and state.get("sampler_generator") is not None:
            self.generator.set_state(state["sampler_generator"])
        self.history = list(state.get("history", []))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.started = time.perf_counter()
        self.resumed_from_epoch = self.history[-1]["epoch"] if self.history else None


class _StepBudget(Callback):
    """Stop at ``max_steps`` through ``trainer.should_stop``, so that Lightning validates (and
    checkpoints) the last, partial epoch too (reaching ``max_steps`` alone skips both); a run
    resumed with its budget spent does not train."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = int(max_steps)

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
