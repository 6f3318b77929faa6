"""deflect-plot: curves from Lightning's own CSV logger and from a result JSON's history."""

from __future__ import annotations

import json

import matplotlib
import pytest
from lightning.pytorch.loggers import CSVLogger

from deflect_min.plotting import main, plot_run, read_curves

matplotlib.use("Agg")


def _csv_run(root):
    """A metrics.csv written by Lightning's CSVLogger itself, as a run logs it."""
    logger = CSVLogger(root, name="run")
    for step in range(6):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step // 3}, step=step)
        if step % 3 == 2:
            logger.log_metrics({"val/loss": 0.9 / (step + 1), "val/f1_macro": 0.1 * step,
                                "epoch": step // 3}, step=step)
    logger.save()
    return root


def test_lightning_csv_log(tmp_path):
    curves = read_curves(_csv_run(tmp_path))
    assert list(curves.index) == list(range(6))
    assert curves["val/f1_macro"].dropna().tolist() == pytest.approx([0.2, 0.5])
    fig = plot_run(tmp_path)
    loss_ax, metric_ax = fig.axes
    assert {line.get_label() for line in loss_ax.lines} == {"train/loss", "val/loss"}
    assert [line.get_label() for line in metric_ax.lines] == ["val/f1_macro"]


def test_result_json_history(tmp_path):
    history = [{"epoch": 0, "step": 4, "train_loss": 0.8, "lr": 1e-3, "val_loss": 0.7,
                "val_miou": 0.3},
               {"epoch": 1, "step": 8, "train_loss": 0.5, "lr": 1e-3, "val_loss": 0.6,
                "val_miou": 0.4}]
    (tmp_path / "seed0.json").write_text(json.dumps({"history": history}))
    curves = read_curves(tmp_path)
    assert curves["val/miou"].tolist() == [0.3, 0.4] and curves.index.tolist() == [4, 8]
    assert main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").stat().st_size > 1000


def test_nothing_to_plot_is_one_line_and_status_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deflect-plot: no learning curves under") and err.count("\n") == 1


def test_resumed_run_reads_every_session_in_order(tmp_path):
    for version, steps in ((0, range(0, 3)), (1, range(3, 6))):
        logger = CSVLogger(tmp_path, name="logs", version=version)
        for step in steps:
            logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.save()
    curves = read_curves(tmp_path)
    assert curves["train/loss"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
