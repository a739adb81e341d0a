"""Evaluate a model on labelled faces: ``python -m fer_core.evaluate DATA [--weights FILE] [--detect] [--json OUT]``.

DATA is any form :mod:`fer_core.datasets` reads (a folder of class folders is
enough; class-name synonyms are mapped, unknown classes skipped with a warning).
Prints accuracy, macro-F1, per-class recall and precision, the confusion matrix,
accuracy per quality band and the quality-weighted accuracy. Metrics come from
scikit-learn.

``--labels FILE`` measures against another label set instead of the data's own labels: a
label file (``sample_id,label``, see :mod:`fer_core.label_sets`; ``python -m annotate.ferplus``
writes the FER+ majority labels in it). Faces without a label in the file are left out; the
report and the JSON's ``label_set`` say which labels were used and how many faces were left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core._cli import cli_main
from fer_core._validation import FERError
from fer_core.constants import TTA_MODES

__all__ = ["ORIGINAL_LABELS", "evaluate_table", "compute_metrics", "get_args_parser", "main"]

#: The ``label_set`` name of the data's own labels.
ORIGINAL_LABELS = "original"


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], *,
                    quality: np.ndarray | None = None, faces_found: float | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall/precision and the confusion matrix.

    ``y_pred`` may hold -1 for "no face found": it counts as wrong and appears in no column.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    classes = list(range(len(labels)))
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    result: dict[str, Any] = {
        "n": int(len(y_true)),
        "labels": list(labels),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "per_class_recall": dict(zip(labels, map(float, recall_score(y_true, y_pred, labels=classes, average=None, zero_division=0)))),
        "per_class_precision": dict(zip(labels, map(float, precision_score(y_true, y_pred, labels=classes, average=None, zero_division=0)))),
        "per_class_support": dict(zip(labels, map(int, np.bincount(y_true, minlength=len(labels))))),
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "faces_found": faces_found,
    }
    if quality is not None and len(y_true):
        correct = (y_true == y_pred).astype(np.float64)
        quality = np.asarray(quality, dtype=np.float64)
        edges = np.quantile(quality, [0, 0.25, 0.5, 0.75, 1.0])
        band = np.clip(np.searchsorted(edges, quality, side="right") - 1, 0, 3)
        result["quality_bands"] = [
            {"band": f"Q{b + 1}", "quality_from": float(edges[b]), "quality_to": float(edges[b + 1]),
             "n": int((band == b).sum()), "accuracy": float(correct[band == b].mean()) if (band == b).any() else None}
            for b in range(4)
        ]
        weight = quality.sum()
        result["quality_weighted_accuracy"] = float((correct * quality).sum() / weight) if weight > 0 else None
    return result


def _detect_predictions(predictor, table, *, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Per face: run detection on the original image (the source file when it exists, else the stored face).

    Returns the class index of the largest face (-1 where none was found) and the 48x48 inputs used.
    """
    from fer_core._validation import ImageError

    predictions = np.full(len(table), -1, dtype=np.int64)
    inputs = table.images.copy()
    for i, source in enumerate(table.frame["source"].astype(str)):
        path = Path(source)
        image = path if path.is_file() else np.stack([table.images[i]] * 3, axis=-1)
        try:
            faces = predictor.predict_image(image, backend=backend, whole_image=False)
        except ImageError:
            faces = []
        if faces:
            predictions[i] = predictor.labels.index(faces[0].label)
            inputs[i] = faces[0].face
    return predictions, inputs


def evaluate_table(predictor, table, *, detect: bool = False, backend: str = "yunet") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of ``predictor`` on a :class:`~fer_core.datasets.FaceTable`, and the per-face arrays."""
    from fer_core.quality import score_faces

    id_to_class = np.asarray(predictor.card.get("fer2013_id_to_class", range(7)))
    y_true = id_to_class[table.labels]
    if detect:
        y_pred, inputs = _detect_predictions(predictor, table, backend=backend)
        found = float((y_pred >= 0).mean()) if len(y_pred) else 0.0
    else:
        inputs, found = table.images, None
    logits = predictor.logits(inputs)
    probs = predictor.predict_faces(inputs)
    if not detect:
        y_pred = probs.argmax(1)
    quality = (table.frame["quality_score"].to_numpy(dtype=np.float64) if "quality_score" in table.frame
               else score_faces(table.images)["quality_score"].to_numpy())
    metrics = compute_metrics(y_true, y_pred, predictor.labels, quality=quality, faces_found=found)
    metrics["model"] = predictor.model_name
    return metrics, {"logits": logits, "probs": probs, "inputs": inputs, "y_true": y_true, "y_pred": y_pred}


def format_report(metrics: dict[str, Any]) -> str:
    labels = metrics["labels"]
    lines = [f"faces: {metrics['n']}   accuracy: {metrics['accuracy']:.4f}   macro-F1: {metrics['macro_f1']:.4f}"]
    label_set = metrics.get("label_set")
    if label_set and label_set["name"] != ORIGINAL_LABELS:
        lines.insert(0, f"labels: {label_set['name']} ({label_set['file']}): {label_set['faces']} faces labelled, "
                        f"{label_set['left_out']} left out without a label")
    if metrics.get("faces_found") is not None:
        lines[0] += f"   faces found: {metrics['faces_found']:.4f}"
    per_class = pd.DataFrame({"recall": metrics["per_class_recall"], "precision": metrics["per_class_precision"],
                              "support": metrics["per_class_support"]})
    lines += ["", per_class.to_string(float_format=lambda v: f"{v:.4f}"), "", "confusion (rows: true, columns: predicted)"]
    lines.append(pd.DataFrame(metrics["confusion"], index=labels, columns=labels).to_string())
    if metrics.get("quality_bands"):
        lines += ["", "accuracy per quality band (quartiles of quality_score)"]
        for band in metrics["quality_bands"]:
            acc = "-" if band["accuracy"] is None else f"{band['accuracy']:.4f}"
            lines.append(f"  {band['band']} [{band['quality_from']:.3f}, {band['quality_to']:.3f}]  n={band['n']:5d}  accuracy {acc}")
        lines.append(f"quality-weighted accuracy: {metrics['quality_weighted_accuracy']:.4f}")
    return "\n".join(lines)


def save_plots(metrics: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    folder.mkdir(parents=True, exist_ok=True)
    confusion = np.asarray(metrics["confusion"], dtype=np.float64)
    normalised = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ConfusionMatrixDisplay(normalised, display_labels=metrics["labels"]).plot(ax=ax, values_format=".2f", cmap="Blues", colorbar=False)
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} (rows sum to 1)")
    fig.tight_layout()
    path = folder / "confusion.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def export_features(path: Path, predictor, table, arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """Per face: penultimate features, logits, probabilities (``.npz``) and a metadata CSV beside it."""
    if path.suffix != ".npz":
        raise FERError(f"--export needs a .npz file name, got {path.name}")
    np.savez_compressed(path, features=predictor.features(arrays["inputs"]), logits=arrays["logits"],
                        probs=arrays["probs"], labels=np.array(predictor.labels))
    meta = pd.DataFrame({"sample_id": table.frame["sample_id"], "dataset": table.name,
                         "emotion": table.frame["emotion_name"].astype(str), "split": table.frame["split"]})
    csv_path = path.with_suffix(".csv")
    meta.to_csv(csv_path, index=False)
    return path, csv_path


def get_args_parser() -> argparse.ArgumentParser:
    from fer_core.predict import RUNTIMES

    parser = argparse.ArgumentParser(prog="python -m fer_core.evaluate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", help="labelled faces: class folders, fer2013.csv, Parquet or hub id")
    parser.add_argument("--weights", default=None, help="a .safetensors file with its .json card (default: the bundled model)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a bundled model by name (its card's name, else its file's stem), instead of --weights")
    parser.add_argument("--split", default=None, help="evaluate one split only (train, val, test)")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="measure against this label file (sample_id,label CSV or Parquet, e.g. the FER+ majority "
                             "labels from `python -m annotate.ferplus`) instead of the data's own labels; faces "
                             "without a label in it are left out")
    parser.add_argument("--detect", action="store_true", help="detect the face in each image first (full photos); no face counts as wrong")
    parser.add_argument("--backend", default="yunet", help="face detector for --detect")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--plots", default=None, help="write confusion.png into this folder")
    parser.add_argument("--export", default=None, help="write features, logits and probabilities to FILE.npz (+ FILE.csv)")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="auto: as the model card says; onnx: float32; onnx-int8: int8 (ONNX Runtime)")
    parser.add_argument("--tta", default="auto", choices=["auto", *TTA_MODES],
                        help="test-time augmentation (the mirror): as the model card says, on with the card's "
                             "gate, off, or on for every face")
    parser.add_argument("--cache-dir", default=None, help="data set cache folder")
    return parser


def _label_set(table, labels_file: str | None) -> tuple[Any, dict[str, Any]]:
    """The faces to measure, carrying the labels to measure against, and what those labels are."""
    if labels_file is None:
        return table, {"name": ORIGINAL_LABELS, "file": None, "sha256": None, "faces": len(table), "left_out": 0}
    from fer_core.label_sets import load_label_set, relabel_table

    found = load_label_set(labels_file, table)
    if not found.labelled.any():
        raise FERError(f"--labels: {found.file} gives none of the {len(table):,} faces a label")
    return relabel_table(table, found.labels), found.summary()


@cli_main
def main(args: argparse.Namespace) -> int:
    from fer_core.catalog import weights_for
    from fer_core.datasets import load_faces
    from fer_core.predict import Predictor

    weights_for(args.weights, args.model)  # a bad name or both flags: said before the data is read
    table = load_faces(args.data, cache_dir=args.cache_dir)
    if args.split:
        table = table.split(args.split)
        if len(table) == 0:
            raise FERError(f"{args.data} has no faces in split {args.split!r}")
    table, label_set = _label_set(table, args.labels)
    tta, mirror_gap = (None, None) if args.tta == "auto" else TTA_MODES[args.tta]
    predictor = Predictor(weights_for(args.weights, args.model), runtime=args.runtime, tta=tta,
                          mirror_gap=mirror_gap)
    metrics, arrays = evaluate_table(predictor, table, detect=args.detect, backend=args.backend)
    metrics["label_set"] = label_set
    print(format_report(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    if args.plots:
        for path in save_plots(metrics, Path(args.plots)):
            print(f"wrote {path}")
    if args.export:
        for path in export_features(Path(args.export), predictor, table, arrays):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
