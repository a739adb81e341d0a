"""Out-of-fold probabilities: ``python -m fer_core.train DATA --folds K --out DIR``.

The training faces are split into K folds, stratified by the label they came with
(scikit-learn's ``StratifiedKFold``, shuffled with ``--seed``; the labels as given, not
as corrected, so that new decisions in the store between a killed run and its
``--resume`` do not move faces between folds). Model ``k`` trains on the other K-1
folds, with every option of a single run (corrections, ``--merge``), in
``DIR/fold_k/`` by the single-run machinery: it checkpoints every epoch, keeps its best
epoch on the validation faces (VAL, the same for every fold, never the held-out fold),
and writes its model and card there, with the sample ids it trained on in
``DIR/fold_k/train_ids.txt``. It then predicts every face of fold ``k``, dropped and
low-quality faces included: calibrated probabilities (the fold card's temperature, and
flip TTA where the card switched it on), as the app would see them.

Outputs:

``DIR/oof_probabilities.parquet``
    One row per training face, in the data's order: ``sample_id``, one probability column
    per training class (the seven FER2013 emotions in FER2013 order, or the merged classes
    with ``--merge``), ``emotion`` (the FER2013 id the data gives, before corrections),
    ``fold`` and ``content_hash`` (sha256 of the face's pixels). This is what
    :class:`annotate.queue.Queue` wants: a model that never saw a face, so that its label
    errors are not learnt away.
``DIR/folds.json``
    The run's card: K, seed, the command, per-fold training faces, best epoch and val
    accuracy, and the out-of-fold accuracy against the given labels.
``DIR/fold_plan.json``
    Written first: K, seed and a digest of the fold assignment. ``--resume`` checks it,
    skips the folds that are finished (``fold_k/oof_probabilities.parquet``), continues
    the fold that was running from its checkpoint, and starts the others.

``--fold-index I`` trains fold ``I`` alone, so that the K models can train at the same
time in K processes (on one GPU, or on several machines sharing ``DIR``); every such
process writes or checks the same plan. A final ``--folds K --resume`` without it finds
every fold finished and writes the combined files.

This module holds the pieces; :func:`fer_core.train.train_folds` runs them, training each
fold with :func:`fer_core.train.train_model`. ``--time-budget`` is off for a fold run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fer_core._io import atomic_write, atomic_write_text
from fer_core._validation import FERError
from fer_core.images import pixels_sha256
from fer_core.training.card import code_version, command_line
from fer_core.training.utils import predict_logits, warn

if TYPE_CHECKING:
    from fer_core.training.data import LabelMap, TrainingData

__all__ = [
    "OOF_FILE",
    "SUMMARY_FILE",
    "PLAN_FILE",
    "TRAIN_IDS_FILE",
    "assign_folds",
    "fold_digest",
    "check_fold_args",
    "check_out",
    "make_plan",
    "check_plan",
    "fold_trained",
    "write_train_ids",
    "fold_oof",
    "read_fold_oof",
    "combine",
]

OOF_FILE = "oof_probabilities.parquet"
SUMMARY_FILE = "folds.json"
PLAN_FILE = "fold_plan.json"
TRAIN_IDS_FILE = "train_ids.txt"


def assign_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every face, stratified by ``labels``, shuffled with ``seed``."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise FERError(f"--folds needs at least 2 folds (each model trains on K-1 of them), got {k!r}")
    if len(labels) < k:
        raise FERError(f"--folds {k}: only {len(labels)} training faces, fewer than the folds")
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=int(k), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class rarer than K faces cannot be in every fold; its faces are spread as far as they go.
        warnings.filterwarnings("ignore", message="The least populated class")
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            folds[held_out] = fold
    return folds


def fold_digest(sample_ids: Any, folds: np.ndarray) -> str:
    """sha256 of the (sample_id, fold) pairs: the same data split the same way gives the same digest."""
    h = hashlib.sha256()
    for sid, fold in zip(sample_ids, folds):
        h.update(f"{sid}\t{int(fold)}\n".encode())
    return h.hexdigest()


# Atomic writes with a temporary name unique per call: folds may run in parallel processes.
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_write(path) as tmp:
        frame.to_parquet(tmp, index=False)


def check_fold_args(k: int, fold_index: int | None) -> None:
    """``--folds K`` needs K >= 2, and ``--fold-index`` one of its folds."""
    if k < 2:
        raise FERError(f"--folds needs at least 2 folds (each model trains on K-1 of them), got {k}")
    if fold_index is not None and not 0 <= fold_index < k:
        raise FERError(f"--fold-index must be between 0 and {k - 1} with --folds {k}, got {fold_index}")


def check_out(out: Path, resume: bool, fold_index: int | None = None) -> None:
    """Before loading anything: ``--resume`` needs a fold run in ``out``, a new run needs none there.

    With ``fold_index`` the run may already be there (the other folds' processes started
    it); only that fold's own folder must be new, unless resuming.
    """
    if fold_index is not None:
        fold_dir = out / f"fold_{fold_index}"
        if not resume and ((fold_dir / "checkpoint.json").is_file() or (fold_dir / OOF_FILE).is_file()):
            raise FERError(f"{fold_dir} already holds fold {fold_index}: add --resume to continue it, "
                           "or choose another --out")
        return
    if resume and not (out / PLAN_FILE).is_file():
        raise FERError(f"--resume: no fold run in {out} (no {PLAN_FILE})")
    if not resume and ((out / PLAN_FILE).is_file() or (out / "checkpoint.json").is_file()):
        raise FERError(f"{out} already holds a run: add --resume to continue it, or choose another --out")


def make_plan(args: argparse.Namespace, data: TrainingData, label_map: LabelMap, folds: np.ndarray) -> dict[str, Any]:
    """What identifies a fold run: K, seed, classes, faces and the digest of the fold assignment."""
    sample_ids = data.table.frame["sample_id"].astype(str).to_numpy()
    return {"folds": args.folds, "seed": args.seed, "classes": label_map.names, "faces": len(data),
            "assignment_sha256": fold_digest(sample_ids, folds), "corrections": data.corrections,
            "command": command_line()}


def check_plan(out: Path, plan: dict[str, Any], resume: bool) -> None:
    """Write the plan of a new run; on ``--resume``, check that it is the same run."""
    path = out / PLAN_FILE
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, plan)
        return
    saved = json.loads(path.read_text())
    for key, what in (("folds", "--folds"), ("seed", "--seed"), ("classes", "the classes (--merge)"),
                      ("faces", "the number of training faces"), ("assignment_sha256", "the training faces")):
        if saved.get(key) != plan[key]:
            raise FERError(f"--resume: {what} differ from the fold run in {out} ({saved.get(key)!r} there, "
                           f"{plan[key]!r} now); resume with the same data and options, or choose another --out")
    if saved.get("corrections") != plan["corrections"]:
        warn("the corrections differ from those the run started with (a new corrections file?); "
             "folds finished before keep theirs")


def fold_trained(fold_dir: Path) -> bool:
    """True when the fold's model and card were written completely."""
    card = fold_dir / "model.json"
    if not ((fold_dir / "model.safetensors").is_file() and card.is_file()):
        return False
    try:
        json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def write_train_ids(fold_dir: Path, subset: TrainingData) -> None:
    """The sample ids a fold's model trains on, one a line, in ``fold_dir/train_ids.txt``."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    ids = subset.table.frame["sample_id"].astype(str).to_numpy()[subset.keep].tolist()
    atomic_write_text(fold_dir / TRAIN_IDS_FILE, "".join(f"{sid}\n" for sid in ids))


def _predict_fold(fold_dir: Path, images: np.ndarray, device: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibrated probabilities (float64, rows summing to 1) of the fold's model on ``images``, and its card."""
    from fer_core.calibration import softmax
    from fer_core.weights import load_model

    model, card = load_model(fold_dir / "model.safetensors", device=device)
    logits = predict_logits(model, images, device=device, flip_tta=bool(card["inference"]["flip_tta"]))
    probs = softmax(logits, float(card["calibration"]["temperature"])).astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True), card


def fold_oof(fold_dir: Path, data: TrainingData, rows: np.ndarray, fold: int, names: list[str],
             device: Any) -> pd.DataFrame:
    """The held-out rows' probabilities from fold ``fold``'s model, written to the fold's folder."""
    probs, _ = _predict_fold(fold_dir, data.table.images[rows], device)
    frame = pd.DataFrame({"row": rows, "sample_id": data.table.frame["sample_id"].astype(str).to_numpy()[rows]})
    for i, name in enumerate(names):
        frame[name] = probs[:, i]
    frame["emotion"] = data.table.labels[rows]
    frame["fold"] = fold
    # The pixels' hash lets a reader check that a sample_id names the same face it was computed on.
    frame["content_hash"] = [pixels_sha256(image) for image in data.table.images[rows]]
    _write_parquet(fold_dir / OOF_FILE, frame)
    return frame


def read_fold_oof(fold_dir: Path) -> pd.DataFrame:
    """A finished fold's out-of-fold rows, as :func:`fold_oof` wrote them."""
    return pd.read_parquet(fold_dir / OOF_FILE)


def _fold_summary(fold: int, fold_dir: Path, held_out: int) -> dict[str, Any]:
    card = json.loads((fold_dir / "model.json").read_text())
    metrics = card["val_metrics"]
    chosen = metrics["flip_tta" if card["inference"]["flip_tta"] else "plain"]
    return {"fold": fold, "train_faces": card["training"]["faces_trained_on"], "held_out_faces": held_out,
            "best_epoch": card["training"]["best_epoch"], "val_accuracy": chosen["val_accuracy"],
            "val_macro_f1": chosen["val_macro_f1"], "flip_tta": card["inference"]["flip_tta"],
            "temperature": card["calibration"]["temperature"], "wall_seconds": card["training"]["wall_seconds"]}


def combine(out: Path, parts: list[pd.DataFrame], data: TrainingData, label_map: LabelMap, folds: np.ndarray,
            args: argparse.Namespace, plan: dict[str, Any]) -> None:
    """Write the run's out-of-fold file and its summary from every fold's rows."""
    k = args.folds
    oof = pd.concat(parts, ignore_index=True).sort_values("row")
    if not np.array_equal(oof["row"].to_numpy(), np.arange(len(data))):
        raise FERError(f"the folds' out-of-fold files in {out} do not cover every training face once; "
                       "delete the fold folders and run again")
    oof = oof.drop(columns="row").reset_index(drop=True)
    _write_parquet(out / OOF_FILE, oof)

    given = label_map(oof["emotion"].to_numpy())
    per_fold = [_fold_summary(f, out / f"fold_{f}", int((folds == f).sum())) for f in range(k)]
    accuracies = np.array([f["val_accuracy"] for f in per_fold])
    summary = {
        "folds": k, "seed": args.seed, "classes": label_map.names, "command": plan["command"],
        "data": args.data, "val": args.val or f"{args.data} (val split)", "architecture": args.model,
        "epochs": args.epochs, "training_faces": len(data), "stratified_by": "label as given (before corrections)",
        "corrections": data.corrections, "soft_labels": data.targets is not None,
        "original_share": data.original_share,
        "per_fold": per_fold,
        "val_accuracy_mean": float(accuracies.mean()), "val_accuracy_sd": float(accuracies.std(ddof=1)),
        "oof_accuracy_vs_given_label": float((oof[label_map.names].to_numpy().argmax(1) == given).mean()),
        "probabilities": {"file": OOF_FILE, "calibrated": "each fold's temperature, fitted on val",
                          "columns": ["sample_id", *label_map.names, "emotion", "fold", "content_hash"]},
        "code_version": code_version(),
    }
    _write_json(out / SUMMARY_FILE, summary)
    print(f"{k} folds: val accuracy {summary['val_accuracy_mean']:.4f} ± {summary['val_accuracy_sd']:.4f}, "
          f"out-of-fold accuracy {summary['oof_accuracy_vs_given_label']:.4f} against the given labels; "
          f"wrote {out / OOF_FILE} ({len(oof)} faces)", flush=True)
