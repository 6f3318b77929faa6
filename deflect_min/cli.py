"""Console entry points: ``deflect-train`` (one run) and ``deflect-table`` (Table 1).

Examples::

    # one Table 1 cell, one seed, on Colab
    deflect-train --dataset m-brick-kiln --root /content/data/geobench --download \\
        --gfm scalemae --method deflect --seed 0
    # an evening's budget
    deflect-train --dataset hls-burn-scars --root data/hls --method lora --protocol reduced \\
        --max-steps 1000
    # CI: tiny random ViT on the fixtures
    deflect-train --dataset mados --root tests/data/mados --smoke --out /tmp/results
    # the table, Markdown and CSV
    deflect-table --results results --out results/table1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["train_main", "table_main", "parse_layers", "config_from_args"]


def parse_layers(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-8"`` or ``"0-2,5"`` -> block indices."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError(f"no block index in {text!r}")
    return out


def _train_parser() -> argparse.ArgumentParser:
    from deflect_min.training import PROTOCOLS

    p = argparse.ArgumentParser(
        prog="deflect-train",
        description="Train and evaluate one (dataset, GFM, method, seed) run and write "
                    "<out>/<dataset>/<gfm>/<method>/seed<k>.json.")
    p.add_argument("--dataset", required=True,
                   help="m-so2sat, m-brick-kiln, m-forestnet, hls-burn-scars or mados")
    p.add_argument("--root", required=True, help="the dataset's root folder")
    p.add_argument("--gfm", default="scalemae", help="scalemae (default), "
                   "cross_scale_mae_base, cross_scale_mae_large, dino_mc")
    p.add_argument("--weights", default="download",
                   help="'download' (official weights, default), a checkpoint path, or 'none' "
                        "(random initialisation)")
    p.add_argument("--method", default="deflect",
                   help="full, frozen, norm, bitfit, lora, slr, deflect, deflect+lora")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="full: PANGAEA schedule; reduced: GEO-Bench 0.10x_train partition "
                        "(classification) or a step budget (--max-steps; default 1000)")
    p.add_argument("--partition", default=None,
                   help="GEO-Bench train partition of the reduced protocol (default 0.10x_train)")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 50 (classification) / 80 (segmentation)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer-step budget")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--precision", default="auto",
                   help="auto (fp32 on CPU, bf16-mixed on compute capability >= 8.0, 16-mixed "
                        "below), or a Lightning precision: 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--out", default=None,
                   help="results folder (default: results; with --smoke a temporary folder)")
    p.add_argument("--work-dir", default=None,
                   help="checkpoints folder (default: runs; with --smoke a temporary folder)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the checkpoints of an earlier run of the same key and start "
                        "afresh (without it, or --resume, a run refuses to replace them)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--devices", default="1", help="GPUs (e.g. 2 with --strategy ddp)")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--eval-mode", choices=("full", "center"), default="full",
                   help="segmentation evaluation: whole images with sliding windows (full) or "
                        "the centre crop")
    p.add_argument("--hls-metric", choices=("miou", "iou_burn_scar"), default="miou")
    p.add_argument("--img-size", type=int, default=None, help="encoder input size (224)")
    p.add_argument("--name", default=None, help="results sub-folder, a plain folder name "
                   "(default: the method, plus its non-default settings)")
    m = p.add_argument_group("method settings (only those given are passed to adapt)")
    m.add_argument("--layers", type=parse_layers, default=None,
                   help="DEFLECT: adapted blocks, e.g. 0-8 or 0,1,2")
    m.add_argument("--rank", type=int, default=None, help="DEFLECT uAtt rank; LoRA/SLR rank")
    m.add_argument("--stream", choices=("dual", "single"), default=None, help="DEFLECT stream")
    m.add_argument("--no-deflect", action="store_true",
                   help="DEFLECT ablation: no deflection (Eq. R6)")
    m.add_argument("--lora-rank", type=int, default=None,
                   help="DEFLECT: LoRA rank of W_Q, W_V inside uAtt (deflect+lora)")
    m.add_argument("--input", choices=("rgb", "inflated"), default=None,
                   help="baselines: RGB bands (default) or an inflated patch embedding")
    s = p.add_argument_group("smoke runs (CI)")
    s.add_argument("--smoke", action="store_true",
                   help="tiny random ViT, 32 px, 2 epochs, batch 2 (results marked smoke)")
    s.add_argument("--quiet", action="store_true", help="no progress bar, summary or info")
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~deflect_min.training.TrainConfig` of parsed ``deflect-train`` arguments."""
    from deflect_min.training import TrainConfig, smoke_config

    given = {"layers": args.layers, "rank": args.rank, "stream": args.stream,
             "deflect": False if args.no_deflect else None, "lora_rank": args.lora_rank,
             "input": args.input}
    method_kwargs = {k: v for k, v in given.items() if v is not None}
    weights = None if str(args.weights).lower() == "none" else args.weights
    devices: int | str = int(args.devices) if str(args.devices).isdigit() else args.devices
    fields: dict[str, Any] = dict(
        gfm=args.gfm, method=args.method, method_kwargs=method_kwargs, seed=args.seed,
        protocol=args.protocol, partition=args.partition, max_steps=args.max_steps,
        lr=args.lr, precision=args.precision, out=args.out, work_dir=args.work_dir,
        resume=args.resume, overwrite=args.overwrite, download=args.download,
        eval_mode=args.eval_mode,
        hls_metric=args.hls_metric, name=args.name, devices=devices, strategy=args.strategy,
        accelerator=args.accelerator,
    )
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    if args.img_size is not None:
        fields["img_size"] = args.img_size
    if args.smoke:
        # smoke defaults (tiny model, 2 epochs, batch 2, no workers), unless given explicitly
        if args.batch_size != 8:
            fields["batch_size"] = args.batch_size
        if args.num_workers != 2:
            fields["num_workers"] = args.num_workers
        if weights is not None and args.weights != "download":
            fields["weights"] = weights
        fields["quiet"] = True
        if args.out is None or args.work_dir is None:  # never results/ or runs/
            tmp = Path(tempfile.mkdtemp(prefix="deflect-smoke-"))
            fields["out"] = args.out or str(tmp / "results")
            fields["work_dir"] = args.work_dir or str(tmp / "runs")
            print(f"smoke run: results in {fields['out']}, checkpoints in {fields['work_dir']}")
        return smoke_config(args.dataset, args.root, **fields)
    fields["out"] = "results" if args.out is None else args.out
    fields["work_dir"] = "runs" if args.work_dir is None else args.work_dir
    return TrainConfig(dataset=args.dataset, root=args.root, weights=weights,
                       batch_size=args.batch_size, num_workers=args.num_workers,
                       quiet=args.quiet, **fields)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``deflect-train``: one run; prints the test metrics and the result file."""
    from lightning.pytorch.utilities import rank_zero_only

    from deflect_min.training import train
    from deflect_min.training.guard import RunInUseError

    parser = _train_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as e:
        parser.error(str(e))  # exits with status 2
    try:
        result = train(cfg)
    except (FileExistsError, RunInUseError) as e:  # the run's folder: nothing was touched
        print(f"deflect-train: {e}", file=sys.stderr)
        return 2
    if rank_zero_only.rank != 0:  # a DDP run's other processes: rank zero reports
        return 0
    summary = {k: round(v, 4) for k, v in result["metrics"]["test"].items()}
    print(f"{result['dataset']} / {result['gfm']} / {result['run']} / seed {result['seed']} "
          f"({result['protocol']}): test {json.dumps(summary)}; {result['table_metric']} fills "
          f"the table; tuned encoder params {result['params']['encoder_tuned']:,} "
          f"({result['params']['encoder_tuned_pct']:.3g} %); {result['wall_time_s']:.0f} s on "
          f"{result['device']}")
    if "path" in result:
        print(f"result: {result['path']}")
    return 0


def _table_parser() -> argparse.ArgumentParser:
    from deflect_min.training import PROTOCOLS

    p = argparse.ArgumentParser(
        prog="deflect-table",
        description="Aggregate results/<dataset>/<gfm>/<method>/seed*.json into the paper's "
                    "Table 1 (mean ± std over seeds, the paper's Scale-MAE numbers beside).")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--gfm", default="scalemae", help="encoder of the table (default: scalemae)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="which protocol (default: the only one present; an error if mixed)")
    p.add_argument("--hls-metric", choices=("miou", "iou_burn_scar"), default="miou",
                   help="Burn Scars column: mIoU over both classes (PANGAEA, default) or the "
                        "IoU of the burn-scar class")
    p.add_argument("--out", default=None,
                   help="write <out>.md and <out>.csv (default: print the Markdown only)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable result file (default: skip it, with a "
                        "warning line naming it)")
    return p


def table_main(argv: Sequence[str] | None = None) -> int:
    """``deflect-table``: print (and write) the Table 1 reproduction."""
    from deflect_min.training import (aggregate, collect_results, render_csv, render_markdown,
                                      write_table)

    args = _table_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            results = collect_results(args.results, strict=args.strict)
        for w in skipped:  # one line per unreadable file
            print(f"deflect-table: warning: {w.message}", file=sys.stderr)
        table = aggregate(results, gfm=args.gfm, protocol=args.protocol,
                          hls_metric=args.hls_metric)
    except ValueError as e:
        print(f"deflect-table: {e}", file=sys.stderr)
        return 2
    print(render_csv(table) if args.csv else render_markdown(table), end="")
    if args.out:
        md, csv_path = write_table(table, args.out)
        print(f"\nwritten: {md}, {csv_path}")
    return 0


if __name__ == "__main__":  # python -m deflect_min.cli train|table ...
    if len(sys.argv) > 1 and sys.argv[1] in ("train", "table"):
        cmd = sys.argv.pop(1)
        sys.exit(train_main() if cmd == "train" else table_main())
    print("usage: python -m deflect_min.cli {train,table} ...", file=sys.stderr)
    sys.exit(2)
