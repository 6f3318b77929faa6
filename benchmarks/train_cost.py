"""What one Table 1 cell costs at real scale, measured before the real run.

Usage (from a clone, on the GPU you will train on)::

    python -m benchmarks.train_cost --methods frozen,lora,deflect --steps 40 \\
        --out benchmarks/results/train_cost_cuda.csv

It writes random scenes in the real layout and size of HLS Burn Scars (512 x 512 px, 6 float32
bands, GeoTIFFs named as in the archive, written by the test fixture's own writer) into a
temporary folder: 80 in ``training/`` (PANGAEA's split: 72 train, nine steps of 8 per epoch,
and 8 val, one evaluation batch) and 8 in ``validation/`` (the test split). It then runs
:func:`deflect_min.training.train` on the real architecture of the GFM (random weights:
nothing is downloaded) under the reduced protocol: random 224 px crops, validation every epoch
and the test at the end on whole images with sliding windows, under the precision the run would
use. The metrics are meaningless (random data) and are neither printed nor written anywhere;
the times and the memory are those of a real run.

Measured per method (:class:`Clock`):

* the median time of a training step (Lightning calls the batch hooks after the batch is
  loaded) and of a step including the wait for the data loader (from the end of one step to
  the end of the next, within an epoch);
* the time per evaluated 512 px image (sliding windows, whole evaluation batches);
* the overhead of an epoch: its wall time less its steps and evaluation batches (starting the
  loader workers, the first batches, the checkpoints), from the epochs after the first;
* the peak GPU memory (``torch.cuda.max_memory_allocated``, weights included).

From these, :func:`projection` gives the wall time of a real HLS Burn Scars run (PANGAEA's split:
486 train, 54 val and 264 test scenes) under both protocols. Run it on the machine you will
train on, with its number of loader workers (Colab: ``--num-workers 2``).
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
#: The random scenes measured: ``training/`` (72 train, 8 val) and ``validation/`` (test).
TRAINING_SCENES, TEST_SCENES = 80, 8
COLUMNS = ("gfm", "method", "precision", "batch_size", "num_workers", "steps_timed", "step_ms",
           "step_with_data_ms", "eval_ms_per_image", "epoch_overhead_s", "peak_gpu_mib",
           "tuned_params", "reduced_min", "full_min", "device", "torch", "date")


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
            # named like the archive's scenes, with their true size (the loader checks it)
            stem = f"subsetted_{size}x{size}_HLS.S30.T10SEH.{2018000 + i}.v1.4"
            fixture.write_scene(root / folder, stem, image, mask, i)


class Clock(Callback):
    """Times of training steps (with and without the data wait), of evaluated images, and the
    overhead of each epoch; the first ``warmup`` optimizer steps and the first epoch are not
    timed."""

    def __init__(self, *, warmup: int) -> None:
        self.warmup = warmup
        self.step, self.step_with_data, self.eval_per_image, self.epoch_overhead = [], [], [], []
        self._t = self._end = self._epoch_start = None
        self._accounted = 0.0

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        now = self._now()
        if trainer.current_epoch > 1:  # the previous epoch, not the first (warm-up)
            self.epoch_overhead.append(now - self._epoch_start - self._accounted)
        self._epoch_start, self._accounted, self._end = now, 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch,
                           batch_idx) -> None:
        now = self._now()
        with_data = None if self._end is None else now - self._end
        self._accounted += now - self._t if with_data is None else with_data
        if trainer.global_step > self.warmup:
            self.step.append(now - self._t)
            if with_data is not None:
                self.step_with_data.append(with_data)
        self._end = now

    def _eval_start(self, *args) -> None:
        self._t = self._now()

    def _eval_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        elapsed = self._now() - self._t
        self._accounted += elapsed
        self.eval_per_image.append(elapsed / len(batch["image"]))

    on_validation_batch_start = on_test_batch_start = _eval_start
    on_validation_batch_end = on_test_batch_end = _eval_end


def projection(step_s: float, eval_s: float, epoch_s: float, *, batch_size: int,
               protocol: str) -> float:
    """Minutes of a real HLS Burn Scars run (PANGAEA's split) from the measured times: steps
    (with the data wait), evaluated images and per-epoch overhead."""
    from deflect_min.data.hls_burn_scars import pangaea_train_val_split
    from deflect_min.training import TrainConfig

    cfg = TrainConfig(dataset="hls-burn-scars", protocol=protocol, batch_size=batch_size)
    train_idx, val_idx = pangaea_train_val_split(REAL_TRAINING)
    per_epoch = len(train_idx) // batch_size  # drop_last
    steps = cfg.step_budget or cfg.num_epochs * per_epoch
    epochs = math.ceil(steps / per_epoch)
    return (steps * step_s + (epochs * len(val_idx) + REAL_TEST) * eval_s + epochs * epoch_s) / 60


def measure(method: str, root: Path, args: argparse.Namespace) -> dict:
    """Train ``method`` on the scenes in ``root`` and return its CSV row."""
    from deflect_min.training import TrainConfig, train

    clock = Clock(warmup=args.warmup)
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(dataset="hls-burn-scars", root=str(root), gfm=args.gfm, weights=None,
                          method=method, protocol="reduced", max_steps=args.steps + args.warmup,
                          batch_size=args.batch_size, precision=args.precision,
                          num_workers=args.num_workers, out=None, work_dir=work, quiet=True)
        r = train(cfg, callbacks=[clock])
    median = statistics.median
    with_data, per_image = median(clock.step_with_data), median(clock.eval_per_image)
    epoch = median(clock.epoch_overhead)
    cuda = torch.cuda.is_available()
    return dict(
        gfm=args.gfm, method=method, precision=r["precision"], batch_size=args.batch_size,
        num_workers=args.num_workers, steps_timed=len(clock.step),
        step_ms=1e3 * median(clock.step), step_with_data_ms=1e3 * with_data,
        eval_ms_per_image=1e3 * per_image, epoch_overhead_s=epoch,
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        tuned_params=r["params"]["encoder_tuned"],
        **{f"{protocol}_min": projection(with_data, per_image, epoch, batch_size=args.batch_size,
                                         protocol=protocol) for protocol in ("reduced", "full")},
        device=r["device"], torch=torch.__version__, date=time.strftime("%Y-%m-%d"))


def main(argv=None) -> int:
    """Write the scenes once, measure each method, print and (``--out``) write the rows."""
    p = argparse.ArgumentParser(prog="train_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--gfm", default="scalemae", help="architecture (random weights)")
    p.add_argument("--methods", default="frozen,lora,deflect", help="comma-separated methods")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="auto", help="auto, bf16-mixed, 16-mixed, 32-true")
    p.add_argument("--num-workers", type=int, default=2, help="loader workers (Colab: 2)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as CSV here")
    args = p.parse_args(argv)
    from deflect_min.data.hls_burn_scars import pangaea_train_val_split

    per_epoch = len(pangaea_train_val_split(TRAINING_SCENES)[0]) // max(args.batch_size, 1)
    if args.batch_size < 1 or args.warmup < 0 or per_epoch < 2:
        p.error(f"--batch-size must be between 1 and {TRAINING_SCENES // 2} and --warmup >= 0.")
    if args.steps + args.warmup < 3 * per_epoch:
        p.error(f"--steps + --warmup must be at least {3 * per_epoch} (three epochs of "
                f"{per_epoch} steps at batch {args.batch_size}): the epochs after the first give "
                f"the per-epoch overhead.")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_scenes(Path(tmp), training=TRAINING_SCENES, test=TEST_SCENES)
        for method in args.methods.split(","):
            rows.append(measure(method.strip(), Path(tmp), args))
            r = rows[-1]
            print(f"{r['gfm']} {r['method']} ({r['precision']}, batch {r['batch_size']}): "
                  f"{r['step_ms']:.0f} ms/step, {r['step_with_data_ms']:.0f} ms with the data, "
                  f"{r['eval_ms_per_image']:.0f} ms per 512 px eval image, "
                  f"{r['epoch_overhead_s']:.1f} s per epoch besides, peak "
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
