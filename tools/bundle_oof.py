"""Ship a fold run's out-of-fold probabilities beside the bundled weights, for the Relabel queue.

    python -m tools.bundle_oof runs/oof5 --data ../shared/fer2013/train

Checks that the file covers every face of DATA under the same ``sample_id`` with the
same given label, adds the pixels' ``content_hash`` where the run predates it (the Relabel
tab uses a row only for the very face it was computed on), stores the probabilities as
float32 (they are rounded model outputs; this halves the file) and copies the run's
``folds.json`` summary beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core.config import ASSETS_DIR
from fer_core.datasets import load_faces
from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS

TARGET = ASSETS_DIR / "fer2013_train_oof.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a --folds output folder holding oof_probabilities.parquet and folds.json")
    parser.add_argument("--data", required=True, help="the training faces the folds were trained on")
    args = parser.parse_args()
    run = Path(args.run)
    oof = pd.read_parquet(run / "oof_probabilities.parquet")
    table = load_faces(args.data)
    ids = table.frame["sample_id"].astype(str).to_numpy()
    if oof["sample_id"].astype(str).tolist() != ids.tolist():
        print(f"error: {run} does not hold one row per face of {args.data} in its order", file=sys.stderr)
        return 2
    if not np.array_equal(oof["emotion"].to_numpy(), table.labels):
        print(f"error: the labels in {run} differ from those of {args.data}", file=sys.stderr)
        return 2
    hashes = [pixels_sha256(image) for image in table.images]
    if "content_hash" in oof.columns and oof["content_hash"].tolist() != hashes:
        print(f"error: the faces' pixels in {args.data} differ from those {run} was computed on", file=sys.stderr)
        return 2
    oof["content_hash"] = hashes
    oof[list(EMOTIONS)] = oof[list(EMOTIONS)].astype(np.float32)
    oof.to_parquet(TARGET, index=False)
    summary = json.loads((run / "folds.json").read_text())
    TARGET.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1e6:.1f} MB, {len(oof)} faces; out-of-fold accuracy "
          f"{summary['oof_accuracy_vs_given_label']:.4f} against the given labels, fold val accuracy "
          f"{summary['val_accuracy_mean']:.4f} ± {summary['val_accuracy_sd']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
