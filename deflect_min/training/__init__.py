"""Training and evaluation: one Lightning run per (dataset, GFM, method, seed), and the Table 1.

:func:`train` takes a :class:`TrainConfig` and returns (and writes, as JSON) a result dict::

    from deflect_min.training import TrainConfig, train
    result = train(TrainConfig(dataset="m-brick-kiln", root="data/geobench", method="deflect",
                               download=True))
    result["metrics"]["test"]["f1_macro"]

Modules:

* :mod:`~deflect_min.training.config` -- :class:`TrainConfig`, :func:`smoke_config`, the protocols
  (``"full"``, ``"reduced"``) and their constants.
* :mod:`~deflect_min.training.metrics` -- metrics from confusion matrices, the table's metric per
  dataset (Burn Scars: mIoU or burn-scar IoU), :func:`default_precision`.
* :mod:`~deflect_min.training.data` -- :func:`build_loaders`, band checks, GEO-Bench partitions.
* :mod:`~deflect_min.training.module` -- :class:`TaskModule` and the callbacks behind bit-identical
  resume.
* :mod:`~deflect_min.training.bookkeeping` -- result and checkpoint paths, versions, device,
  protocol description.
* :mod:`~deflect_min.training.run` -- :func:`train` (what happens, in order) and :func:`load_model`.
* :mod:`~deflect_min.training.table` -- Table 1: collect, aggregate, render, write.
"""

from __future__ import annotations

from .bookkeeping import result_path, run_name
from .config import (FIXTURES, PROTOCOLS, REDUCED_MAX_STEPS, REDUCED_PARTITION, SMOKE_ARCH,
                     TASK_EPOCHS, TrainConfig, smoke_config)
from .data import apply_geobench_partition, build_loaders, check_bands
from .metrics import default_precision, metrics_from_confusion, table_metric
from .module import TaskModule
from .run import load_model, train
from .table import (Cell, aggregate, collect_results, load_results, render_csv, render_markdown,
                    table_rows, write_table)

__all__ = [
    "PROTOCOLS",
    "TASK_EPOCHS",
    "REDUCED_PARTITION",
    "REDUCED_MAX_STEPS",
    "SMOKE_ARCH",
    "FIXTURES",
    "TrainConfig",
    "TaskModule",
    "smoke_config",
    "default_precision",
    "metrics_from_confusion",
    "table_metric",
    "check_bands",
    "build_loaders",
    "apply_geobench_partition",
    "run_name",
    "result_path",
    "train",
    "load_model",
    "load_results",
    "collect_results",
    "Cell",
    "aggregate",
    "table_rows",
    "render_markdown",
    "render_csv",
    "write_table",
]
