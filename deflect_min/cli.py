"""Console entry points: ``deflect-train`` (one run) and ``deflect-table`` (Table 1).

Only the standard library and :mod:`deflect_min.options` are imported before the arguments are
parsed, so ``--help`` and argument errors are immediate; every user error is one line on stderr
and exit status 2.

Examples::

    # any timm ViT, untrained, from a YAML file (flags override it); keep the effective settings
    deflect-train --config run.yaml --gfm timm:vit_small_patch16_224 --weights none
    deflect-train --config run.yaml --print-config > effective.yaml

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

from deflect_min.options import LOGGERS, PROTOCOLS

__all__ = ["train_main", "table_main", "parse_layers", "config_from_args"]


class _Parser(argparse.ArgumentParser):
    """argparse, with every error as one line (``prog: message``) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)

    def given(self, argv: Sequence[str] | None) -> set[str]:
        """The destinations of the options that ``argv`` sets explicitly."""
        probe = argparse.ArgumentParser(add_help=False)
        for action in self._actions:
            if action.option_strings and action.dest != "help":
                kwargs = dict(dest=action.dest, default=argparse.SUPPRESS)
                if action.nargs == 0:
                    kwargs["action"] = "store_const"
                    kwargs["const"] = True
                else:
                    kwargs["nargs"] = action.nargs
                probe.add_argument(*action.option_strings, **kwargs)
        known, _ = probe.parse_known_args(argv)
        return set(vars(known))


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


def _train_parser() -> _Parser:
    p = _Parser(
        prog="deflect-train",
        description="Train and evaluate one (dataset, backbone, method, seed) run and write "
                    "<out>/<dataset>/<gfm>/<method>/seed<k>.json; the run folder "
                    "(<work-dir>/...) keeps config.yaml, logs/metrics.csv and adapter/.")
    p.add_argument("--config", type=Path, default=None,
                   help="a YAML file of settings (the keys of TrainConfig, as a run's "
                        "config.yaml writes them); flags given too override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as YAML and exit")
    p.add_argument("--dataset", default=None,
                   help="m-so2sat, m-brick-kiln, m-forestnet, hls-burn-scars, mados, "
                        "ben-samples (the sample patches: set dataset_kwargs in --config) or a "
                        "torchgeo class path (required, here or in --config)")
    p.add_argument("--root", default=None, help="the dataset's root folder (required)")
    p.add_argument("--gfm", default="scalemae", help="the backbone: scalemae (default), "
                   "cross_scale_mae_base, cross_scale_mae_large, dino_mc, "
                   "dinov2_vits14_imgfocus, timm:NAME (any timm ViT) or hf-hub:ORG/NAME")
    p.add_argument("--weights", default="download",
                   help="'download' (official or timm pretrained weights, default), a "
                        "checkpoint path, or 'none' (random initialisation)")
    p.add_argument("--logger", choices=LOGGERS, default="csv",
                   help="learning curves in the run folder: csv (logs/metrics.csv, default), "
                        "tensorboard, none")
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


def _read_yaml(path: Path) -> dict[str, Any]:
    """The settings of a ``--config`` file, checked against TrainConfig's fields."""
    import dataclasses

    import yaml

    from deflect_min.training import TrainConfig

    if not path.is_file():
        raise ValueError(f"--config: no file {path}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config: {path} is not valid YAML ({str(e).splitlines()[0]}).") from e
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of settings, not "
                         f"{type(data).__name__}.")
    accepted = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise ValueError(f"--config: {path} has the unknown key(s) {unknown}; the accepted keys "
                         f"are {accepted}.")
    return data


#: Flags that set one TrainConfig field of the same name (the rest map as config_from_args says).
_PLAIN_FLAGS = ("dataset", "root", "gfm", "seed", "protocol", "partition", "epochs",
                "max_steps", "batch_size", "lr", "precision", "out", "work_dir", "resume",
                "overwrite", "download", "num_workers", "strategy", "accelerator", "eval_mode",
                "hls_metric", "img_size", "name", "quiet", "logger")
_METHOD_FLAGS = ("layers", "rank", "stream", "no_deflect", "lora_rank", "input")


def config_with_file(args: argparse.Namespace, given: set[str]):
    """``config_from_args``, on top of the ``--config`` file: a flag given on the command line
    wins over the file, the file wins over the flags' defaults; method settings are merged."""
    import dataclasses

    data = _read_yaml(args.config) if args.config is not None else {}
    for key in _PLAIN_FLAGS:
        if key in data and key not in given:
            setattr(args, key, data[key])
    if "weights" in data and "weights" not in given:
        args.weights = "none" if data["weights"] is None else data["weights"]
    if "devices" in data and "devices" not in given:
        args.devices = str(data["devices"])
    if "smoke" in data and "smoke" not in given:
        args.smoke = bool(data["smoke"])
    for required in ("dataset", "root"):
        if getattr(args, required) is None:
            raise ValueError(f"--{required} is required (on the command line or as "
                             f"'{required}:' in --config).")
    cfg = config_from_args(args)
    extra = {k: v for k, v in data.items() if k not in _PLAIN_FLAGS
             and k not in ("weights", "devices", "smoke", "method_kwargs", "method")}
    method_kwargs = dict(data.get("method_kwargs") or {})
    if "method" in data and "method" not in given:
        cfg = dataclasses.replace(cfg, method=data["method"])
    method_kwargs.update(cfg.method_kwargs)  # flags win
    for key in ("betas", "milestones"):
        if key in extra:
            extra[key] = tuple(extra[key])
    return dataclasses.replace(cfg, method_kwargs=method_kwargs, **extra)


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
        eval_mode=args.eval_mode, logger=args.logger,
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
            print(f"smoke run: results in {fields['out']}, checkpoints in {fields['work_dir']}",
                  file=sys.stderr)
        return smoke_config(args.dataset, args.root, **fields)
    fields["out"] = "results" if args.out is None else args.out
    fields["work_dir"] = "runs" if args.work_dir is None else args.work_dir
    return TrainConfig(dataset=args.dataset, root=args.root, weights=weights,
                       batch_size=args.batch_size, num_workers=args.num_workers,
                       quiet=args.quiet, **fields)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``deflect-train``: one run; prints the test metrics and the result file."""
    parser = _train_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_with_file(args, parser.given(argv if argv is not None else sys.argv[1:]))
        cfg.validate()
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))  # one line, exit status 2
    from lightning.pytorch.utilities import rank_zero_only

    from deflect_min.training import train
    from deflect_min.training.guard import RunInUseError

    if args.print_config:
        from deflect_min.training.run import effective_config_yaml

        print(effective_config_yaml(cfg.to_dict()), end="")
        return 0
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


def _table_parser() -> _Parser:
    p = _Parser(
        prog="deflect-table",
        description="Aggregate results/<dataset>/<gfm>/<method>/seed*.json into the paper's "
                    "Table 1 (mean ± std over seeds, the paper's Scale-MAE numbers beside).")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--gfm", default="scalemae",
                   help="encoder of the table (default: scalemae), or 'all': one table per "
                        "encoder found")
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
    args = _table_parser().parse_args(argv)
    from deflect_min.training import (aggregate, collect_results, render_csv, render_markdown,
                                      write_table)

    root = Path(args.results)
    try:
        if not root.is_dir():
            raise ValueError(f"no results folder {root}: run deflect-train first, or pass "
                             f"--results DIR.")
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            results = collect_results(root, strict=args.strict)
        for w in skipped:  # one line per unreadable file
            print(f"deflect-table: warning: {w.message}", file=sys.stderr)
        found = sorted({str(r.get("gfm")) for r in results})
        if not results:
            raise ValueError(f"no result in {root} (expected <dataset>/<gfm>/<run>/seed*.json).")
        print(f"deflect-table: results of {len(results)} run(s), encoders: {', '.join(found)}",
              file=sys.stderr)
        gfms = found if args.gfm == "all" else [args.gfm]
        if args.gfm != "all" and args.gfm not in found:
            raise ValueError(f"no result of the encoder {args.gfm!r} in {root}; found "
                             f"{found}: pass --gfm NAME or --gfm all.")
        tables = [aggregate(results, gfm=g, protocol=args.protocol, hls_metric=args.hls_metric)
                  for g in gfms]
    except ValueError as e:
        print(f"deflect-table: {e}", file=sys.stderr)
        return 2
    for gfm, table in zip(gfms, tables):
        if len(gfms) > 1:
            print(f"\n## {gfm}\n")
        print(render_csv(table) if args.csv else render_markdown(table), end="")
        if args.out:
            out = args.out if len(gfms) == 1 else f"{args.out}_{gfm.replace(':', '_')}"
            md, csv_path = write_table(table, out)
            print(f"\nwritten: {md}, {csv_path}")
    return 0


if __name__ == "__main__":  # python -m deflect_min.cli train|table ...
    if len(sys.argv) > 1 and sys.argv[1] in ("train", "table"):
        cmd = sys.argv.pop(1)
        sys.exit(train_main() if cmd == "train" else table_main())
    print("usage: python -m deflect_min.cli {train,table} ...", file=sys.stderr)
    sys.exit(2)
