"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python tools/bundle_model.py runs/fastnet_adamw --val ../shared/fer2013/val

Chooses the inference runtime on the whole val split: ONNX Runtime int8 when it keeps
the fp32 accuracy to within :data:`INT8_TOLERANCE`, else fp32 (the figures of both go into
the card). ``--tta off`` turns flip test-time augmentation off where it would cost the
speed target more than it gains. Then adds to the model card the accuracy on a fixed,
named sample of val faces (the first files by name of each emotion folder), which
tests/test_bundled_model.py recomputes from the bundled file.
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


def refit_temperature(weights: Path, val, card: dict) -> dict:
    """The calibration block of a card, fitted on val without flip TTA."""
    import torch

    from fer_core.calibration import expected_calibration_error, fit_temperature, softmax
    from fer_core.train import predict_logits
    from fer_core.weights import load_model

    model, _ = load_model(weights)
    labels = np.asarray(card["fer2013_id_to_class"])[val.labels]
    logits = predict_logits(model, val.images, device=torch.device("cpu"))
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "fitted_on": "val, without flip TTA (refitted when bundling)",
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
    if args.tta == "off" and inference.get("flip_tta"):
        # Training fitted the temperature to the mirrored-and-averaged logits: refit it to those now served.
        inference["flip_tta"] = False
        card["calibration"] = refit_temperature(run / "model.safetensors", val, card)
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    tta = bool(inference.get("flip_tta", False))
    accuracies = {runtime: val_accuracy(DEFAULT_WEIGHTS, val, runtime, tta) for runtime in ("onnx", "onnx-int8")}
    inference["runtime"] = "onnx-int8" if accuracies["onnx-int8"] >= accuracies["onnx"] - INT8_TOLERANCE else "onnx"
    inference["runtime_val_accuracy"] = accuracies
    print(f"val accuracy by runtime: {accuracies}; chosen: {inference['runtime']}")
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    sample = check_sample(args.val)
    predictor = Predictor(DEFAULT_WEIGHTS)
    id_to_class = np.asarray(card["fer2013_id_to_class"])
    accuracy = float((predictor.predict_faces(sample.images).argmax(1) == id_to_class[sample.labels]).mean())
    card["checks"] = {"val_sample": {
        "definition": f"the first {CHECK_PER_CLASS} faces by sample_id of each emotion of FER2013 val (PublicTest)",
        "faces": len(sample), "accuracy": accuracy, "runtime": predictor.runtime, "flip_tta": predictor.tta}}
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    print(f"bundled {run / 'model.safetensors'} as {DEFAULT_WEIGHTS}; val-sample accuracy {accuracy:.4f} on {len(sample)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
