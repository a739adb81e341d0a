"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python tools/bundle_model.py runs/fastnet_adamw --val ../shared/fer2013/val

Chooses the inference runtime on the whole val split: ONNX Runtime int8 when it keeps
the fp32 accuracy to within :data:`INT8_TOLERANCE`, else fp32 (the figures of both go into
the card). Where training kept flip test-time augmentation, chooses its gate on val too:
the smallest gap between the two highest logits below which a face gets the mirrored pass,
keeping the accuracy of mirroring every face to within :data:`MIRROR_TOLERANCE` (most
faces then need one pass). ``--tta off`` turns the mirror off altogether. The temperature
is refitted to the logits the bundled model then serves. Last, adds to the model card the
accuracy on a fixed, named sample of val faces (the first files by name of each emotion
folder), which tests/test_bundled_model.py recomputes from the bundled file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_core.datasets import load_faces  # noqa: E402
from fer_core.predict import Predictor  # noqa: E402
from fer_core.weights import DEFAULT_WEIGHTS, card_path  # noqa: E402

#: Faces per emotion in the fixed val sample.
CHECK_PER_CLASS = 40
#: Largest val accuracy an int8 model may lose against fp32 and still be chosen.
INT8_TOLERANCE = 0.003
#: Largest val accuracy the gated mirror may lose against mirroring every face.
MIRROR_TOLERANCE = 0.001
#: Gaps between the two highest logits tried for the gate, smallest first.
MIRROR_GAPS = np.round(np.arange(0.05, 3.001, 0.05), 2)


def val_accuracy(weights: Path, val, runtime: str, tta: bool) -> float:
    predictor = Predictor(weights, runtime=runtime, tta=tta)
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


def choose_mirror_gap(weights: Path, val, runtime: str) -> dict:
    """The smallest gap of :data:`MIRROR_GAPS` whose gated mirror keeps the val accuracy of mirroring
    every face to within :data:`MIRROR_TOLERANCE`, with the share of val faces it mirrors."""
    from fer_core.predict import top_two_gap

    plain = Predictor(weights, runtime=runtime, tta=False)
    labels = np.asarray(plain.card["fer2013_id_to_class"])[val.labels]
    logits = plain.logits(val.images)
    both = (logits + plain.logits(np.ascontiguousarray(val.images[:, :, ::-1]))) / 2
    every_face = float((both.argmax(1) == labels).mean())
    gaps = top_two_gap(logits)
    for gap in MIRROR_GAPS:
        mirrored = gaps < gap
        accuracy = float((np.where(mirrored[:, None], both, logits).argmax(1) == labels).mean())
        if accuracy >= every_face - MIRROR_TOLERANCE:
            return {"flip_tta_gap": float(gap), "flip_tta_gap_val": {
                "accuracy": accuracy, "accuracy_every_face_mirrored": every_face,
                "accuracy_no_mirror": float((logits.argmax(1) == labels).mean()),
                "mirrored_share": float(mirrored.mean()), "tolerance": MIRROR_TOLERANCE}}
    return {"flip_tta_gap": None}  # no gap kept the accuracy: every face is mirrored


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training output folder holding model.safetensors and model.json")
    parser.add_argument("--val", required=True, help="the val folder of FER2013 (../shared/fer2013/val)")
    parser.add_argument("--tta", choices=["card", "off"], default="card",
                        help="flip test-time augmentation: as training chose it, or off")
    args = parser.parse_args()
    run = Path(args.run)
    shutil.copyfile(run / "model.safetensors", DEFAULT_WEIGHTS)
    if (run / "curve.png").is_file():
        shutil.copyfile(run / "curve.png", DEFAULT_WEIGHTS.with_name("fer_model_curve.png"))
    card = json.loads((run / "model.json").read_text())
    inference = card.setdefault("inference", {})
    val = load_faces(args.val, progress=False)
    if args.tta == "off":
        inference["flip_tta"] = False
    for stale in ("flip_tta_gap", "flip_tta_gap_val"):  # chosen again below for these weights
        inference.pop(stale, None)
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    tta = bool(inference.get("flip_tta", False))
    accuracies = {runtime: val_accuracy(DEFAULT_WEIGHTS, val, runtime, tta) for runtime in ("onnx", "onnx-int8")}
    inference["runtime"] = "onnx-int8" if accuracies["onnx-int8"] >= accuracies["onnx"] - INT8_TOLERANCE else "onnx"
    inference["runtime_val_accuracy"] = accuracies
    print(f"val accuracy by runtime: {accuracies}; chosen: {inference['runtime']}")
    if tta:
        inference.update(choose_mirror_gap(DEFAULT_WEIGHTS, val, inference["runtime"]))
        print(f"mirror gate: {inference.get('flip_tta_gap')} {inference.get('flip_tta_gap_val', '')}")
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    # Training fitted the temperature to its own val logits (fp32, the mirror on every face or none).
    card["calibration"] = refit_temperature(DEFAULT_WEIGHTS, val, card)
    print(f"calibration: {card['calibration']}")
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    sample = check_sample(args.val)
    predictor = Predictor(DEFAULT_WEIGHTS)
    id_to_class = np.asarray(card["fer2013_id_to_class"])
    accuracy = float((predictor.predict_faces(sample.images).argmax(1) == id_to_class[sample.labels]).mean())
    card["checks"] = {"val_sample": {
        "definition": f"the first {CHECK_PER_CLASS} faces by sample_id of each emotion of FER2013 val (PublicTest)",
        "faces": len(sample), "accuracy": accuracy, "runtime": predictor.runtime, "flip_tta": predictor.tta,
        "flip_tta_gap": inference.get("flip_tta_gap")}}
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    print(f"bundled {run / 'model.safetensors'} as {DEFAULT_WEIGHTS}; val-sample accuracy {accuracy:.4f} on {len(sample)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
