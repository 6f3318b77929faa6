"""What one Table 1 cell costs at real scale, measured before the real run.

Usage (from a clone, on the GPU you will train on)::

    python -m benchmarks.train_cost --methods frozen,lora,deflect --steps 30 \\
        --out benchmarks/results/train_cost_cuda.csv

It writes random scenes in the real layout and size of HLS Burn Scars (512 x 512 px, 6 float32
bands, GeoTIFFs named as in the archive, written by the test fixture's own writer) into a
temporary folder, then runs :func:`deflect_min.training.train` on the real architecture of the
GFM (random weights: nothing is downloaded) under the reduced protocol for ``--steps`` optimizer
steps: random 224 px crops, validation every epoch and the test at the end on whole images with
sliding windows, under the precision the run would use. The metrics are meaningless (random
data) and are neither printed nor written anywhere; the times and the memory are those of a real
run.

Measured per method: the median time of a training step (forward, backward, optimizer; Lightning
calls the batch hooks after the batch is loaded) and of a whole step including the wait for the
data loader, the time per evaluated 512 px image (sliding windows), and the peak GPU memory.
From these it projects the wall time of a real HLS Burn Scars run (PANGAEA's split: 486 train,
54 val and 264 test scenes) under both protocols. Data loading on a Colab runtime (2 CPU cores,
``--num-workers 2``) can be slower than on the machine measured: compare the two step columns.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
#: HLS Burn Scars: 540 scenes in training/ (PANGAEA's 90 / 10 train / val split), 264 in
#: validation/ (the test split).
REAL_TRAINING, REAL_TEST = 540, 264
COLUMNS = ("gfm", "method", "precision", "batch_size", "steps_timed", "step_ms",
           "step_with_data_ms", "eval_ms_per_image", "peak_gpu_mib", "tuned_params",
           "reduced_min", "full_min", "device", "torch", "date")


def write_scenes(root: Path, *, training: int, test: int, size: int = 512) -> None:
    """Random HLS scenes in the real layout: ``training/`` and ``validation/``."""
    spec = importlib.util.spec_from_file_location(  # the fixture's writer: the real format
        "hls_fixture", ROOT / "tests" / "data" / "hls_burn_scars" / "data.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)

    rng = np.random.default_rng(0)
    for folder, n in (("training", training), ("validation", test)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            image = (0.02 + 0.4 * rng.random((6, size, size))).astype(np.float32)
            mask = rng.integers(0, 2, (size, size)).astype(np.int16)
            fixture.write_scene(root / folder, f"subsetted_512x512_HLS.S30.T10SEH.{2018000 + i}.v1.4",
                        image, mask, i)


class Clock(Callback):
    """Times of training steps (with and without the data wait) and of evaluated batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.step, self.step_with_data, self.eval_per_image = [], [], []
        self._t = self._end = None

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self._t = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        now = self._now()
        if trainer.global_step > self.warmup:
            self.step.append(now - self._t)
            if self._end is not None and batch_idx > 0:  # not across an epoch's validation
                self.step_with_data.append(now - self._end)
        self._end = now

    def _eval_start(self, *args) -> None:
        self._t = self._now()

    def _eval_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        self.eval_per_image.append((self._now() - self._t) / len(batch["image"]))

    on_validation_batch_start = on_test_batch_start = _eval_start
    on_validation_batch_end = on_test_batch_end = _eval_end


def projection(step_s: float, eval_s: float, *, batch_size: int, protocol: str) -> float:
    """Minutes of a real HLS Burn Scars run (PANGAEA's split) from the measured times."""
    from deflect_min.data.hls_burn_scars import pangaea_train_val_split
    from deflect_min.training.config import REDUCED_MAX_STEPS, TASK_EPOCHS

    train_idx, val_idx = pangaea_train_val_split(REAL_TRAINING)
    per_epoch = len(train_idx) // batch_size  # drop_last
    if protocol == "reduced":
        steps = REDUCED_MAX_STEPS
        epochs = math.ceil(steps / per_epoch)
    else:
        epochs = TASK_EPOCHS["segmentation"]
        steps = epochs * per_epoch
    return (steps * step_s + (epochs * len(val_idx) + REAL_TEST) * eval_s) / 60


def measure(method: str, root: Path, args) -> dict:
    from deflect_min.training import TrainConfig, train

    clock = Clock(args.warmup)
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(dataset="hls-burn-scars", root=str(root), gfm=args.gfm, weights=None,
                          method=method, protocol="reduced", max_steps=args.steps + args.warmup,
                          batch_size=args.batch_size, precision=args.precision,
                          num_workers=args.num_workers, out=None, work_dir=work, quiet=True)
        r = train(cfg, callbacks=[clock])
    step, with_data = statistics.median(clock.step), statistics.median(clock.step_with_data)
    per_image = statistics.median(clock.eval_per_image)
    cuda = torch.cuda.is_available()
    return dict(
        gfm=args.gfm, method=method, precision=r["precision"], batch_size=args.batch_size,
        steps_timed=len(clock.step), step_ms=1e3 * step, step_with_data_ms=1e3 * with_data,
        eval_ms_per_image=1e3 * per_image,
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        tuned_params=r["params"]["encoder_tuned"],
        reduced_min=projection(with_data, per_image, batch_size=args.batch_size,
                               protocol="reduced"),
        full_min=projection(with_data, per_image, batch_size=args.batch_size, protocol="full"),
        device=r["device"], torch=torch.__version__, date=time.strftime("%Y-%m-%d"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--gfm", default="scalemae", help="architecture (random weights)")
    p.add_argument("--methods", default="frozen,lora,deflect", help="comma-separated methods")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="auto", help="auto, bf16-mixed, 16-mixed, 32-true")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the rows as CSV here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # 20 training/ scenes: 18 train (2 steps of 8 per epoch) and 2 val; 2 test scenes
        write_scenes(Path(tmp), training=20, test=2)
        for method in args.methods.split(","):
            rows.append(measure(method.strip(), Path(tmp), args))
            r = rows[-1]
            print(f"{r['gfm']} {r['method']} ({r['precision']}, batch {r['batch_size']}): "
                  f"{r['step_ms']:.0f} ms/step, {r['step_with_data_ms']:.0f} ms with the data, "
                  f"{r['eval_ms_per_image']:.0f} ms per 512 px eval image, peak "
                  f"{r['peak_gpu_mib']:.0f} MiB; HLS Burn Scars run: reduced "
                  f"{r['reduced_min']:.0f} min, full {r['full_min']:.0f} min on {r['device']}",
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                             for r in rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
