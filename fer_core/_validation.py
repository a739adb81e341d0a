"""Input checks and the library's exception types, shared by every fer_core module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FERError",
    "DatasetError",
    "ImageError",
    "NoFaceFound",
    "check_path_exists",
    "check_face_batch",
]


class FERError(ValueError):
    """Base class of the errors fer_core raises for bad input; the message is for a person."""


class DatasetError(FERError):
    """A data set path, file or table cannot be read as FER faces."""


class ImageError(FERError):
    """An image cannot be decoded, is too large, or has an unsupported form."""


class NoFaceFound(FERError):
    """No face was found where one is required."""


def check_path_exists(path: str | Path, *, what: str = "data set") -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DatasetError` if it does not exist."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{what} path must be a str or Path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{what} not found: {str(path)!r} does not exist")
    return p


def check_face_batch(images: Any, *, name: str = "images") -> np.ndarray:
    """Check a batch of grey faces ``(N, H, W)`` uint8 (or one face ``(H, W)``) and return it as ``(N, H, W)``."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(images).__name__}")
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 grey levels, got dtype {images.dtype}")
    return images
