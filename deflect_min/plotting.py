"""Learning curves of a run: :func:`plot_run` and the ``deflect-plot`` command.

A run is read from either of the files a training run writes:

* Lightning's CSV logs (``metrics.csv`` of ``lightning.pytorch.loggers.CSVLogger``, found in the
  folder or below it; a resumed run has one per session, ``version_0``, ``version_1`` ..., read
  in that order): one row per logging call, ``step`` and ``epoch`` columns and one column per
  logged name (``train/loss``, ``val/f1_macro`` ...);
* the result JSON of :func:`deflect_min.training.train` (its ``history``: one entry per epoch
  with ``train_loss`` and the ``val_*`` metrics).

The figure has two panels: the losses (training, and validation where logged) and the
validation metrics, against the optimisation step.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["read_curves", "plot_run", "main"]

_METRIC_PREFIXES = ("val/", "val_")


def _version(path: Path) -> tuple[int, str]:
    tail = path.parent.name.rpartition("_")[2]
    return (int(tail) if tail.isdigit() else -1, str(path))


def _find(run: Path) -> Path:
    if run.is_file():
        return run
    logs = sorted(run.rglob("metrics.csv"), key=_version)
    if logs:
        return logs[0].parent.parent if len(logs) > 1 else logs[0]  # a resumed run's sessions
    results = sorted(p for p in run.rglob("*.json") if p.name not in ("adapter.json",
                                                                      "config.json"))
    for path in results:
        try:
            if "history" in json.loads(path.read_text()):
                return path
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            continue
    raise FileNotFoundError(f"no learning curves under {run}: expected a CSV log (metrics.csv) "
                            f"or a result JSON with a 'history' (written by deflect-train).")


def read_curves(run: str | Path) -> pd.DataFrame:
    """The curves of ``run`` (a run folder, a ``metrics.csv`` or a result JSON), one row per
    logged step, indexed by ``step``; column names use ``/`` (``train/loss``, ``val/miou``)."""
    path = _find(Path(run))
    if path.is_dir() or path.suffix == ".csv":
        files = sorted(path.rglob("metrics.csv"), key=_version) if path.is_dir() else [path]
        frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        if "step" not in frame:
            raise ValueError(f"{path} has no 'step' column: not a Lightning CSVLogger file.")
        frame = frame.groupby("step").last()  # train and val rows apart; a later session wins
    else:
        history = json.loads(path.read_text()).get("history") or []
        if not history:
            raise ValueError(f"{path} has an empty history: the run stopped before its first "
                             f"epoch ended.")
        frame = pd.DataFrame(history).set_index("step")
        frame.columns = [c.replace("train_", "train/", 1).replace("val_", "val/", 1)
                         for c in frame.columns]
    return frame.dropna(axis=1, how="all")


def plot_run(run: str | Path, *, ax=None, title: str | None = None):
    """Draw the losses and validation metrics of ``run``; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    curves = read_curves(run)
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    else:
        fig = ax[0].figure
    losses = [c for c in curves.columns if c.endswith("loss")]
    metrics = [c for c in curves.columns if c.startswith(_METRIC_PREFIXES) and c not in losses
               and c.rsplit("/", 1)[-1] not in ("epoch",)]
    for name in losses:
        series = curves[name].dropna()
        ax[0].plot(series.index, series.values, marker="o" if len(series) < 30 else None,
                   label=name)
    for name in metrics:
        series = curves[name].dropna()
        ax[1].plot(series.index, series.values, marker="o", label=name)
    ax[0].set(xlabel="step", ylabel="loss", title="losses")
    ax[1].set(xlabel="step", ylabel="metric", title="validation metrics")
    for a in ax:
        if a.lines:
            a.legend(fontsize=8)
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """``deflect-plot RUN [--out FILE]``: save the curves as an image (default RUN/curves.png)."""
    p = argparse.ArgumentParser(prog="deflect-plot", description="Draw a run's loss and metric "
                                "curves (from its CSV log or its result JSON).")
    p.add_argument("run", type=Path, help="a run folder, a metrics.csv or a result JSON")
    p.add_argument("--out", type=Path, default=None,
                   help="image to write (default: curves.png beside the curves' file)")
    args = p.parse_args(argv)
    try:
        source = _find(args.run)
        import matplotlib

        matplotlib.use("Agg")
        fig = plot_run(source, title=str(args.run))
    except (FileNotFoundError, ValueError) as e:
        print(f"deflect-plot: {e}", file=sys.stderr)
        return 2
    out = args.out or (source / "curves.png" if source.is_dir() else source.with_name("curves.png"))
    fig.savefig(out, dpi=120)
    print(f"deflect-plot: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
