"""Does the queue put label errors first? ``python -m benchmarks.rank_eval VAL [--fraction 0.05] [--seed 0]``.

The measurement plants errors whose truth is known. It loads the faces of VAL (its
``val`` split, else all of it), flips the labels of ``--fraction`` of them at random, each
to one of the six other classes chosen uniformly, and ranks the faces with the queue's
own code path, :meth:`annotate.queue.Queue.order`, as the relabelling tab does:
``likely_label_error`` (cleanlab), ``model_disagrees``, ``low_quality`` and ``random``.
The model probabilities are the bundled model's (``--weights`` for another), calibrated,
from :meth:`fer_core.predict.Predictor.predict_faces`: out-of-sample on FER2013 val, which
the bundled model never trained on (val chose its best epoch and temperature only).
``quality_score`` is :func:`fer_core.quality.add_quality`'s.

For each strategy and seed it reports, against the flipped faces:

``ranked``
    How many faces the strategy ranks at all (cleanlab ranks only the faces it flags,
    ``model_disagrees`` only those whose top class is not the label); the queue shows no others.
``P@k``, ``R@k``
    Precision and recall of the first ``k`` faces of the order, for ``k`` = the number
    flipped and ``--top`` (default 50, 100, 200). A strategy ranking fewer than ``k`` faces
    is scored on those it ranks, out of ``k``: what an annotator working the queue would see.
``R@all``
    Recall over everything the strategy ranks.
``AP``
    Average precision (:func:`sklearn.metrics.average_precision_score`) of the order, the
    faces a strategy does not rank tied behind all that it does.

Random ranking has expected precision ``--fraction`` at every ``k`` (the ``random
(expected)`` row); the queue's seeded shuffle is measured too. Figures are mean ± sd over
``--repeats`` seeds (``--seed``, ``--seed`` + 1, ...), each flipping other faces.

The planted errors are not the only ones: FER2013 val carries its own label noise, so a
face the queue rightly puts first may count as a false positive here; precision is a
lower bound on the share of real label errors the queue shows.

Measured (FER2013 val, 3,578 faces, 179 flipped, seeds 0-2, bundled fer_fastnet at
0.678 accuracy; 9 s on two busy cores): ``likely_label_error`` ranks 984 ± 8 faces, P@179
0.449 ± 0.026, P@50 0.593 ± 0.031, recall over its whole list 0.892 ± 0.023, AP 0.419 ±
0.037; ``model_disagrees`` ranks 1,269 ± 4, P@179 0.358 ± 0.024, AP 0.296 ± 0.022;
``low_quality`` and ``random`` are at chance (P@179 0.050, AP 0.05). Cleanlab's order is
about 9x random at the top of the queue and 1.3x the plain disagreement order.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotate import STRATEGIES, Queue, open_store
from fer_core._cli import cli_main
from fer_core._validation import FERError
from fer_core.labels import EMOTIONS, NUM_CLASSES

__all__ = ["flip_labels", "ranking_metrics", "strategy_orders", "evaluate", "summarise", "format_report",
           "get_args_parser", "main"]

#: Strategies measured, in the order they are printed.
MEASURED: tuple[str, ...] = ("likely_label_error", "model_disagrees", "low_quality", "random")


def flip_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ``round(fraction * N)`` of them moved to another class, and the mask of those.

    Each moved label goes to one of the 6 other classes, uniformly.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_flip = round(fraction * len(labels))
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), size=n_flip, replace=False)] = True
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, NUM_CLASSES, size=n_flip)) % NUM_CLASSES
    return noisy, flipped


def ranking_metrics(order: np.ndarray, flipped: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``ranked``, ``P@k``/``R@k`` for each k, ``R@all`` and ``AP`` of a (possibly partial) order of row positions."""
    from sklearn.metrics import average_precision_score

    order = np.asarray(order, dtype=np.int64)
    hits = flipped[order]
    n_pos = int(flipped.sum())
    out: dict[str, float] = {"ranked": float(len(order))}
    for k in ks:
        found = int(hits[:k].sum())
        out[f"P@{k}"] = found / k
        out[f"R@{k}"] = found / n_pos if n_pos else float("nan")
    out["R@all"] = int(hits.sum()) / n_pos if n_pos else float("nan")
    score = np.zeros(len(flipped))
    score[order] = np.arange(len(order), 0, -1)  # first ranked highest; unranked tied at 0, behind all
    out["AP"] = float(average_precision_score(flipped, score)) if n_pos else float("nan")
    return out


def strategy_orders(candidates: pd.DataFrame, probabilities: np.ndarray, *, seed: int,
                    strategies: Sequence[str] = MEASURED) -> dict[str, np.ndarray]:
    """Each strategy's order of the candidate rows, from :meth:`Queue.order` on a throwaway SQLite store."""
    with tempfile.TemporaryDirectory(prefix="rank_eval_") as folder:
        store = open_store(str(Path(folder) / "rank_eval.db"))
        try:
            queue = Queue(store, candidates, dataset="rank_eval", probabilities=probabilities, seed=seed)
            return {name: queue.order(name) for name in strategies}
        finally:
            store.close()


def _streams(seed: int) -> tuple[np.random.Generator, int]:
    """Independent randomness for one seed: the flips, and the seed of the queue's ``random`` shuffle.

    (``default_rng(seed)`` for both would draw the shuffle from the stream that chose the flips.)
    """
    flips, shuffle = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(flips), int(shuffle.generate_state(1)[0])


def evaluate(frame: pd.DataFrame, probabilities: np.ndarray, *, fraction: float, seeds: Sequence[int],
             top: Sequence[int]) -> tuple[pd.DataFrame, int]:
    """Per seed and strategy, the :func:`ranking_metrics` of the planted errors; and how many were planted per seed.

    ``frame`` needs ``sample_id``, ``emotion`` (the labels as given) and ``quality_score``.
    """
    labels = frame["emotion"].to_numpy(dtype=np.int64)
    rows = []
    n_flip = 0
    for seed in seeds:
        flips, shuffle = _streams(seed)
        noisy, flipped = flip_labels(labels, fraction, flips)
        n_flip = int(flipped.sum())
        ks = list(dict.fromkeys([n_flip, *top]))
        candidates = pd.DataFrame({"sample_id": frame["sample_id"].astype(str).to_numpy(), "emotion": noisy,
                                   "quality_score": frame["quality_score"].to_numpy(dtype=np.float64)})
        for name, order in strategy_orders(candidates, probabilities, seed=shuffle).items():
            rows.append({"seed": seed, "strategy": name, **ranking_metrics(order, flipped, ks)})
    return pd.DataFrame(rows), n_flip


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (ddof=1; 0 for one seed) of every metric per strategy, strategies in :data:`MEASURED` order."""
    metrics = [c for c in results.columns if c not in ("seed", "strategy")]
    grouped = results.groupby("strategy", sort=False)[metrics]
    mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    order = [s for s in MEASURED if s in mean.index]
    return pd.concat({"mean": mean.loc[order], "sd": sd.loc[order]}, axis=1)


def _cell(mean: float, sd: float, integer: bool) -> str:
    return f"{mean:.0f} ± {sd:.0f}" if integer else f"{mean:.3f} ± {sd:.3f}"


def format_report(summary: pd.DataFrame, *, n_faces: int, n_flip: int, fraction: float, top: Sequence[int]) -> str:
    """The table printed by :func:`main`: one row per strategy, each cell ``mean ± sd``."""
    metrics = list(summary["mean"].columns)
    header = ["strategy", *metrics]
    table = [header]
    for name in summary.index:
        table.append([name, *(_cell(summary["mean"].at[name, m], summary["sd"].at[name, m], m == "ranked")
                              for m in metrics)])
    expected = {"ranked": f"{n_faces}", "R@all": "1.000", "AP": f"{n_flip / n_faces:.3f}"}
    for m in metrics:
        if m.startswith("P@"):
            expected[m] = f"{n_flip / n_faces:.3f}"
        elif m.startswith("R@") and m != "R@all":
            expected[m] = f"{min(1.0, int(m[2:]) / n_faces):.3f}"
    table.append(["random (expected)", *(expected[m] for m in metrics)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in table)


def _load(path: str, limit: int | None, seed: int, cache_dir: str | None):
    from fer_core.datasets import load_faces
    from fer_core.quality import add_quality

    table = load_faces(path, cache_dir=cache_dir, progress=False)
    if "val" in set(table.frame["split"]):
        table = table.split("val")
    if limit is not None and limit < len(table):
        pick = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])  # a stream the flips do not use
        table = table.select(np.sort(pick.choice(len(table), size=limit, replace=False)))
    if "quality_score" not in table.frame.columns:
        table = add_quality(table)
    return table


def _probabilities(images: np.ndarray, weights: str | None) -> tuple[np.ndarray, str]:
    """The model's calibrated probabilities in FER2013 order (N, 7), and its name."""
    from fer_core.predict import get_predictor

    predictor = get_predictor(weights)
    probs = predictor.predict_faces(images)
    missing = [e for e in EMOTIONS if e not in predictor.labels]
    if missing:
        raise FERError(f"the model predicts {predictor.labels}, not the seven emotions (missing {missing}); "
                       "the queue ranks against the seven FER2013 labels")
    probs = probs[:, [predictor.labels.index(e) for e in EMOTIONS]].astype(np.float64)
    return probs, predictor.model_name


def _check_args(args: argparse.Namespace) -> list[int]:
    if not 0 < args.fraction < 1:
        raise FERError(f"--fraction must be between 0 and 1 (exclusive), got {args.fraction}")
    if args.repeats < 1:
        raise FERError(f"--repeats must be at least 1, got {args.repeats}")
    if args.limit is not None and args.limit < 10:
        raise FERError(f"--limit must be at least 10 faces, got {args.limit}")
    try:
        top = sorted({int(k) for k in str(args.top).split(",") if k.strip()})
    except ValueError:
        raise FERError(f"--top takes comma-separated positive integers, e.g. 50,100,200; got {args.top!r}") from None
    if any(k < 1 for k in top):
        raise FERError(f"--top takes positive integers, got {args.top!r}")
    return top


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rank_eval", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("val", help="faces the model did not train on (folder, CSV, Parquet); its val split, else all")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the labels flipped")
    parser.add_argument("--seed", type=int, default=0, help="first seed; the repeats use the following ones")
    parser.add_argument("--repeats", type=int, default=3, help="seeds (each flips other faces)")
    parser.add_argument("--top", default="50,100,200", help="k for P@k and R@k, besides the number flipped")
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many faces (seeded)")
    parser.add_argument("--weights", default=None, help="model weights (.safetensors); default the bundled model")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the per-seed figures as JSON")
    parser.add_argument("--cache-dir", default=None, help="data set cache folder")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    top = _check_args(args)
    table = _load(args.val, args.limit, args.seed, args.cache_dir)
    probs, model = _probabilities(table.images, args.weights)
    seeds = list(range(args.seed, args.seed + args.repeats))
    results, n_flip = evaluate(table.frame, probs, fraction=args.fraction, seeds=seeds, top=top)
    summary = summarise(results)
    accuracy = float((probs.argmax(1) == table.labels).mean())
    print(f"rank_eval: {len(table)} faces of {args.val}; {n_flip} labels ({args.fraction:.1%}) flipped to another "
          f"class at random; seeds {', '.join(map(str, seeds))}")
    print(f"model {model}: accuracy {accuracy:.4f} on the labels as given; strategies ranked by "
          f"annotate.queue.Queue.order ({', '.join(STRATEGIES[s].name for s in MEASURED)})")
    print(format_report(summary, n_faces=len(table), n_flip=n_flip, fraction=args.fraction, top=top))
    print(f"mean ± sd over {len(seeds)} seeds; P@{n_flip}/R@{n_flip}: k = the number flipped; "
          f"{time.perf_counter() - began:.1f} s")
    if args.json:
        payload: dict[str, Any] = {"val": args.val, "faces": len(table), "fraction": args.fraction, "flipped": n_flip,
                                   "seeds": seeds, "model": model, "per_seed": results.to_dict(orient="records")}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
