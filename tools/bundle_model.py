"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python -m tools.bundle_model runs/vgg_s0 --val ../shared/fer2013/val
    python -m tools.bundle_model runs/pair_s0 --member runs/pair_s1 --val ../shared/fer2013/val

The weights are stored in half precision (inference runs in float32 or int8 from them;
half the file). ``--member RUN`` bundles other trained models as an ensemble: they are
copied beside the weights, named in the card with their sha256, and averaged with the
first model on the faces its answer is unclear about.

Chooses the inference runtime on the whole val split: ONNX Runtime int8 when it keeps
the fp32 accuracy to within :data:`INT8_TOLERANCE`, else fp32 (the figures of both go into
the card). Where there is a second pass (flip test-time augmentation kept by training, the
members), chooses its gate on val too: the smallest gap between the two highest logits of
the first model's plain pass below which a face gets the second pass, keeping the accuracy
of giving it to every face to within :data:`SECOND_PASS_TOLERANCE` (most faces then need one
pass). ``--tta off`` turns the mirror off altogether; ``--tta-views flip,left,right,...`` averages
other test-time views than the mirror alone (names of ``fer_core.constants.TTA_VIEWS``; the
face shifted by 2 pixels, mirrored or not), under the same gate; ``--third-pass-views`` adds
more views in a third pass, only on the faces the second leaves unclear, under a gate of its own
chosen the same way (on the averaged logits, against those views on every face of the second
pass). The temperature is refitted to the
logits the bundled model then serves. Last, adds to the model card the accuracy on a fixed,
named sample of val faces (the first files by name of each emotion folder), which
tests/test_bundled_model.py recomputes from the bundled files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from fer_core._validation import FERError
from fer_core.datasets import load_faces
from fer_core.predict import Predictor, parse_tta_views
from fer_core.weights import DEFAULT_WEIGHTS, card_path, file_sha256, load_model, save_model

#: Faces per emotion in the fixed val sample.
CHECK_PER_CLASS = 40
#: Largest val accuracy an int8 model may lose against fp32 and still be chosen.
INT8_TOLERANCE = 0.003
#: Largest val accuracy the gated second pass may lose against giving it to every face.
SECOND_PASS_TOLERANCE = 0.001
#: Gaps between the two highest logits tried for the gate, smallest first.
SECOND_PASS_GAPS = np.round(np.arange(0.05, 3.001, 0.05), 2)
#: The ensemble's other models are stored beside the bundled weights under these names.
MEMBER_NAME = "fer_model_member{}.safetensors"


def val_accuracy(weights: Path, val, runtime: str, tta: bool) -> float:
    """Accuracy with the second pass (mirror, members) on every face: the runtime's best."""
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
    """The smallest gap of :data:`SECOND_PASS_GAPS` whose gated second pass (the card's mirror and
    members) keeps the val accuracy of giving it to every face to within :data:`SECOND_PASS_TOLERANCE`,
    with the share of val faces that get it."""
    from fer_core.predict import top_two_gap

    plain = Predictor(weights, runtime=runtime, tta=False, ensemble=False)
    labels = np.asarray(plain.card["fer2013_id_to_class"])[val.labels]
    logits = plain.logits(val.images)
    both = Predictor(weights, runtime=runtime, mirror_gap=math.inf, third_pass_views=[]).logits(val.images)
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


def choose_third_pass_gap(weights: Path, val, runtime: str) -> dict:
    """The smallest gap of :data:`SECOND_PASS_GAPS` whose gated third pass (the card's
    ``third_pass_views``, on the faces the second pass leaves unclear) keeps the val accuracy of
    giving it to every face of the second pass to within :data:`SECOND_PASS_TOLERANCE`; or, where
    even that accuracy does not beat the second pass alone, ``third_pass_views: []`` (none)."""
    from fer_core.predict import top_two_gap

    second = Predictor(weights, runtime=runtime, third_pass_views=[])
    labels = np.asarray(second.card["fer2013_id_to_class"])[val.labels]
    after_second = second.logits(val.images)
    plain = Predictor(weights, runtime=runtime, tta=False, ensemble=False).logits(val.images)
    got_second = top_two_gap(plain) < second.mirror_gap
    # On a face of the second pass, the third averages every view: what every face gets with no gates.
    every_view = Predictor(weights, runtime=runtime, mirror_gap=math.inf).logits(val.images)
    reference = float((np.where(got_second[:, None], every_view, after_second).argmax(1) == labels).mean())
    without = float((after_second.argmax(1) == labels).mean())
    if reference <= without:
        return {"third_pass_views": [], "third_pass_dropped_val": {
            "accuracy_every_face_of_the_second_pass": reference, "accuracy_without_third_pass": without}}
    found = smallest_gate(top_two_gap(after_second), got_second, every_view, after_second, labels, reference)
    if found is None:
        return {"third_pass_gap": None}  # every face of the second pass gets the third
    gap, third, accuracy = found
    return {"third_pass_gap": gap, "third_pass_gap_val": {
        "accuracy": accuracy, "accuracy_every_face_of_the_second_pass": reference,
        "accuracy_without_third_pass": without, "second_pass_share": float(got_second.mean()),
        "third_pass_share": float(third.mean()), "tolerance": SECOND_PASS_TOLERANCE}}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training output folder holding model.safetensors and model.json")
    parser.add_argument("--member", action="append", default=[], metavar="RUN",
                        help="another training output folder to bundle as an ensemble member (repeatable)")
    parser.add_argument("--val", required=True, help="the val folder of FER2013 (../shared/fer2013/val)")
    parser.add_argument("--tta", choices=["card", "off"], default="card",
                        help="flip test-time augmentation: as training chose it, or off")
    parser.add_argument("--tta-views", default=None, metavar="VIEW,VIEW,...",
                        help="test-time views averaged on unclear faces, names of fer_core.constants.TTA_VIEWS "
                             "(default: the mirror alone, where training kept it); switches TTA on")
    parser.add_argument("--third-pass-views", default=None, metavar="VIEW,VIEW,...",
                        help="more views, averaged only on the faces the second pass leaves unclear "
                             "(a third pass with its own gate, chosen on val); switches TTA on")
    args = parser.parse_args()
    try:
        views = parse_tta_views(args.tta_views, tta_off=args.tta == "off")
        third_views = parse_tta_views(args.third_pass_views, tta_off=args.tta == "off", option="--third-pass-views")
        run = Path(args.run)
        if not (run / "model.json").is_file():
            raise FERError(f"{run} holds no model.json: give a training output folder")
        card = json.loads((run / "model.json").read_text())
        inference = card.setdefault("inference", {})
        # Refused here, before the bundled files are replaced, rather than by the Predictor after.
        repeated = set(third_views or ()) & set(views or inference.get("tta_views", ["flip"]))
        if repeated:
            raise FERError(f"--third-pass-views repeats views of the second pass: {sorted(repeated)}")
    except ValueError as error:
        parser.error(str(error))
    for stale in DEFAULT_WEIGHTS.parent.glob(MEMBER_NAME.format("*").replace(".safetensors", ".*")):
        stale.unlink()  # the members of an earlier bundle
    store_half(run / "model.safetensors", DEFAULT_WEIGHTS)
    members = []
    for number, member_run in enumerate(args.member, start=1):
        member = store_half(Path(member_run) / "model.safetensors", DEFAULT_WEIGHTS.with_name(MEMBER_NAME.format(number)))
        members.append({"file": member.name, "sha256": file_sha256(member), "run": str(member_run)})
    if (run / "curve.png").is_file():
        shutil.copyfile(run / "curve.png", DEFAULT_WEIGHTS.with_name("fer_model_curve.png"))
    val = load_faces(args.val, progress=False)
    for stale in ("flip_tta_gap", "flip_tta_gap_val", "second_pass_gap", "second_pass_gap_val", "members",
                  "third_pass_views", "third_pass_gap", "third_pass_gap_val", "third_pass_dropped_val"):
        inference.pop(stale, None)  # set or chosen again below for these weights
    if args.tta == "off":
        inference["flip_tta"] = False
    if views:
        inference.update({"flip_tta": True, "tta_views": list(views)})
    if third_views:
        inference.update({"flip_tta": True, "third_pass_views": list(third_views)})
    if members:
        inference["members"] = members
    card["storage"] = "float16 (inference in float32 or int8)"
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    tta = bool(inference.get("flip_tta", False))
    accuracies = {runtime: val_accuracy(DEFAULT_WEIGHTS, val, runtime, tta) for runtime in ("onnx", "onnx-int8")}
    inference["runtime"] = "onnx-int8" if accuracies["onnx-int8"] >= accuracies["onnx"] - INT8_TOLERANCE else "onnx"
    inference["runtime_val_accuracy"] = accuracies
    print(f"val accuracy by runtime (second pass on every face): {accuracies}; chosen: {inference['runtime']}")
    if tta or members:
        inference.update(choose_second_pass_gap(DEFAULT_WEIGHTS, val, inference["runtime"]))
        print(f"second-pass gate: {inference.get('second_pass_gap')} {inference.get('second_pass_gap_val', '')}")
        card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    if third_views and tta:
        inference.update(choose_third_pass_gap(DEFAULT_WEIGHTS, val, inference["runtime"]))
        if inference["third_pass_views"]:
            print(f"third-pass gate: {inference.get('third_pass_gap')} {inference['third_pass_gap_val']}")
        else:
            inference.pop("third_pass_views")
            print(f"third pass left out: its views on every face of the second pass do not beat the second "
                  f"pass alone on val {inference['third_pass_dropped_val']}")
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
        "tta_views": list(predictor.tta_views), "ensemble_members": len(predictor.members),
        "second_pass_gap": inference.get("second_pass_gap"),
        "third_pass_views": list(predictor.third_pass_views), "third_pass_gap": inference.get("third_pass_gap")}}
    card_path(DEFAULT_WEIGHTS).write_text(json.dumps(card, indent=2) + "\n")
    print(f"bundled {run / 'model.safetensors'} (+{len(members)} members) as {DEFAULT_WEIGHTS}; "
          f"val-sample accuracy {accuracy:.4f} on {len(sample)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
