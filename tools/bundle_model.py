"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python -m tools.bundle_model runs/reg2h --val ../shared/fer2013/val

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
from fer_core.datasets import load_faces
from fer_core.predict import Predictor
from fer_core.weights import DEFAULT_WEIGHTS, card_path, load_model, save_model

#: Faces per emotion in the fixed val sample.
CHECK_PER_CLASS = 40
#: Largest val accuracy an int8 model may lose against fp32 and still be chosen.
INT8_TOLERANCE = 0.003
#: Largest val accuracy the gated second pass may lose against giving it to every face.
SECOND_PASS_TOLERANCE = 0.001
#: Gaps between the two highest logits tried for the gate, smallest first.
SECOND_PASS_GAPS = np.round(np.arange(0.05, 3.001, 0.05), 2)


def val_accuracy(weights: Path, val, runtime: str, tta: bool) -> float:
    """Accuracy with the second pass (the mirror) on every face: the runtime's best."""
    predictor = Predictor(weights, runtime=runtime, tta=tta, mirror_gap=math.inf)
    id_to_class = np.asarray(predictor.card["fer2013_id_to_class"])
    return float((predictor.predict_faces(val.images).argmax(1) == id_to_class[val.labels]).mean())


def check_sample(val_folder: str | Path, per_class: int = CHECK_PER_CLASS):
    """The first ``per_class`` faces (by sample_id) of each emotion of a val folder."""
    table = load_faces(val_folder, progress=False)
    order = np.argsort(table.frame["sample_id"].to_numpy())
    picked = []
    for label in range(7):
        rows = [i for i in order if table.labels[i] == label][:per_class]
        picked.extend(rows)
    return table.select(np.array(picked))


def choose_second_pass_gap(weights: Path, val, runtime: str) -> dict:
    """The smallest gap of :data:`SECOND_PASS_GAPS` whose gated second pass (the mirror) keeps the val
    accuracy of giving it to every face to within :data:`SECOND_PASS_TOLERANCE`, with the share of
    val faces that get it."""
    from fer_core.predict import top_two_gap

    plain = Predictor(weights, runtime=runtime, tta=False)
    labels = np.asarray(plain.card["fer2013_id_to_class"])[val.labels]
    logits = plain.logits(val.images)
    both = Predictor(weights, runtime=runtime, tta=True, mirror_gap=math.inf).logits(val.images)
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


def refit_temperature(weights: Path, val, card: dict) -> dict:
    """The calibration block of a card, fitted on val to the logits the bundled predictor serves
    (its runtime, flip TTA and gate)."""
    from fer_core.calibration import expected_calibration_error, fit_temperature, softmax

    logits = Predictor(weights).logits(val.images)
    labels = np.asarray(card["fer2013_id_to_class"])[val.labels]
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "fitted_on": "val, the logits as served (refitted when bundling)",
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
    return parser


def read_run(args: argparse.Namespace) -> dict:
    """The run's card; FERError for a folder that holds no trained model."""
    run = Path(args.run)
    if not (run / "model.json").is_file() or not (run / "model.safetensors").is_file():
        raise FERError(f"{run} holds no model.safetensors with its model.json: give a training output folder")
    return json.loads((run / "model.json").read_text())


def _write_card(card: dict) -> None:
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")


def copy_weights(run: Path, card: dict, args: argparse.Namespace) -> None:
    """The run's weights in half precision beside the package, with the curve, and a card to choose on."""
    import shutil

    store_half(run / "model.safetensors", DEFAULT_WEIGHTS)
    if (run / "curve.png").is_file():
        shutil.copyfile(run / "curve.png", DEFAULT_WEIGHTS.with_name("fer_model_curve.png"))
    inference = card.setdefault("inference", {})
    for stale in ("flip_tta_gap", "flip_tta_gap_val", "second_pass_gap", "second_pass_gap_val", "runtime"):
        inference.pop(stale, None)  # chosen again below for these weights
    card.pop("onnx", None)  # written last, for these weights
    if args.tta == "off":
        inference["flip_tta"] = False
    card["storage"] = "float16 (inference in float32 or int8)"
    _write_card(card)


def choose_on_val(card: dict, val) -> None:
    """The runtime, the mirror's gate and the temperature, chosen on val; written into the card."""
    inference = card["inference"]
    tta = bool(inference.get("flip_tta", False))
    accuracies = {runtime: val_accuracy(DEFAULT_WEIGHTS, val, runtime, tta) for runtime in ("onnx", "onnx-int8")}
    inference["runtime"] = "onnx-int8" if accuracies["onnx-int8"] >= accuracies["onnx"] - INT8_TOLERANCE else "onnx"
    inference["runtime_val_accuracy"] = accuracies
    print(f"val accuracy by runtime (mirror on every face): {accuracies}; chosen: {inference['runtime']}")
    if tta:
        inference.update(choose_second_pass_gap(DEFAULT_WEIGHTS, val, inference["runtime"]))
        print(f"second-pass gate: {inference.get('second_pass_gap')} {inference.get('second_pass_gap_val', '')}")
    _write_card(card)
    # Training fitted the temperature to its own val logits (fp32, the mirror on every face or none).
    card["calibration"] = refit_temperature(DEFAULT_WEIGHTS, val, card)
    print(f"calibration: {card['calibration']}")
    _write_card(card)


def record_check(card: dict, val_folder: str) -> tuple[float, int]:
    """The accuracy of the bundled predictor on the fixed val sample (and its faces), written into the card's ``checks``."""
    sample = check_sample(val_folder)
    predictor = Predictor(DEFAULT_WEIGHTS)
    id_to_class = np.asarray(card["fer2013_id_to_class"])
    accuracy = float((predictor.predict_faces(sample.images).argmax(1) == id_to_class[sample.labels]).mean())
    card["checks"] = {"val_sample": {
        "definition": f"the first {CHECK_PER_CLASS} faces by sample_id of each emotion of FER2013 val (PublicTest)",
        "faces": len(sample), "accuracy": accuracy, "runtime": predictor.runtime, "flip_tta": predictor.tta,
        "second_pass_gap": card["inference"].get("second_pass_gap")}}
    _write_card(card)
    return accuracy, len(sample)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from tools.export_onnx import get_args_parser as export_parser
    from tools.export_onnx import main as export_main

    try:
        card = read_run(args)
    except ValueError as error:
        (parser or get_args_parser()).error(str(error))
    run = Path(args.run)
    copy_weights(run, card, args)
    choose_on_val(card, load_faces(args.val, progress=False))
    accuracy, faces = record_check(card, args.val)
    print(f"bundled {run / 'model.safetensors'} as {DEFAULT_WEIGHTS}; val-sample accuracy {accuracy:.4f} on {faces} faces")
    return export_main(export_parser().parse_args([str(DEFAULT_WEIGHTS)]))  # the ONNX file the app serves


if __name__ == "__main__":
    cli = get_args_parser()
    sys.exit(main(cli.parse_args(), cli))
