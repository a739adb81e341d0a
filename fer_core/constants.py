"""Numbers shared across fer_core: image geometry, quality weights, limits."""

from __future__ import annotations

import math

#: FER2013 faces are 48x48 single-channel uint8 images.
IMAGE_SIZE: int = 48
NUM_PIXELS: int = IMAGE_SIZE * IMAGE_SIZE

#: Weights of the four quality components (design notes); they sum to 1.
QUALITY_WEIGHTS: dict[str, float] = {
    "edge_score": 0.30,
    "contrast_score": 0.30,
    "focus_score": 0.25,
    "brightness_score": 0.15,
}

#: Image files recognised in a Kaggle-style folder tree.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

#: Split names as FER2013 copies spell them, mapped to the three we use.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "publictest": "val",
    "test": "test",
    "privatetest": "test",
    "testing": "test",
}
#: Split given to faces of a copy that has no split level.
UNSPLIT: str = "unsplit"

#: Model input normalisation: grey level / 255, minus the mean, over the std,
#: both measured on ../shared/fer2013/train (28,486 faces).
INPUT_MEAN: float = 0.5068
INPUT_STD: float = 0.2541

#: Flip test-time augmentation settings a command line can name, as the ``(tta, mirror_gap)``
#: arguments of ``fer_core.predict.Predictor``: on with the model card's gate, off, or every
#: face mirrored.
TTA_MODES: dict[str, tuple[bool, float | None]] = {"on": (True, None), "off": (False, None), "all": (True, math.inf)}
