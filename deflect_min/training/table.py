"""Table 1: read the results, aggregate them per (method, dataset) over seeds, render and
write Markdown and CSV."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import PROTOCOLS
from .guard import write_atomic
from .metrics import table_metric

__all__ = [
    "RESULT_KEYS",
    "UnreadableResultError",
    "load_results",
    "collect_results",
    "Cell",
    "aggregate",
    "table_rows",
    "render_markdown",
    "render_csv",
    "write_table",
]


# ============================================================================ the table
#: Keys the table reads from every result file.
RESULT_KEYS = ("schema", "dataset", "gfm", "run", "seed", "protocol", "smoke", "metrics",
               "params", "schedule")


class UnreadableResultError(ValueError):
    """A result file is not valid JSON or lacks what the table needs; the message names it."""


def _read_result(path: Path) -> dict[str, Any]:
    try:
        r = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UnreadableResultError(f"{path}: unreadable ({type(error).__name__}: {error}); "
                                    f"a run killed while writing it? Run that seed again, or "
                                    f"delete the file.") from error
    if not isinstance(r, dict):
        raise UnreadableResultError(f"{path}: holds a {type(r).__name__}, not a result of "
                                    f"deflect-train; move it out of the results folder.")
    missing = [k for k in RESULT_KEYS if k not in r]
    if missing:
        raise UnreadableResultError(f"{path}: not a result of deflect-train (no {missing}); "
                                    f"move it out of the results folder, or run that seed "
                                    f"again.")
    return r


def load_results(paths: Iterable[str | os.PathLike], *, strict: bool = False
                 ) -> list[dict[str, Any]]:
    """Read result JSON files (each gets a ``"path"`` key).

    Args:
        paths: the files.
        strict: raise :class:`UnreadableResultError` at the first file that is not valid JSON
            or lacks a key of :data:`RESULT_KEYS`; default: skip it with a one-line warning
            that names it.
    """
    out = []
    for p in paths:
        try:
            r = _read_result(Path(p))
        except UnreadableResultError as error:
            if strict:
                raise
            warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        r["path"] = str(p)
        out.append(r)
    return out


def collect_results(root: str | os.PathLike = "results", *, strict: bool = False
                    ) -> list[dict[str, Any]]:
    """Every result under ``root`` (``<dataset>/<gfm>/<run>/seed*.json``); ``strict`` as in
    :func:`load_results`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return load_results(sorted(root.glob("*/*/*/seed*.json")), strict=strict)


@dataclass
class Cell:
    """One cell of the table: our mean ± std over seeds (percent) and the paper's value."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    seeds: list[int] = field(default_factory=list)
    paper: float | None = None
    paper_std: float | None = None
    note: str = ""
    paths: list[str] = field(default_factory=list)


def aggregate(results: Iterable[Mapping[str, Any]], *, gfm: str | None = None,
              protocol: str | None = None, hls_metric: str = "miou",
              rows: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Aggregate results into Table 1's cells.

    Args:
        results: result dicts (:func:`collect_results`).
        gfm: the encoder (default: the paper's, Scale-MAE).
        protocol: ``"full"`` or ``"reduced"``; default: the one protocol the results hold (an
            error if they hold both: protocols are never mixed silently).
        hls_metric: ``"miou"`` (default, PANGAEA's) or ``"iou_burn_scar"`` for Burn Scars.
        rows: ``(run name, label)`` per row (default: :data:`deflect_min.paper.ROWS`).

    Returns:
        ``{"cells": {(label, column): Cell}, "tuned": {label: (ours %, paper %)}, "rows":
        [...], "protocol", "gfm", "notes": [...]}``.

    Raises:
        ValueError: a smoke result (never a table number), mixed protocols, or a cell whose
            runs differ in schedule.
    """
    from deflect_min import paper

    gfm = gfm or paper.TABLE1_GFM
    rows = list(rows or paper.ROWS)
    results = list(results)
    smoke = [r.get("path", "?") for r in results if r.get("smoke", True)]
    if smoke:
        raise ValueError(f"refusing smoke results (tiny models on fixtures, not benchmark "
                         f"numbers): {smoke[:5]}{' ...' if len(smoke) > 5 else ''}. Move them "
                         f"out of the results folder.")
    results = [r for r in results if r.get("gfm") == gfm]
    protocols = sorted({r["protocol"] for r in results})
    notes: list[str] = []
    if protocol is None:
        if len(protocols) > 1:
            counts = {p: sum(r["protocol"] == p for r in results) for p in protocols}
            raise ValueError(f"the results mix protocols {counts}; choose one (protocol=... or "
                             f"--protocol): the table never mixes them.")
        protocol = protocols[0] if protocols else "full"
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    others = [r for r in results if r["protocol"] != protocol]
    if others:
        notes.append(f"{len(others)} result(s) of another protocol left out.")
    results = [r for r in results if r["protocol"] == protocol]
    random_init = [r for r in results if not r.get("pretrained", False)]
    if random_init:
        notes.append(f"{len(random_init)} run(s) from randomly initialised encoders left out.")
        results = [r for r in results if r.get("pretrained", False)]

    use_paper = gfm == paper.TABLE1_GFM
    cells: dict[tuple[str, str], Cell] = {}
    tuned: dict[str, tuple[float | None, float | None]] = {}
    for key, label in rows:
        mine = [r for r in results if r.get("run") == key]
        pcts = [r["params"]["encoder_tuned_pct"] for r in mine]
        tuned[label] = (float(np.mean(pcts)) if pcts else None,
                        paper.TUNED_PERCENT.get(key) if use_paper else None)
        means: dict[str, float | None] = {}
        for col, ds in paper.DATASET_COLUMNS:
            runs = sorted((r for r in mine if r["dataset"] == ds), key=lambda r: r["seed"])
            metric = table_metric(ds, hls_metric)
            cell = Cell()
            if use_paper and key in paper.TABLE1:
                cell.paper, cell.paper_std = paper.TABLE1[key][col]
            if runs:
                schedules = {json.dumps(r.get("schedule"), sort_keys=True) for r in runs}
                if len(schedules) > 1:
                    raise ValueError(f"{label} / {col}: the runs differ in schedule "
                                     f"({sorted(schedules)}); they cannot share a cell: "
                                     f"{[r['path'] for r in runs]}. Move one schedule's files "
                                     f"out of the folder, or give it its own run --name.")
                seeds = [r["seed"] for r in runs]
                if len(set(seeds)) != len(seeds):
                    raise ValueError(f"{label} / {col}: the same seed twice: "
                                     f"{[r['path'] for r in runs]}")
                vals = [100.0 * float(r["metrics"]["test"][metric]) for r in runs]
                cell.mean = float(np.mean(vals))
                cell.std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
                cell.n, cell.seeds = len(vals), seeds
                cell.paths = [r["path"] for r in runs if "path" in r]
            cells[(label, col)] = cell
            means[col] = cell.mean
        paper_avg, printed = (paper.paper_averages(key) if use_paper and key in paper.TABLE1
                              else ({}, False))
        groups = {"Avg. Class.": paper.CLASSIFICATION_COLUMNS,
                  "Avg. Segm.": paper.SEGMENTATION_COLUMNS,
                  "Avg. Perf.": paper.CLASSIFICATION_COLUMNS + paper.SEGMENTATION_COLUMNS}
        for col, members in groups.items():
            vals = [means[c] for c in members]
            cell = Cell(paper=paper_avg.get(col))
            if all(v is not None for v in vals):
                cell.mean = float(np.mean(vals))
                cell.n = min(cells[(label, c)].n for c in members)
            elif any(v is not None for v in vals):
                cell.note = "incomplete"
            if cell.paper is not None and not printed:
                cell.note = (cell.note + "; " if cell.note else "") + "paper value computed"
            cells[(label, col)] = cell
    burn = "mIoU over both classes" if hls_metric == "miou" else "IoU of the burn-scar class"
    notes.append(f"Burn Scars: ours = {burn} (the paper's column says IoU; PANGAEA reports "
                 f"mIoU).")
    return {"cells": cells, "tuned": tuned, "rows": [label for _, label in rows],
            "protocol": protocol, "gfm": gfm, "hls_metric": hls_metric, "notes": notes,
            "paper": use_paper}


def _fmt(mean: float | None, std: float | None, n: int = 0, digits: int = 1) -> str:
    if mean is None:
        return "not run"
    s = f"{mean:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    if n and n < 3:
        s += f" (n={n})"
    return s


def table_rows(table: Mapping[str, Any]) -> list[list[str]]:
    """Header + one row of strings per method (the Markdown layout)."""
    from deflect_min import paper

    header = ["Method", "Tuned %"] + list(paper.COLUMNS)
    out = [header]
    for label in table["rows"]:
        ours_t, paper_t = table["tuned"][label]
        t = "not run" if ours_t is None else f"{ours_t:.3g}"
        if paper_t is not None:
            t += f" ({paper_t:g})"
        row = [label, t]
        for col in paper.COLUMNS:
            c: Cell = table["cells"][(label, col)]
            s = "incomplete" if c.mean is None and c.note.startswith("incomplete") else \
                _fmt(c.mean, c.std, c.n)
            if c.paper is not None:
                s += f" ({_fmt(c.paper, c.paper_std)}{'*' if 'computed' in c.note else ''})"
            row.append(s)
        out.append(row)
    return out


def render_markdown(table: Mapping[str, Any]) -> str:
    """Table 1 as Markdown: ``ours mean ± std (paper mean ± std)`` per cell."""
    rows = table_rows(table)
    lines = [f"**Table 1 reproduction** — GFM `{table['gfm']}`, protocol `{table['protocol']}`. "
             f"Cells: ours, mean ± sample std over seeds, percent"
             + (" (the paper's value in brackets)" if table["paper"] else "") + ".", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join("---" for _ in rows[0]) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines.append("")
    foot = list(table["notes"])
    foot.append("Averages are computed from unrounded per-dataset means; Avg. Perf. is the mean "
                "over the five datasets. (n=k): fewer than 3 seeds. Tuned %: encoder parameters "
                "tuned, mean over our runs of the row (DEFLECT's depends on the input bands).")
    if table["paper"]:
        foot.append("* paper average computed from its rounded per-dataset values (not printed "
                    "in the paper).")
    lines += [f"- {n}" for n in foot]
    return "\n".join(lines) + "\n"


def render_csv(table: Mapping[str, Any]) -> str:
    """Table 1 as CSV, one line per (method, column)."""
    import csv
    import io

    from deflect_min import paper

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["gfm", "protocol", "method", "column", "metric", "status", "ours_mean",
                "ours_std", "n", "seeds", "paper_mean", "paper_std", "note"])
    metrics = dict(paper.COLUMN_METRICS)
    metrics["Burn Scars"] = "mIoU" if table["hls_metric"] == "miou" else "IoU (burn scar)"
    for label in table["rows"]:
        ours_t, paper_t = table["tuned"][label]
        w.writerow([table["gfm"], table["protocol"], label, "Tuned %", "encoder tuned params %",
                    "ok" if ours_t is not None else "not run",
                    "" if ours_t is None else f"{ours_t:.6g}", "", "", "",
                    "" if paper_t is None else paper_t, "", ""])
        for col in paper.COLUMNS:
            c: Cell = table["cells"][(label, col)]
            status = "ok" if c.mean is not None else (
                "incomplete" if c.note.startswith("incomplete") else "not run")
            w.writerow([table["gfm"], table["protocol"], label, col, metrics.get(col, "mean"),
                        status, "" if c.mean is None else f"{c.mean:.6g}",
                        "" if c.std is None else f"{c.std:.6g}", c.n,
                        " ".join(map(str, c.seeds)), "" if c.paper is None else f"{c.paper:.6g}",
                        "" if c.paper_std is None else c.paper_std, c.note])
    return buf.getvalue()


def write_table(table: Mapping[str, Any], prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv``; return both paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    write_atomic(md, render_markdown(table))
    write_atomic(csv_path, render_csv(table))
    return md, csv_path
