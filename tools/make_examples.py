"""Make the example photos of the Predict tab from real faces.

    python -m tools.make_examples [--out fer_core/assets/examples]

- ``astronaut.jpg``: scikit-image's astronaut photo (NASA, public domain), one face;
- ``group_of_three.jpg`` and ``pair.jpg``: FER2013 faces from the bundled sample (one per emotion
  picked by a fixed seed) pasted on a background by :func:`benchmarks.scenes.compose_scene`;
- ``fer2013_face.png``: one 48x48 FER2013 face as it is, which the app classifies whole.

Same command, same files. Needs scikit-image (``requirements-test.txt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.scenes import compose_scene
from fer_core.config import EXAMPLES_DIR, SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.labels import EMOTIONS


def _faces_of(table, emotions: list[str], rng: np.random.Generator) -> list[np.ndarray]:
    picked = []
    for emotion in emotions:
        rows = np.flatnonzero(table.labels == EMOTIONS.index(emotion))
        # Prefer sharp, well-exposed faces: the examples should show the model at work, not the data's worst.
        quality = table.frame["quality_score"].to_numpy()[rows]
        best = rows[np.argsort(-quality)[:10]]
        picked.append(table.images[rng.choice(best)])
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="folder to write the examples into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import skimage.data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    table = load_faces(SAMPLE_PATH)
    Image.fromarray(skimage.data.astronaut()).save(out / "astronaut.jpg", quality=90)
    scene, _ = compose_scene(_faces_of(table, ["happy", "surprise", "sad"], rng), seed=args.seed,
                             face_size=(120, 170))
    Image.fromarray(scene).save(out / "group_of_three.jpg", quality=90)
    scene, _ = compose_scene(_faces_of(table, ["angry", "neutral"], rng), seed=args.seed + 1,
                             face_size=(140, 190))
    Image.fromarray(scene).save(out / "pair.jpg", quality=90)
    Image.fromarray(_faces_of(table, ["happy"], rng)[0]).save(out / "fer2013_face.png")
    for path in sorted(out.iterdir()):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
