"""FER+ majority labels: the label the most annotators gave a face, where there is one.

A face's FER+ label is its most voted column of the FER+ table (``neutral`` .. ``fear``,
``contempt``, ``unknown``, ``NF``). Faces whose top vote is tied, or is contempt, unknown or
NF, have no FER+ label (they are left out of accuracies against FER+, as Barsoum et al. do).

``python -m annotate.ferplus VOTES --data DATA --out labels.csv`` writes the FER+ label of each
face of DATA that the vote table covers as a label file (``sample_id,label``, an empty label
where there is no majority; see :mod:`fer_core.label_sets`), which ``python -m fer_core.train
--val-labels`` and ``python -m fer_core.evaluate --labels`` read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core._cli import cli_main
from fer_core.datasets import FaceTable, load_faces
from fer_core.label_sets import write_label_file
from fer_core.labels import EMOTIONS

from .errors import AnnotateError
from .import_votes import FERPLUS_VOTE_COLUMNS, read_vote_table, rows_of_faces

__all__ = ["FERPLUS_COLUMNS", "majority_labels", "ferplus_labels_for", "ferplus_label_rows", "get_args_parser",
           "main"]

#: The FER+ table's vote columns, in its order.
FERPLUS_COLUMNS: tuple[str, ...] = tuple(FERPLUS_VOTE_COLUMNS)


def majority_labels(votes: pd.DataFrame) -> np.ndarray:
    """FER2013 id (0-6) of each row's single most voted emotion; -1 for a tie or a top vote outside the seven.

    ``votes`` holds the FER+ count columns (:data:`FERPLUS_COLUMNS`), as integers.
    """
    counts = votes[list(FERPLUS_COLUMNS)].to_numpy(dtype=np.int64)
    top = counts.max(axis=1)
    single = (counts == top[:, None]).sum(axis=1) == 1
    winner = counts.argmax(axis=1)
    names = [FERPLUS_VOTE_COLUMNS[c] for c in FERPLUS_COLUMNS]
    ids = np.array([EMOTIONS.index(n) if n in EMOTIONS and c not in ("contempt", "unknown")
                    else -1 for c, n in zip(FERPLUS_COLUMNS, names)], dtype=np.int64)
    return np.where(single & (top > 0), ids[winner], -1)


def ferplus_label_rows(table: FaceTable, votes_path: str | os.PathLike[str],
                       data_root: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """FER+ label of each face of ``table`` (-1: none) and which faces the vote table covers, both (N,).

    ``votes_path`` is a table in the FER+ layout (CSV, or Parquet), its ``path`` column relative
    to ``data_root``. Bad rows raise :class:`AnnotateError` by line, as an import does.
    """
    checked = read_vote_table(votes_path)  # the same checks as an import: bad rows raise by line
    if checked.layout != "ferplus":
        raise AnnotateError("FER+ majority labels need the FER+ layout (a 'path' column and the counts "
                            f"{', '.join(FERPLUS_COLUMNS)}): contempt, unknown and NF are counted apart there")
    path = Path(votes_path).expanduser()
    raw = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    counts = raw[list(FERPLUS_COLUMNS)].apply(pd.to_numeric)  # checked above: whole numbers
    labels = np.full(len(table), -1, dtype=np.int64)
    covered = np.zeros(len(table), dtype=bool)
    rows = rows_of_faces(checked, table, Path(data_root), missing_ok=True)
    found = rows >= 0
    labels[rows[found]] = majority_labels(counts)[found]
    covered[rows[found]] = True
    return labels, covered


def ferplus_labels_for(table: FaceTable, votes_path: str | os.PathLike[str],
                       data_root: str | os.PathLike[str]) -> np.ndarray:
    """FER+ label of each face of ``table`` (-1: none, or the face is not in the vote table)."""
    return ferplus_label_rows(table, votes_path, data_root)[0]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotate.ferplus",
        description="Write the FER+ majority label of each face of a data set as a label file (sample_id,label; "
                    "an empty label where the top vote is tied or is contempt, unknown or not a face), for "
                    "`python -m fer_core.train --val-labels` and `python -m fer_core.evaluate --labels`.",
    )
    parser.add_argument("votes", help="the FER+ vote table (.csv or .parquet; ../shared/ferplus/fer2013_votes.csv)")
    parser.add_argument("--data", required=True, help="the faces to label (any form the app reads)")
    parser.add_argument("--out", required=True, help="the label file to write (.csv, or .parquet)")
    parser.add_argument("--votes-root", default=None, metavar="DIR",
                        help="the folder the vote table's paths are relative to (default: DATA, or the folder "
                             "of a DATA file); e.g. ../shared/fer2013 with --data ../shared/fer2013/val")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="follow links and image paths that leave the data set's folder")
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    table = load_faces(args.data, allow_outside_root=args.allow_outside_root)
    data = Path(args.data).expanduser()
    root = Path(args.votes_root).expanduser() if args.votes_root else data if data.is_dir() else data.parent
    labels, covered = ferplus_label_rows(table, args.votes, root)
    if not covered.any():
        raise AnnotateError(f"no face of {args.data} is in the vote table (its paths are read relative to {root}; "
                            "name the folder they are relative to with --votes-root)")
    out = write_label_file(args.out, [str(s) for s in table.frame["sample_id"][covered]], labels[covered])
    with_label = int((labels[covered] >= 0).sum())
    print(f"wrote {out}: {int(covered.sum()):,} faces, {with_label:,} with a FER+ majority label, "
          f"{int(covered.sum()) - with_label:,} without (a tie, or contempt, unknown or not a face on top)"
          + (f"; {int((~covered).sum()):,} faces of the data have no votes and no row" if not covered.all() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
