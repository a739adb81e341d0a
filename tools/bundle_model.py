"""Copy a trained model into the repository as the bundled weights, with a check anyone can re-run.

    python tools/bundle_model.py runs/fastnet_adamw --val ../shared/fer2013/val

Adds to the model card the accuracy on a fixed, named sample of val faces (the
first files by name of each emotion folder), which tests/test_bundled_model.py
recomputes from the bundled file.
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


def check_sample(val_folder: str | Path, per_class: int = CHECK_PER_CLASS):
    """The first ``per_class`` faces (by sample_id) of each emotion of a val folder."""
    table = load_faces(val_folder, progress=False)
    order = np.argsort(table.frame["sample_id"].to_numpy())
    picked = []
    for label in range(7):
        rows = [i for i in order if table.labels[i] == label][:per_class]
        picked.extend(rows)
    return table.select(np.array(picked))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training output folder holding model.safetensors and model.json")
    parser.add_argument("--val", required=True, help="the val folder of FER2013 (../shared/fer2013/val)")
    args = parser.parse_args()
    run = Path(args.run)
    shutil.copyfile(run / "model.safetensors", DEFAULT_WEIGHTS)
    card = json.loads((run / "model.json").read_text())
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
