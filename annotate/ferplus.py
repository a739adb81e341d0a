"""FER+ majority labels: the label the most annotators gave a face, where there is one.

A face's FER+ label is its most voted column of the FER+ table (``neutral`` .. ``fear``,
``contempt``, ``unknown``, ``NF``). Faces whose top vote is tied, or is contempt, unknown or
NF, have no FER+ label (they are left out of accuracies against FER+, as Barsoum et al. do).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core.datasets import FaceTable
from fer_core.labels import EMOTIONS

from .import_votes import FERPLUS_VOTE_COLUMNS, read_vote_table, rows_of_faces

__all__ = ["FERPLUS_COLUMNS", "majority_labels", "ferplus_labels_for"]

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


def ferplus_labels_for(table: FaceTable, votes_path: str | os.PathLike[str],
                       data_root: str | os.PathLike[str]) -> np.ndarray:
    """FER+ label of each face of ``table`` (-1: none, or the face is not in the vote table)."""
    raw = pd.read_csv(votes_path)
    checked = read_vote_table(votes_path)  # the same checks as an import: bad rows raise by line
    labels = np.full(len(table), -1, dtype=np.int64)
    rows = rows_of_faces(checked, table, Path(data_root), missing_ok=True)
    found = rows >= 0
    labels[rows[found]] = majority_labels(raw)[found]
    return labels
