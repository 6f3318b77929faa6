"""Plot (and tabulate) the CSVs of ``benchmarks.peft_cost`` for book/cost.md.

Usage::

    python -m benchmarks.plot_cost [CSV ...] [--out book/images/cost_cpu.png] [--markdown]

Without CSV arguments it reads every ``benchmarks/results/cpu_*.csv``. The figure has two
panels, one bar per method and model: the training-step CPU time as a multiple of the frozen
model's forward-only CPU time, and the peak memory of the step as a multiple of HF peft's LoRA
(ratios, because each model size was measured at its own batch size). ``--markdown`` prints
one Markdown table per CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"vit_small_patch8_224": "ViT-S/8", "vit_base_patch16_224": "ViT-B/16",
         "vit_large_patch16_224": "ViT-L/16"}


def load(paths):
    import pandas as pd

    frames = [pd.read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    df["backbone"] = [f"{SHORT.get(m, m)}, batch {b}" for m, b in zip(df["model"], df["batch_size"])]
    return df


def plot(df, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    ends = ("forward-only", "peft-lora")
    order = ["forward-only", *[m for m in dict.fromkeys(df["method"]) if m not in ends], "peft-lora"]
    try:  # the registry's order (frozen, full, deflect, ..., the baselines)
        import deflect_min as dm

        rank = {m: i for i, m in enumerate(["forward-only", *dm.METHODS, "peft-lora"])}
        order.sort(key=lambda m: rank.get(m, len(rank)))
    except ImportError:
        pass
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    train = df[df["method"] != "forward-only"]
    sns.barplot(data=df, y="method", x="x_forward_cpu", hue="backbone", order=order, ax=axes[0])
    axes[0].axvline(1.0, color="k", lw=1)
    axes[0].axvline(2.3, color="tab:red", lw=1, ls="--")
    axes[0].set(xlabel="step CPU time / forward-only (red: DEFLECT's 2.3x target)", ylabel="")
    sns.barplot(data=train, y="method", x="mem_x_peft_lora", hue="backbone", order=order,
                ax=axes[1], legend=False)
    axes[1].axvline(1.0, color="tab:red", lw=1, ls="--")
    axes[1].set(xlabel="peak memory of the step / peft's LoRA", ylabel="")
    first = df.iloc[0]
    fig.suptitle(f"Training-step cost per method, {first['device']} ({first['device_name']}, "
                 f"{first['threads']} thread(s)); torch {first['torch']}, timm {first['timm']}, "
                 f"peft {first['peft']}", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def markdown(df) -> str:
    blocks = []
    for backbone, part in df.groupby("backbone", sort=False):
        lines = ["| method | tuned params | CPU ms / step | x forward-only | x peft LoRA | "
                 "wall ms / step | x forward-only | x peft LoRA | peak MiB | memory x peft LoRA "
                 "| GFLOP / step |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in part.itertuples():
            lines.append(f"| {r.method} | {r.tuned_params:,} | {r.step_cpu_ms:,.0f} | "
                         f"**{r.x_forward_cpu:.2f}** | **{r.x_peft_lora_cpu:.2f}** | "
                         f"{r.step_ms:,.0f} | {r.x_forward:.2f} | {r.x_peft_lora:.2f} | "
                         f"{r.peak_mem_mib:,.0f} | {r.mem_x_peft_lora:.2f} | "
                         f"{r.gflops_step:,.0f} |")
        blocks.append(f"**{backbone}**, {part.iloc[0]['img_size']} px, "
                      f"{part.iloc[0]['bands']} bands\n\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "book" / "images" / "cost_cpu.png")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    paths = args.csv or sorted((ROOT / "benchmarks" / "results").glob("cpu_*.csv"),
                               key=lambda q: list(SHORT).index(q.stem[4:])
                               if q.stem[4:] in SHORT else 99)
    if not paths:
        print("no CSV given and none in benchmarks/results/", file=sys.stderr)
        return 1
    df = load(paths)
    plot(df, args.out)
    if args.markdown:
        print(markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
