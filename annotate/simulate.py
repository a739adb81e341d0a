"""A simulated relabel campaign, end to end through the real code: queue, store, training, evaluation.

``python -m annotate.simulate DATA --votes VOTES --strategy S --budget N [N ...] --seed K --out DIR``

1. The app's queue (:class:`annotate.queue.Queue`, with the probabilities the Relabel tab
   uses) orders DATA's training faces by strategy ``S``.
2. Simulated annotators answer each face from its crowd votes (:class:`annotate.campaign.VoteAnswers`:
   the majority, one vote drawn at random, or ``k`` votes drawn).
3. The answers go through the real store: leases, then decisions (:func:`annotate.campaign.run_campaign`).
4. For each budget, the corrections of the first N faces shown are exported
   (:func:`annotate.export.export_corrections`) and fed to the training command
   (``python -m fer_core.train ... --corrections FILE``), which fine-tunes the starting model
   with the same recipe for every budget (budget 0: the same fine-tuning without corrections,
   so a gain measures the answers, not the extra epochs).
5. Each model is evaluated on DATA's val faces against both label sets: the original labels and
   the FER+ majority (:mod:`annotate.ferplus`).

With ``--all-votes`` there is no campaign: every vote of every face is imported into the store
(:func:`annotate.import_votes.import_votes`), the point where the whole crowd answered everything.

The campaign is run once, to the largest budget; a smaller budget is the same campaign stopped
earlier (the queue's order and the seeded answers do not depend on the budget), so its
corrections are those of the first N faces. Results go to ``DIR/results.jsonl``, one line per
(strategy, seed, budget); :mod:`annotate.learning_curve` turns them into the table and the plot.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core._cli import cli_main
from fer_core.config import ASSETS_DIR
from fer_core.datasets import FaceTable, load_faces
from fer_core.labels import EMOTIONS

from .campaign import ANSWER_MODES, VoteAnswers, run_campaign
from .errors import AnnotateError
from .ferplus import ferplus_labels_for
from .import_votes import VoteTable, import_votes, read_vote_table, rows_of_faces
from .labels import VOTE_LABELS
from .probabilities import oof_probabilities
from .queue import STRATEGIES, Queue
from .store import open_store

__all__ = ["FineTune", "parse_budgets", "campaign_queue", "corrections_prefix", "evaluate_weights", "main"]

#: The model every point fine-tunes from, unless ``--init`` says otherwise.
DEFAULT_INIT = ASSETS_DIR / "fer_model.safetensors"


@dataclass(frozen=True)
class FineTune:
    """The recipe every budget's model is trained with (the same for all points of a curve)."""

    init: Path
    epochs: int = 3
    lr: float = 3e-4
    soft_labels: bool = False
    max_steps: int | None = None  #: per epoch; for quick checks
    threads: int | None = None

    def command(self, data: str, val: str | None, out: Path, seed: int, corrections: Path | None) -> list[str]:
        """The ``python -m fer_core.train`` command line for one point."""
        cmd = [sys.executable, "-m", "fer_core.train", data, "--out", str(out), "--init", str(self.init),
               "--epochs", str(self.epochs), "--lr", str(self.lr), "--warmup-epochs", "0", "--seed", str(seed),
               "--no-progress"]
        if val:
            cmd += ["--val", val]
        if corrections is not None:
            cmd += ["--corrections", str(corrections)]
            if self.soft_labels:
                cmd.append("--soft-labels")
        if self.max_steps:
            cmd += ["--max-steps", str(self.max_steps)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd


def parse_budgets(values: Sequence[str]) -> list[int | None]:
    """Budgets from the command line: whole numbers of faces, or ``all`` (``None``); sorted, ``all`` last."""
    budgets: set[int | None] = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip().lower()
            if part == "all":
                budgets.add(None)
            elif part.isdigit():
                budgets.add(int(part))
            elif part:
                raise AnnotateError(f"a budget is a whole number of faces or 'all', got {part!r}")
    if not budgets:
        raise AnnotateError("give at least one budget")
    return sorted(budgets, key=lambda b: (b is None, b or 0))


def vote_counts(table: FaceTable, votes: VoteTable | Path, data_root: Path) -> np.ndarray:
    """(N, len(VOTE_LABELS)) vote counts row-aligned with ``table`` (zeros where the table has no votes).

    ``votes``: a vote table read by :func:`~annotate.import_votes.read_vote_table`, or its file.
    """
    votes = votes if isinstance(votes, VoteTable) else read_vote_table(votes)
    rows = rows_of_faces(votes, table, data_root, missing_ok=True)
    counts = np.zeros((len(table), len(VOTE_LABELS)), dtype=np.int64)
    found = rows >= 0
    counts[rows[found]] = votes.counts[found]
    return counts


def _votes_on(table: FaceTable, votes: VoteTable, data_root: Path) -> VoteTable:
    """The rows of ``votes`` whose faces ``table`` holds (a vote table may cover more faces)."""
    keep = rows_of_faces(votes, table, data_root, missing_ok=True) >= 0
    return replace(votes, keys=[k for k, kept in zip(votes.keys, keep) if kept], counts=votes.counts[keep],
                   lines=votes.lines[keep])


def campaign_queue(store: Any, train: FaceTable, dataset: str, *, seed: int) -> Queue:
    """The Relabel tab's queue over the training faces (out-of-fold probabilities where shipped)."""
    probabilities, _ = oof_probabilities(train.frame, train.images)
    columns = [c for c in ("sample_id", "emotion", "quality_score") if c in train.frame]
    return Queue(store, train.frame[columns], dataset=dataset, probabilities=probabilities, images=train.images,
                 seed=seed)


def corrections_prefix(table: pd.DataFrame, shown: list[str], budget: int | None, path: Path) -> int:
    """Write the rows of ``table`` (the campaign's corrections, :func:`annotate.export.corrections`) for the
    first ``budget`` faces shown to ``path``; returns how many labels they change."""
    from .export import write_table

    keep = set(shown if budget is None else shown[:budget])
    table = table[table["sample_id"].isin(keep)].reset_index(drop=True)
    write_table(table, path)  # as export_corrections writes the store's
    return int(table["changed"].sum())


def evaluate_weights(weights: Path, val: FaceTable, ferplus: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and recall per class on ``val`` against the original and the FER+ labels."""
    from fer_core.evaluate import compute_metrics
    from fer_core.predict import Predictor

    predicted = Predictor(weights).predict_faces(val.images).argmax(axis=1)
    result = {}
    for name, labels in (("original", val.labels), ("ferplus", ferplus)):
        known = labels >= 0
        metrics = compute_metrics(labels[known], predicted[known], list(EMOTIONS))
        result[name] = {"n": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                        "recall": metrics["per_class_recall"]}
    return result


def _split(table: FaceTable, split: str) -> FaceTable:
    rows = table.frame["split"].to_numpy() == split
    if not rows.any():
        raise AnnotateError(f"the data set has no {split!r} faces; give a folder with train/ and val/ splits")
    return table.select(rows)


def _answers(args: argparse.Namespace) -> str:
    """How the faces were answered, as results name it: ``majority``, ``one``, ``k3`` (three votes drawn), ``all ten``."""
    if args.all_votes:
        return "all ten"
    return f"k{args.k}" if args.answer == "k" else args.answer


def _campaign_name(args: argparse.Namespace) -> str:
    """Names a campaign's files: strategy, answers, soft labels, seed."""
    if args.all_votes:
        return f"all-votes{'-soft' if args.soft_labels else ''}-seed{args.seed}"
    return f"{args.strategy}-{_answers(args)}{'-soft' if args.soft_labels else ''}-seed{args.seed}"


def _train_point(args: argparse.Namespace, recipe: FineTune, out: Path, corrections: Path | None) -> Path:
    """Fine-tune one point (skipped when its model already exists: a rerun resumes the curve)."""
    weights = out / "model.safetensors"
    if weights.is_file():
        return weights
    command = recipe.command(args.data, args.val, out, args.seed, corrections)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w", encoding="utf-8") as log:
        print(f"  $ {shlex.join(command)}", flush=True)
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not weights.is_file():
        raise AnnotateError(f"training failed (exit {done.returncode}); see {out / 'train.log'}")
    return weights


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotate.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a data set with train and val faces (e.g. ../shared/fer2013)")
    parser.add_argument("--votes", required=True, help="crowd votes for its faces (FER+ layout)")
    parser.add_argument("--val", default=None, help="val faces, if not DATA's own val split")
    parser.add_argument("--strategy", default="likely_label_error", choices=list(STRATEGIES),
                        help="the queue's order (default: likely_label_error)")
    parser.add_argument("--budget", nargs="+", default=["500"],
                        help="faces shown, one or more (e.g. 0 500 1000 all); default 500")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random order, the answers and the training")
    parser.add_argument("--answer", default="majority", choices=ANSWER_MODES,
                        help="how a simulated annotator answers (default: majority)")
    parser.add_argument("--k", type=int, default=3, help="votes drawn per face with --answer k (default 3)")
    parser.add_argument("--out", required=True, help="folder for the store, corrections, models and results")
    parser.add_argument("--init", default=str(DEFAULT_INIT), help="the model every point fine-tunes from")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per point (default 3)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default 3e-4)")
    parser.add_argument("--soft-labels", action="store_true", help="train on the answers' distribution")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per epoch (quick checks)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    parser.add_argument("--no-train", action="store_true", help="run the campaign and export; train nothing")
    parser.add_argument("--all-votes", action="store_true",
                        help="instead of a campaign, import every vote of every face (annotate.import_votes): "
                             "the point where the whole crowd answered everything (budget 'all', strategy 'all-votes')")
    return parser


def _run_points(args: argparse.Namespace, budgets: list[int | None], store: Any, dataset: str,
                shown: list[str], val: FaceTable, ferplus: np.ndarray) -> None:
    from .export import corrections

    answered = corrections(store, dataset)  # read once: each budget keeps a prefix of it
    recipe = FineTune(Path(args.init), args.epochs, args.lr, args.soft_labels, args.max_steps, args.threads)
    out = Path(args.out)
    for budget in budgets:
        name = "all" if budget is None else str(budget)
        # Budget 0 trains on no answer, whatever the strategy: one baseline per seed, shared.
        point = out / (f"baseline-seed{args.seed}" if budget == 0
                       else f"{_campaign_name(args)}-b{name}")
        corrections = None
        changed = 0
        if budget != 0:
            corrections = point.with_suffix(".corrections.csv")
            changed = corrections_prefix(answered, shown, budget, corrections)
        seen = len(shown) if budget is None else min(budget, len(shown))
        strategy = "all-votes" if args.all_votes else args.strategy
        line: dict[str, Any] = {"strategy": strategy, "answer": _answers(args), "seed": args.seed, "budget": name,
                                "faces_seen": seen, "labels_changed": changed, "epochs": args.epochs,
                                "soft_labels": args.soft_labels}
        print(f"budget {name}: {seen:,} faces seen, {changed:,} labels changed", flush=True)
        if not args.no_train:
            weights = _train_point(args, recipe, point, corrections)
            line["val"] = evaluate_weights(weights, val, ferplus)
            print(f"  val accuracy: {line['val']['ferplus']['accuracy']:.2%} against FER+ labels, "
                  f"{line['val']['original']['accuracy']:.2%} against the original labels", flush=True)
        with open(out / "results.jsonl", "a", encoding="utf-8") as results:
            results.write(json.dumps(line) + "\n")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    budgets = parse_budgets(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data).expanduser()
    table = load_faces(args.data)
    train = _split(table, "train")
    val = load_faces(args.val) if args.val else _split(table, "val")
    votes = read_vote_table(Path(args.votes))
    counts = vote_counts(train, votes, data_root)
    ferplus = ferplus_labels_for(val, args.votes, data_root if not args.val else Path(args.val).parent)
    db = out / f"{_campaign_name(args)}.db"
    db.unlink(missing_ok=True)  # each campaign starts from an empty store
    started = time.perf_counter()
    with open_store(str(db)) as store:
        if args.all_votes:
            # Every face, all of its votes: the corrections resolve each face to its plurality.
            import_votes(store, _votes_on(table, votes, data_root), table, data_root=data_root,
                         dataset=table.name)
            shown = [str(s) for s, n in zip(train.frame["sample_id"], counts.sum(axis=1)) if n > 0]
            print(f"imported the votes of {len(shown):,} training faces in {time.perf_counter() - started:.0f} s")
            _run_points(args, [b for b in budgets if b in (0, None)], store, table.name, shown, val, ferplus)
            return 0
        queue = campaign_queue(store, train, table.name, seed=args.seed)
        answers = VoteAnswers(counts, args.answer, k=args.k, seed=args.seed)
        largest = None if None in budgets else max(budgets)
        result = run_campaign(queue, answers, strategy=args.strategy, budget=largest)
        print(f"campaign: {result.faces_seen:,} faces shown, {result.answers:,} answers in "
              f"{time.perf_counter() - started:.0f} s" + (" (the queue ran out)" if result.exhausted else ""))
        _run_points(args, budgets, store, table.name, result.sample_ids, val, ferplus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
