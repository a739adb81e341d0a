"""The table of faces every data form is read into, and the decoding of one face image."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd

from fer_core.constants import IMAGE_SIZE
from fer_core.labels import EMOTIONS

__all__ = ["FaceTable", "BASE_COLUMNS", "decode_face", "to_face48", "build_frame"]

log = logging.getLogger(__name__)

#: Columns every table has, in this order; a data set may carry more (quality fields).
BASE_COLUMNS: tuple[str, ...] = ("sample_id", "emotion", "emotion_name", "split", "source")


@dataclass(frozen=True, eq=False)
class FaceTable:
    """Faces of one data set: pixels in ``images``, one row of fields per face in ``frame``.

    Attributes
    ----------
    images : (N, 48, 48) uint8
        Grey faces, row ``i`` belongs to ``frame.iloc[i]``. Above 256 MB of pixels (about
        116,000 faces) a loaded table's faces are a read-only ``numpy.memmap`` of a file:
        walk them with :func:`fer_core.datasets._stream.iter_batches` rather than copying them.
    frame : pandas.DataFrame, N rows
        ``sample_id`` (unique, stable across runs), ``emotion`` (FER2013 id 0-6),
        ``emotion_name``, ``split`` (``train``/``val``/``test``/``unsplit``),
        ``source`` (file path, or ``file:row``), then any extra columns the
        data set carries (quality fields of an enhanced copy).
    name : str
        A short name of the data set (folder or file stem, or hub id).
    skipped : dict[str, int]
        What was left out while reading and why (``corrupt_files``,
        ``unknown_class:<name>``, ``bad_pixels_rows``...).
    """

    images: np.ndarray
    frame: pd.DataFrame
    name: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, 48, 48) uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.frame) != len(self.images):
            raise ValueError(f"frame has {len(self.frame)} rows but there are {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"FaceTable(name={self.name!r}, faces={len(self)}, splits={self.split_counts()})"

    @property
    def labels(self) -> np.ndarray:
        """FER2013 label ids, shape (N,), int64."""
        return self.frame["emotion"].to_numpy(dtype=np.int64)

    def split_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.frame["split"].value_counts(sort=False).items()}

    def select(self, rows: Any) -> FaceTable:
        """A new table with the rows chosen by a boolean mask or integer positions."""
        index = np.asarray(rows)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"mask must have shape ({len(self)},), got {index.shape}")
            index = np.flatnonzero(index)
        return FaceTable(
            images=self.images[index],
            frame=self.frame.iloc[index].reset_index(drop=True),
            name=self.name,
            skipped=dict(self.skipped),
        )

    def split(self, name: str) -> FaceTable:
        """The faces of one split (``train``, ``val``, ``test`` or ``unsplit``)."""
        return self.select(self.frame["split"].to_numpy() == name)

    def with_columns(self, columns: pd.DataFrame) -> FaceTable:
        """A new table with ``columns`` added or replaced (same row order, same length)."""
        if len(columns) != len(self):
            raise ValueError(f"columns have {len(columns)} rows, the table has {len(self)}")
        frame = self.frame.copy()
        for name in columns.columns:
            frame[name] = columns[name].to_numpy()
        return FaceTable(images=self.images, frame=frame, name=self.name, skipped=dict(self.skipped))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """16-bit and float grey levels on the 8-bit scale, keeping the original values where they fit.

    A 16-bit file saved from 8-bit data (values x257) comes back exactly; floats in
    [0, 1] are scaled by 255; anything else is rescaled from its own range.
    """
    values = image.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(image.dtype, np.integer) and high <= 255 and low >= 0:
        scaled = values
    elif image.dtype == np.uint16:
        scaled = values / 257.0
    elif np.issubdtype(image.dtype, np.floating) and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def to_face48(image: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGR(A), 8 or 16 bit) as a 48x48 uint8 grey face.

    Colour is converted with the usual luma weights; 16-bit and float images are
    brought to 8 bits (see ``_to_uint8``); other sizes are resized (area
    interpolation when shrinking, cubic when enlarging).
    """
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        image = _to_uint8(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shrinking = image.shape[0] > IMAGE_SIZE or image.shape[1] > IMAGE_SIZE
        image = cv2.resize(
            image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
        )
    return np.ascontiguousarray(image)


def decode_face(data: bytes) -> np.ndarray | None:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF...) to a 48x48 uint8 face; ``None`` if not an image."""
    if not data:
        return None
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    return to_face48(image)


def build_frame(
    sample_ids: list[str], labels: list[int] | np.ndarray, splits: list[str], sources: list[str]
) -> pd.DataFrame:
    """The base columns of a table, checking that sample ids are unique."""
    frame = pd.DataFrame(
        {
            "sample_id": pd.array(sample_ids, dtype="string"),
            "emotion": np.asarray(labels, dtype=np.int64),
            "split": pd.array(splits, dtype="string"),
            "source": pd.array(sources, dtype="string"),
        }
    )
    frame.insert(2, "emotion_name", pd.Categorical.from_codes(frame["emotion"], categories=list(EMOTIONS)))
    duplicated = frame["sample_id"].duplicated(keep=False)
    if duplicated.any():
        # Should not happen for ids derived from paths or rows; a data set's own
        # sample_id column may still repeat, so make them unique rather than fail.
        counts = frame.groupby("sample_id", observed=True).cumcount().astype(str)
        frame.loc[duplicated, "sample_id"] = frame.loc[duplicated, "sample_id"] + "#" + counts[duplicated]
        log.warning("%d faces share a sample_id; suffixed with '#k' to keep them unique", int(duplicated.sum()))
    return frame
