"""The val faces' label sets: their own labels, and a second set (``--val-labels FILE``) that chooses the model.

A model that learns from votes (``--corrections``, ``--soft-labels``) is trained for the
labels the votes give, not for the labels the faces came with: with ``--val-labels`` (the
val faces' labels in that sense, e.g. the FER+ majority labels ``python -m annotate.ferplus``
writes) a run chooses its best epoch, the mirror gate and the temperature on that set, and
reports val against both. Each epoch's log keeps ``val_accuracy``, ``val_macro_f1`` and
``val_recall`` against the faces' own labels and adds ``val2_accuracy``, ``val2_macro_f1``
and ``val2_recall`` against the second set (faces without a label there left out).

Notation: N val faces, C training classes; labels are class indices, -1 for "no label".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_core._validation import FERError
from fer_core.evaluate import compute_metrics
from fer_core.label_sets import load_label_set

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable
    from fer_core.training.data import LabelMap, TrainingData

__all__ = ["ORIGINAL", "SECOND_PREFIX", "ValLabels", "load_val_labels", "read_val_labels", "check_selection", "trained_on"]

#: The name of the val faces' own labels in reports and cards.
ORIGINAL = "original"
#: Prefix of the log's keys measured against the second label set.
SECOND_PREFIX = "val2_"


@dataclass(frozen=True)
class ValLabels:
    """The val faces' labels as training class indices: their own, and the optional second set."""

    original: np.ndarray  #: (N,) class index of each face's own label
    second: np.ndarray | None = None  #: (N,) class index in the second set, -1 where it has none
    name: str = ORIGINAL  #: the second set's name (ORIGINAL without one)
    summary: dict[str, Any] | None = None  #: the second set's file, sha256, faces and faces left out

    @property
    def selected_on(self) -> dict[str, Any]:
        """What a run's best epoch is chosen on, kept in its checkpoint: the set's name and file sha256."""
        return {"labels": self.name, "sha256": None if self.summary is None else self.summary["sha256"]}

    def selection(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logits (M, C) and labels (M,) that choose: every face's own, or the second set's labelled faces."""
        if self.second is None:
            return logits, self.original
        has = self.second >= 0
        return logits[has], self.second[has]

    def epoch_metrics(self, logits: np.ndarray, names: list[str]) -> dict[str, Any]:
        """``val2_accuracy``, ``val2_macro_f1`` and ``val2_recall`` of ``logits`` (N, C); {} without a second set."""
        if self.second is None:
            return {}
        chosen, labels = self.selection(logits)
        metrics = compute_metrics(labels, chosen.argmax(1), names)
        return {f"{SECOND_PREFIX}accuracy": metrics["accuracy"], f"{SECOND_PREFIX}macro_f1": metrics["macro_f1"],
                f"{SECOND_PREFIX}recall": list(metrics["per_class_recall"].values())}

    def by_labels(self, logits: np.ndarray, names: list[str]) -> dict[str, dict[str, Any]]:
        """Accuracy, macro-F1 and per-class recall of ``logits`` (N, C) against each set, by the set's name."""
        sets = {ORIGINAL: (logits, self.original, {})}
        if self.second is not None:
            sets[self.name] = (*self.selection(logits), self.summary)
        report = {}
        for name, (chosen, labels, about) in sets.items():
            metrics = compute_metrics(labels, chosen.argmax(1), names)
            report[name] = {"faces": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                            "per_class_recall": metrics["per_class_recall"],
                            **{k: v for k, v in (about or {}).items() if k != "name"}}
        return report


def load_val_labels(args: argparse.Namespace, val: FaceTable, label_map: LabelMap) -> ValLabels:
    """The val faces' own labels and, with ``args.val_labels``, the label file's (through ``--merge``)."""
    return read_val_labels(val, getattr(args, "val_labels", None), getattr(args, "val_labels_name", None),
                           label_map)


def read_val_labels(val: FaceTable, file: str | None, name: str | None,
                    to_class: Callable[[np.ndarray], np.ndarray]) -> ValLabels:
    """The val faces' own labels and, with ``file``, that label set's, both as class indices (``to_class``
    maps FER2013 ids to the model's classes); faces the file leaves unlabelled are -1."""
    original = to_class(val.labels)
    if not file:
        return ValLabels(original)
    found = load_label_set(file, val, name=name)
    if found.name == ORIGINAL:
        raise FERError(f"--val-labels: {ORIGINAL!r} names the val faces' own labels; "
                       "give the file's set another name with --val-labels-name")
    if not found.labelled.any():
        raise FERError(f"--val-labels: {found.file} gives none of the {len(val):,} val faces a label")
    second = np.where(found.labelled, to_class(np.maximum(found.labels, 0)), -1)
    return ValLabels(original, second, found.name, found.summary())


def check_selection(state: dict[str, Any], val_labels: ValLabels, resume: bool) -> None:
    """Record in ``state`` what chooses the best epoch; a resumed run must go on choosing on the same labels."""
    wanted = val_labels.selected_on
    if not resume:
        state["selected_on"] = wanted
        return
    recorded = state.get("selected_on", {"labels": ORIGINAL, "sha256": None})
    if recorded.get("sha256") != wanted["sha256"]:
        was = ("the val faces' own labels" if recorded.get("sha256") is None
               else f"the label set {recorded.get('labels')!r} (sha256 {recorded['sha256'][:12]}...)")
        raise FERError(f"--resume: this run chose its best epoch so far on {was}; resume it with the same "
                       "--val-labels file (or none, if it had none)")


def trained_on(data: TrainingData) -> str:
    """Which labels trained the model: ``original labels``, ``corrections (majority)``,
    ``corrections (vote distributions)`` or, with ``--original-share``, ``corrections (vote
    distributions, 30% original labels)``."""
    if data.corrections is None:
        return "original labels"
    if data.targets is None:
        return "corrections (majority)"
    if data.original_share:
        return f"corrections (vote distributions, {data.original_share:.0%} original labels)"
    return "corrections (vote distributions)"
