"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python -m tools.bundle_model runs/reg2h --val ../shared/fer2013/val
    python -m tools.bundle_model runs/votes --val ../shared/fer2013/val --val-labels ferplus_val.csv \
        --val-labels-name ferplus --name fer_votes --out fer_core/assets/fer_votes.safetensors

The weights are stored in half precision (inference runs in float32 or int8 from them;
half the file). Chooses the inference runtime on the whole val split: ONNX Runtime int8 when
it keeps the fp32 accuracy to within :data:`INT8_TOLERANCE`, else fp32 (the figures of both go
into the card). Where training kept flip test-time augmentation, chooses the mirror's gate on
val too: the smallest gap between the two highest logits of the plain pass below which a face
gets the mirror, keeping the accuracy of mirroring every face to within
:data:`SECOND_PASS_TOLERANCE` (most faces then need one pass); ``--tta off`` turns the mirror
off. The temperature is refitted to the logits the bundled model then serves. Then adds to the
model card the accuracy on a fixed, named sample of val faces (the first files by name of each
emotion folder), which tests/test_bundled_model.py recomputes from the bundled files, and last
writes the ONNX file the app serves, named in the card (``python -m tools.export_onnx``).

``--val-labels FILE`` (a ``sample_id,label`` file of the val faces, e.g. their FER+ majority
labels; see :mod:`fer_core.label_sets`) chooses the runtime, the mirror's gate and the
temperature on those labels instead of the faces' own, as ``python -m fer_core.train
--val-labels`` chose the run's best epoch: give the same file. The card keeps the run's
``training.val_by_labels`` and adds the bundled model's own figures on val as served against
both label sets (``checks.val_by_labels``). ``--name`` sets the card's ``name``, which the app
and ``--model`` choose the model by (see :mod:`fer_core.catalog`); ``--out`` bundles it beside
the default model instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from fer_core._validation import FERError
from fer_core.catalog import check_model_name
from fer_core.datasets import load_faces
from fer_core.predict import Predictor
from fer_core.training.val_labels import ORIGINAL, ValLabels, read_val_labels
from fer_core.weights import DEFAULT_WEIGHTS, card_path, load_model, read_card, save_model
from tools.export_onnx import CALIBRATION_FACES

#: Faces per emotion in the fixed val sample.
CHECK_PER_CLASS = 40
#: Largest val accuracy an int8 model may lose against fp32 and still be chosen.
INT8_TOLERANCE = 0.003
#: Largest val accuracy the gated second pass may lose against giving it to every face.
SECOND_PASS_TOLERANCE = 0.001
#: Gaps between the two highest logits tried for the gate, smallest first.
SECOND_PASS_GAPS = np.round(np.arange(0.05, 3.001, 0.05), 2)


def _class_labels(predictor: Predictor, val, labels: np.ndarray | None) -> np.ndarray:
    """``labels`` (N,) class indices (-1: no label), or the val faces' own labels in the model's classes."""
    if labels is not None:
        return np.asarray(labels)
    return np.asarray(predictor.card["fer2013_id_to_class"])[val.labels]


def val_accuracy(weights: Path, val, runtime: str, tta: bool, labels: np.ndarray | None = None) -> float:
    """Accuracy with the second pass (the mirror) on every face: the runtime's best.

    ``labels``: (N,) class indices to measure against, -1 for a face left out (default: the faces' own).
    """
    predictor = Predictor(weights, runtime=runtime, tta=tta, mirror_gap=math.inf)
    labels = _class_labels(predictor, val, labels)
    has = labels >= 0
    return float((predictor.predict_faces(val.images[has]).argmax(1) == labels[has]).mean())


def check_sample(val_folder: str | Path, per_class: int = CHECK_PER_CLASS):
    """The first ``per_class`` faces (by sample_id) of each emotion of a val folder."""
    table = load_faces(val_folder, progress=False)
    order = np.argsort(table.frame["sample_id"].to_numpy())
    picked = []
    for label in range(7):
        rows = [i for i in order if table.labels[i] == label][:per_class]
        picked.extend(rows)
    return table.select(np.array(picked))


def choose_second_pass_gap(weights: Path, val, runtime: str, labels: np.ndarray | None = None) -> dict:
    """The smallest gap of :data:`SECOND_PASS_GAPS` whose gated second pass (the mirror) keeps the val
    accuracy of giving it to every face to within :data:`SECOND_PASS_TOLERANCE`, with the share of
    val faces that get it. ``labels``: (N,) class indices that choose, -1 for a face left out
    (default: the faces' own)."""
    from fer_core.predict import top_two_gap

    plain = Predictor(weights, runtime=runtime, tta=False)
    labels = _class_labels(plain, val, labels)
    has = labels >= 0
    labels, images = labels[has], val.images[has]
    logits = plain.logits(images)
    both = Predictor(weights, runtime=runtime, tta=True, mirror_gap=math.inf).logits(images)
    every_face = float((both.argmax(1) == labels).mean())
    found = smallest_gate(top_two_gap(logits), np.ones(len(labels), bool), both, logits, labels, every_face)
    if found is None:
        return {"second_pass_gap": None}  # no gap kept the accuracy: every face gets the second pass
    gap, second, accuracy = found
    return {"second_pass_gap": gap, "second_pass_gap_val": {
        "accuracy": accuracy, "accuracy_every_face_second_pass": every_face,
        "accuracy_first_pass_only": float((logits.argmax(1) == labels).mean()),
        "second_pass_share": float(second.mean()), "tolerance": SECOND_PASS_TOLERANCE}}


def smallest_gate(gaps: np.ndarray, eligible: np.ndarray, looked_again: np.ndarray, first: np.ndarray,
                  labels: np.ndarray, target: float) -> tuple[float, np.ndarray, float] | None:
    """The smallest gap of :data:`SECOND_PASS_GAPS` such that the ``eligible`` faces whose ``gaps`` lie
    below it taking their ``looked_again`` logits (the others keeping their ``first`` ones) keeps the
    accuracy ``target`` to within :data:`SECOND_PASS_TOLERANCE`: that gap, those faces and the
    accuracy; None where no gap does."""
    for gap in SECOND_PASS_GAPS:
        chosen = eligible & (gaps < gap)
        accuracy = float((np.where(chosen[:, None], looked_again, first).argmax(1) == labels).mean())
        if accuracy >= target - SECOND_PASS_TOLERANCE:
            return float(gap), chosen, accuracy
    return None


def refit_temperature(weights: Path, val, card: dict, labels: np.ndarray | None = None,
                      labels_name: str = ORIGINAL) -> dict:
    """The calibration block of a card, fitted on val to the logits the bundled predictor serves
    (its runtime, flip TTA and gate), against ``labels`` (N,) class indices, -1 for a face left out
    (default: the faces' own), named ``labels_name``."""
    from fer_core.calibration import expected_calibration_error, fit_temperature, softmax

    labels = np.asarray(card["fer2013_id_to_class"])[val.labels] if labels is None else np.asarray(labels)
    has = labels >= 0
    logits, labels = Predictor(weights).logits(val.images[has]), labels[has]
    temperature = fit_temperature(logits, labels)
    on = "val" if labels_name == ORIGINAL else f"val, {labels_name} labels ({len(labels)} faces)"
    return {"temperature": temperature, "fitted_on": f"{on}, the logits as served (refitted when bundling)",
            "ece_before": expected_calibration_error(softmax(logits), labels),
            "ece_after": expected_calibration_error(softmax(logits, temperature), labels)}


def store_half(run_weights: Path, destination: Path) -> Path:
    """Copy trained weights (and their card) to ``destination``, stored in half precision."""
    model, card = load_model(run_weights)
    return save_model(model, destination, card, float_dtype=torch.float16)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", help="a training output folder holding model.safetensors and model.json")
    parser.add_argument("--val", required=True, help="the val folder of FER2013 (../shared/fer2013/val)")
    parser.add_argument("--tta", choices=["card", "off"], default="card",
                        help="flip test-time augmentation: as training chose it, or off")
    parser.add_argument("--val-labels", default=None, metavar="FILE",
                        help="a second label set for the val faces (sample_id,label CSV or Parquet, e.g. their FER+ "
                             "majority labels from `python -m annotate.ferplus`): the runtime, the mirror gate and "
                             "the temperature are chosen on it, and the card reports val as served against both it "
                             "and the faces' own labels; give the file the run was trained with (train "
                             "--val-labels). None: the val faces' own labels choose")
    parser.add_argument("--val-labels-name", default=None, metavar="NAME",
                        help="the --val-labels set's name in the card; None: the file's stem")
    parser.add_argument("--name", default=None,
                        help="the model's name in the app and for --model (the card's 'name'); None: the run's "
                             "card's name, else the file's stem")
    parser.add_argument("--calibration", default=None, metavar="DATA",
                        help="calibrate int8 on faces drawn from this data set's train split (e.g. "
                             "../shared/fer2013/train; see tools.export_onnx); None: the bundled sample")
    parser.add_argument("--calibration-faces", type=int, default=CALIBRATION_FACES, metavar="N",
                        help="with --calibration: faces drawn (seed 0)")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), metavar="FILE",
                        help="where the bundled weights go (the card and ONNX file beside them); another name in "
                             "fer_core/assets bundles a second model beside the default one")
    return parser


def read_run(args: argparse.Namespace) -> dict:
    """The run's card; FERError for a folder that holds no trained model, or options that cannot work."""
    run = Path(args.run)
    if not (run / "model.json").is_file() or not (run / "model.safetensors").is_file():
        raise FERError(f"{run} holds no model.safetensors with its model.json: give a training output folder")
    if args.val_labels and not Path(args.val_labels).expanduser().is_file():
        raise FERError(f"--val-labels: no file at {args.val_labels!r} (write the FER+ labels of the val faces with "
                       "`python -m annotate.ferplus VOTES --data VAL --out FILE`)")
    if args.val_labels_name and not args.val_labels:
        raise FERError("--val-labels-name names the --val-labels set: give --val-labels FILE too")
    if args.name is not None:
        check_model_name(args.name)
    if Path(args.out).suffix != ".safetensors":
        raise FERError(f"--out must name a .safetensors file, got {args.out!r}")
    return json.loads((run / "model.json").read_text())


def _write_card(card: dict, weights: Path = DEFAULT_WEIGHTS) -> None:
    card_path(weights).write_text(json.dumps(card, indent=2) + "\n")


def copy_weights(run: Path, card: dict, args: argparse.Namespace) -> None:
    """The run's weights in half precision at ``--out``, with the curve, and a card to choose on."""
    import shutil

    out = Path(args.out)
    store_half(run / "model.safetensors", out)
    if (run / "curve.png").is_file():
        shutil.copyfile(run / "curve.png", out.with_name(f"{out.stem}_curve.png"))
    if args.name is not None:
        card["name"] = args.name
    inference = card.setdefault("inference", {})
    for stale in ("flip_tta_gap", "flip_tta_gap_val", "second_pass_gap", "second_pass_gap_val", "runtime"):
        inference.pop(stale, None)  # chosen again below for these weights
    card.pop("onnx", None)  # written last, for these weights
    if args.tta == "off":
        inference["flip_tta"] = False
    card["storage"] = "float16 (inference in float32 or int8)"
    _write_card(card, out)


def val_label_sets(card: dict, val, args: argparse.Namespace) -> ValLabels:
    """The val faces' own labels in the model's classes and, with ``--val-labels``, the file's (which then choose).

    Says so when the run chose its best epoch on other labels than these.
    """
    id_to_class = np.asarray(card["fer2013_id_to_class"])
    run_chose = card.get("training", {}).get("selected_on", ORIGINAL)
    found = read_val_labels(val, args.val_labels, args.val_labels_name, lambda ids: id_to_class[ids])
    if run_chose != found.name:
        print(f"note: the run chose its best epoch on the {run_chose!r} labels; the runtime, the mirror gate and "
              f"the temperature are chosen on the {found.name!r} labels" +
              (" (give the run's file with --val-labels)" if not args.val_labels else ""))
    return found


def _choosing(labels: ValLabels) -> np.ndarray:
    """(N,) class index of each val face in the set that chooses, -1 where it has none."""
    return labels.original if labels.second is None else labels.second


def choose_on_val(card: dict, val, labels: ValLabels | None = None, weights: Path = DEFAULT_WEIGHTS) -> None:
    """The runtime, the mirror's gate and the temperature, chosen on val (against the set ``labels`` choose
    with, default the faces' own); written into the card of ``weights``."""
    labels = labels if labels is not None else ValLabels(np.asarray(card["fer2013_id_to_class"])[val.labels])
    choosing = _choosing(labels)
    inference = card["inference"]
    inference["chosen_on"] = labels.selected_on
    tta = bool(inference.get("flip_tta", False))
    accuracies = {runtime: val_accuracy(weights, val, runtime, tta, choosing) for runtime in ("onnx", "onnx-int8")}
    inference["runtime"] = "onnx-int8" if accuracies["onnx-int8"] >= accuracies["onnx"] - INT8_TOLERANCE else "onnx"
    inference["runtime_val_accuracy"] = accuracies
    print(f"val accuracy by runtime (mirror on every face, {labels.name} labels): {accuracies}; "
          f"chosen: {inference['runtime']}")
    if tta:
        inference.update(choose_second_pass_gap(weights, val, inference["runtime"], choosing))
        print(f"second-pass gate: {inference.get('second_pass_gap')} {inference.get('second_pass_gap_val', '')}")
    _write_card(card, weights)
    # Training fitted the temperature to its own val logits (fp32, the mirror on every face or none).
    card["calibration"] = refit_temperature(weights, val, card, choosing, labels.name)
    print(f"calibration: {card['calibration']}")
    _write_card(card, weights)


def record_val_by_labels(card: dict, val, labels: ValLabels, weights: Path = DEFAULT_WEIGHTS) -> dict:
    """Val accuracy, macro-F1 and per-class recall of the model as served, against each label set (``original``
    and the ``--val-labels`` set by its name), written into the card's ``checks.val_by_labels``."""
    logits = Predictor(weights).logits(val.images)
    by_labels = labels.by_labels(logits, list(card["labels"]))
    card.setdefault("checks", {})["val_by_labels"] = by_labels
    _write_card(card, weights)
    print("val as served: " + "; ".join(f"{name} labels: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                                        f"({m['faces']} faces)" for name, m in by_labels.items()))
    return by_labels


def record_check(card: dict, val_folder: str, weights: Path = DEFAULT_WEIGHTS) -> tuple[float, int]:
    """The accuracy of the bundled predictor on the fixed val sample (and its faces), written into the card's ``checks``."""
    sample = check_sample(val_folder)
    predictor = Predictor(weights)
    id_to_class = np.asarray(card["fer2013_id_to_class"])
    accuracy = float((predictor.predict_faces(sample.images).argmax(1) == id_to_class[sample.labels]).mean())
    card.setdefault("checks", {})["val_sample"] = {
        "definition": f"the first {CHECK_PER_CLASS} faces by sample_id of each emotion of FER2013 val (PublicTest)",
        "faces": len(sample), "accuracy": accuracy, "runtime": predictor.runtime, "flip_tta": predictor.tta,
        "second_pass_gap": card["inference"].get("second_pass_gap")}
    _write_card(card, weights)
    return accuracy, len(sample)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from tools.export_onnx import calibration_args, calibration_faces
    from tools.export_onnx import get_args_parser as export_parser
    from tools.export_onnx import main as export_main

    try:  # a bad option, val folder or label file is refused before anything is written
        card = read_run(args)
        val = load_faces(args.val, progress=False)
        labels = val_label_sets(card, val, args)
        drawn = calibration_faces(args.calibration, args.calibration_faces)  # a bad data set or count stops here
    except ValueError as error:
        (parser or get_args_parser()).error(str(error))
    run, out = Path(args.run), Path(args.out)
    card.pop("checks", None)  # measured again below, for these weights
    copy_weights(run, card, args)
    if drawn is not None:  # the int8 file first, so that int8 is measured as it will be served
        code = export_main(export_parser().parse_args([str(out), "--runtime", "onnx-int8", *calibration_args(args)]),
                           drawn=drawn)
        if code:
            return code
        card["onnx"] = read_card(out)["onnx"]
    choose_on_val(card, val, labels, out)
    record_val_by_labels(card, val, labels, out)
    accuracy, faces = record_check(card, args.val, out)
    print(f"bundled {run / 'model.safetensors'} as {out}; val-sample accuracy {accuracy:.4f} on {faces} faces")
    if drawn is not None and card["inference"]["runtime"] == "onnx-int8":
        return 0  # the file the app serves was written above, with these calibration faces
    return export_main(export_parser().parse_args([str(out)]))  # the ONNX file the app serves


if __name__ == "__main__":
    cli = get_args_parser()
    sys.exit(main(cli.parse_args(), cli))
