"""The learning curve of a relabel campaign: val accuracy against faces relabelled, per strategy.

``python -m annotate.learning_curve RESULTS [RESULTS ...] --plot PNG [--markdown MD]`` reads the
``results.jsonl`` files that :mod:`annotate.simulate` writes, averages the seeds of each
(strategy, budget) point, and prints one table: faces seen, labels changed, and val accuracy
and macro-F1 against the FER+ and the original labels as mean +- spread (half the range
over the seeds). The plot shows accuracy against FER+ labels by faces seen, one line per
strategy, the seeds' range shaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core._cli import cli_main

from .errors import AnnotateError

__all__ = ["read_results", "summarise", "to_markdown", "plot", "gain_per_thousand", "main"]


def read_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per trained point: strategy, seed, budget, faces seen, labels changed and the four val figures."""
    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AnnotateError(f"no results file at {str(path)!r}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                point = json.loads(line)
                val = point["val"]
                rows.append({"strategy": point["strategy"], "answer": point.get("answer", "majority"),
                             "soft_labels": bool(point.get("soft_labels", False)), "seed": point["seed"],
                             "budget": point["budget"], "faces_seen": point["faces_seen"],
                             "labels_changed": point["labels_changed"],
                             "ferplus_acc": val["ferplus"]["accuracy"], "ferplus_f1": val["ferplus"]["macro_f1"],
                             "original_acc": val["original"]["accuracy"], "original_f1": val["original"]["macro_f1"]})
            except (KeyError, TypeError, ValueError):
                raise AnnotateError(f"{path.name} line {number} is not a trained point of annotate.simulate") from None
    if not rows:
        raise AnnotateError("the results hold no trained point")
    # A point trained again (a rerun, or several files naming it) counts once: its latest line.
    keys = ["strategy", "answer", "soft_labels", "seed", "budget"]
    return pd.DataFrame(rows).drop_duplicates(keys, keep="last").reset_index(drop=True)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (half the range) over seeds per (strategy, answer, soft labels, budget)."""
    keys = ["strategy", "answer", "soft_labels", "budget"]
    figures = ["ferplus_acc", "ferplus_f1", "original_acc", "original_f1"]
    grouped = results.groupby(keys, sort=False)
    out = grouped[["faces_seen", "labels_changed"]].mean()
    out["seeds"] = grouped.size()
    for figure in figures:
        out[figure] = grouped[figure].mean()
        out[f"{figure}_spread"] = (grouped[figure].max() - grouped[figure].min()) / 2
    out = out.reset_index()
    return out.sort_values(["strategy", "answer", "soft_labels", "faces_seen"]).reset_index(drop=True)


def gain_per_thousand(results: pd.DataFrame, *, most: int = 5000) -> pd.DataFrame:
    """Val accuracy gained (points, against FER+ labels) per 1,000 answers, per strategy: the slope of a
    straight line through one seed's points of at most ``most`` faces (budget 0 included), then the mean
    and spread (half the range) over the seeds with at least two such points."""
    numeric = results[results["budget"].astype(str).str.isdigit()]
    numeric = numeric[numeric["faces_seen"] <= most]
    out = []
    for (strategy, answer, soft), group in numeric.groupby(["strategy", "answer", "soft_labels"], sort=False):
        slopes = []
        for _, seed in group.groupby("seed"):
            if seed["faces_seen"].nunique() >= 2:
                x, y = seed["faces_seen"].to_numpy(float) / 1000, seed["ferplus_acc"].to_numpy(float) * 100
                slopes.append(float(np.polyfit(x, y, 1)[0]))
        if slopes:
            out.append({"strategy": strategy, "answer": answer, "soft_labels": soft, "seeds": len(slopes),
                        "points_per_1000": float(np.mean(slopes)),
                        "spread": (max(slopes) - min(slopes)) / 2})
    return pd.DataFrame(out)


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (percentages, mean +- spread)."""
    def cell(row: pd.Series, figure: str) -> str:
        scale = 100 if figure.endswith("acc") else 1
        digits = 1 if scale == 100 else 3
        return f"{row[figure] * scale:.{digits}f} ± {row[f'{figure}_spread'] * scale:.{digits}f}"

    lines = ["| strategy | answers | faces seen | labels changed | val acc FER+ % | macro-F1 FER+ "
             "| val acc original % | macro-F1 original | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, row in summary.iterrows():
        answers = row["answer"] + (", soft" if row["soft_labels"] else "")
        lines.append(f"| {row['strategy']} | {answers} | {row['faces_seen']:,.0f} | {row['labels_changed']:,.0f} "
                     f"| {cell(row, 'ferplus_acc')} | {cell(row, 'ferplus_f1')} | {cell(row, 'original_acc')} "
                     f"| {cell(row, 'original_f1')} | {row['seeds']} |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: str | Path) -> Path:
    """Val accuracy against FER+ labels by faces seen, one line per strategy, the seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for (strategy, answer, soft), group in summary.groupby(["strategy", "answer", "soft_labels"], sort=False):
        x = group["faces_seen"].to_numpy()
        y = group["ferplus_acc"].to_numpy() * 100
        spread = group["ferplus_acc_spread"].to_numpy() * 100
        label = strategy + ("" if answer == "majority" else f" ({answer})") + (", soft" if soft else "")
        line, = ax.plot(x, y, marker="o", label=label)
        ax.fill_between(x, y - spread, y + spread, color=line.get_color(), alpha=0.2)
    ax.set_xscale("symlog", linthresh=500)
    ax.set_xlabel("faces relabelled (answers)")
    ax.set_ylabel("val accuracy against FER+ labels (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotate.learning_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.jsonl files of annotate.simulate")
    parser.add_argument("--plot", default=None, help="write the plot here (.png)")
    parser.add_argument("--markdown", default=None, help="write the table here (.md)")
    args = parser.parse_args(argv)
    results = read_results(args.results)
    summary = summarise(results)
    table = to_markdown(summary)
    print(table)
    gains = gain_per_thousand(results)
    if len(gains):
        print()
        for row in gains.itertuples(index=False):
            print(f"{row.strategy} ({row.answer}{', soft' if row.soft_labels else ''}): "
                  f"{row.points_per_1000:+.2f} ± {row.spread:.2f} points of val accuracy (FER+) per 1,000 answers "
                  f"(a line through 0 to 5,000 faces; {row.seeds} seed{'s' if row.seeds > 1 else ''})")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.plot:
        print(f"plot: {plot(summary, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
