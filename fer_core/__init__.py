"""fer_core: facial expression recognition on FER2013-style faces, with no UI.

The public surface; heavy modules (torch, datasets, OpenCV models) load on first use.
"""

from __future__ import annotations

from typing import Any

from fer_core._validation import DatasetError, FERError, ImageError, NoFaceFound
from fer_core.labels import DISPLAY_NAMES, EMOTIONS, NUM_CLASSES, normalise

__all__ = [
    "EMOTIONS",
    "NUM_CLASSES",
    "DISPLAY_NAMES",
    "normalise",
    "FERError",
    "DatasetError",
    "ImageError",
    "NoFaceFound",
    "load_faces",
    "FaceTable",
    "save_table",
    "detect",
    "to_model_input",
    "load_image",
    "score_faces",
    "Predictor",
    "get_predictor",
    "create_model",
]

_LAZY = {
    "load_faces": "fer_core.datasets",
    "FaceTable": "fer_core.datasets",
    "save_table": "fer_core.datasets",
    "detect": "fer_core.faces",
    "to_model_input": "fer_core.faces",
    "load_image": "fer_core.images",
    "score_faces": "fer_core.quality",
    "Predictor": "fer_core.predict",
    "get_predictor": "fer_core.predict",
    "create_model": "fer_core.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fer_core' has no attribute {name!r}")
