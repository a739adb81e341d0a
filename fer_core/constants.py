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

#: Test-time views a model card can name (``inference.tta_views``), each as the window offset
#: ``(dx, dy)`` in pixels, then whether it is mirrored: ``left`` sees the face moved 2 pixels to
#: the left (its right edge repeated), ``left_flip`` the mirror of that. Training augments with
#: shifts of up to 10% and mirrors, so the model knows these faces. Cards without the key, but
#: with ``flip_tta``, mean ``["flip"]``.
TTA_SHIFT: int = 2
TTA_VIEWS: dict[str, tuple[int, int, bool]] = {
    "flip": (0, 0, True),
    "left": (TTA_SHIFT, 0, False), "right": (-TTA_SHIFT, 0, False),
    "up": (0, TTA_SHIFT, False), "down": (0, -TTA_SHIFT, False),
    "left_flip": (TTA_SHIFT, 0, True), "right_flip": (-TTA_SHIFT, 0, True),
    "up_flip": (0, TTA_SHIFT, True), "down_flip": (0, -TTA_SHIFT, True),
}

#: Ensemble settings a command line can name, as the ``ensemble`` argument of the Predictor:
#: the other models the model card bundles, or the first model alone.
ENSEMBLE_MODES: dict[str, bool | None] = {"card": None, "off": False}
