"""What a run trains on: the training and val faces, the class map of ``--merge``, corrections and soft labels.

Corrections (``--corrections FILE``, see :mod:`fer_core.training.corrections`) apply to the
training faces only; val keeps its labels, so val accuracy stays comparable between runs.
``--soft-labels`` trains on the distribution of the emotion votes instead (faces without
emotion votes keep their one-hot label); ``--original-share W`` gives a share W of each target
back to the face's original label.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_core._validation import FERError
from fer_core.labels import EMOTIONS, normalise
from fer_core.training.corrections import read_corrections

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = ["LabelMap", "TrainingData", "load_training_data", "prepare_training_data", "soft_targets"]


class LabelMap:
    """FER2013 ids -> training class indices, with ``--merge disgust=angry`` folding classes together."""

    def __init__(self, merges: list[str] | None = None) -> None:
        target = {e: e for e in EMOTIONS}
        for spec in merges or []:
            source, sep, dest = spec.partition("=")
            src, dst = normalise(source), normalise(dest)
            if not sep or src is None or dst is None or src == dst:
                raise FERError("--merge expects SOURCE=TARGET with two different emotions, e.g. disgust=angry; "
                               f"got {spec!r}")
            target[src] = dst
        self.names: list[str] = [e for e in EMOTIONS if target[e] == e]
        self.index = np.array([self.names.index(target[e]) for e in EMOTIONS], dtype=np.int64)

    def __call__(self, fer_ids: np.ndarray) -> np.ndarray:
        return self.index[np.asarray(fer_ids, dtype=np.int64)]


@dataclass(frozen=True)
class TrainingData:
    """The training faces and what a run trains on, row-aligned with ``table`` (all faces as loaded)."""

    table: FaceTable  #: the training faces
    labels: np.ndarray  #: (N,) int64 class index (after corrections and --merge)
    targets: np.ndarray | None  #: (N, C) float32 probability targets with --soft-labels, else None
    keep: np.ndarray  #: (N,) bool: the faces trained on (not dropped as not_a_face)
    corrections: dict[str, Any] | None  #: :attr:`Corrections.summary`, or None without --corrections
    original_share: float = 0.0  #: share of each soft target given to the face's original label

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> TrainingData:
        """The same data restricted to ``rows`` (boolean mask or positions)."""
        index = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return replace(self, table=self.table.select(index), labels=self.labels[index],
                       targets=None if self.targets is None else self.targets[index], keep=self.keep[index])


def _load(path: str, *, cache_dir: str | None) -> FaceTable:
    from fer_core.datasets import load_faces

    return load_faces(path, cache_dir=cache_dir)


def load_training_data(args: argparse.Namespace) -> tuple[FaceTable, FaceTable]:
    """Training and validation tables: DATA's train split (or all of it), VAL's val split (or all of it)."""
    data = _load(args.data, cache_dir=args.cache_dir)
    splits = set(data.frame["split"])
    train = data.split("train") if "train" in splits else data.select(data.frame["split"].to_numpy() != "val")
    if args.val:
        val_data = _load(args.val, cache_dir=args.cache_dir)
        val = val_data.split("val") if "val" in set(val_data.frame["split"]) else val_data
    elif "val" in splits:
        val = data.split("val")
    else:
        raise FERError(f"{args.data} has no 'val' split: give validation faces with --val")
    if len(train) == 0:
        raise FERError(f"{args.data} holds no training faces")
    return train, val


def soft_targets(votes: np.ndarray, labels: np.ndarray, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """Probability targets over the training classes: normalised emotion votes, one-hot ``labels`` without votes.

    Returns the targets (N, C) float32 and which rows got a vote distribution.
    """
    k = len(label_map.names)
    merged = np.zeros((len(votes), k), dtype=np.float64)
    np.add.at(merged.T, label_map.index, votes.T.astype(np.float64))  # fold merged emotions' votes together
    total = merged.sum(axis=1)
    voted = total > 0
    targets = np.eye(k, dtype=np.float64)[labels]
    targets[voted] = merged[voted] / total[voted, None]
    return targets.astype(np.float32), voted


def prepare_training_data(args: argparse.Namespace, train: FaceTable, label_map: LabelMap, *,
                          verbose: bool = True) -> TrainingData:
    """Labels or targets and kept rows of the training faces, after ``--corrections`` (and ``--soft-labels``)."""
    if args.soft_labels and not args.corrections:
        raise FERError("--soft-labels trains on the annotators' votes: give the corrections file with --corrections")
    share = getattr(args, "original_share", 0.0)
    if not 0.0 <= share <= 1.0:
        raise FERError(f"--original-share is a share of the target from 0 to 1; got {share}")
    if share and not args.soft_labels:
        raise FERError("--original-share mixes the original labels into the vote distributions: add --soft-labels")
    if not args.corrections:
        return TrainingData(train, label_map(train.labels), None, np.ones(len(train), dtype=bool), None)
    found = read_corrections(args.corrections, args.corrections_dataset or train.name, train,
                             need_votes=args.soft_labels)
    labels, keep, summary, targets = label_map(found.labels), ~found.drop, found.summary, None
    if args.soft_labels:
        targets, voted = soft_targets(found.votes, labels, label_map)
        if share:
            original = np.eye(targets.shape[1], dtype=np.float32)[label_map(train.labels)]
            targets = ((1.0 - share) * targets + share * original).astype(np.float32)
        summary["soft_labelled"] = int((voted & keep).sum())
    if not keep.any():
        raise FERError("no training face is left after the corrections")
    if verbose:
        print(f"corrections from {summary['file']} (data set {summary['dataset']!r}): "
              f"{summary['relabelled']} relabelled, {summary['confirmed']} confirmed, {summary['dropped']} dropped "
              f"as not a face, {summary['kept_original']} kept as given (unsure or tied)"
              + (f", {summary['soft_labelled']} soft-labelled" if args.soft_labels else ""), flush=True)
    return TrainingData(train, labels.astype(np.int64), targets, keep, summary, share)
