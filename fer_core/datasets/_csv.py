"""Reading the original ``fer2013.csv``: ``emotion,pixels,Usage`` with 2,304 grey values per row."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core._validation import DatasetError
from fer_core.constants import IMAGE_SIZE, NUM_PIXELS, SPLIT_ALIASES, UNSPLIT
from fer_core.labels import EMOTION_TO_ID, normalise

from ._progress import progress_bar
from ._table import FaceTable, build_frame

__all__ = ["read_csv", "parse_pixels", "labels_to_ids"]

#: How many bad rows a warning lists by number before it just counts.
_ROWS_LISTED = 10


def parse_pixels(text: object) -> np.ndarray | None:
    """One ``pixels`` field as (48, 48) uint8, or ``None`` unless it is exactly 2,304 numbers in 0..255."""
    if not isinstance(text, str):
        return None
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        return None
    try:
        values = np.array(tokens, dtype=np.int32)
    except (ValueError, OverflowError):  # OverflowError: a number beyond the int32 range
        return None
    if values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def labels_to_ids(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Label column values (ids 0-6 or names in the wild) as FER2013 ids; -1 where unknown.

    Returns the ids and, for unknown values, the original text (for the warning).
    """
    def as_text(value: object) -> str:
        if value is None or value != value:  # None or NaN
            return ""
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 3.0 from a float column means id 3
        return str(value).strip()

    text = values.astype(object).map(as_text)
    ids = np.array([EMOTION_TO_ID.get(normalise(v) or "", -1) for v in text], dtype=np.int64)
    return ids, text[ids < 0]


def _warn_unknown_labels(unknown: pd.Series, where: str) -> dict[str, int]:
    if unknown.empty:
        return {}
    counts = unknown.fillna("<empty>").value_counts()
    listed = ", ".join(f"{name} ({count} rows)" for name, count in counts.items())
    warnings.warn(f"{where}: skipped labels outside the seven emotions: {listed}", stacklevel=4)
    return {f"unknown_class:{name}": int(count) for name, count in counts.items()}


def frame_from_pixel_rows(
    table: pd.DataFrame, *, where: str, id_prefix: str, progress: bool = True
) -> tuple[np.ndarray, pd.DataFrame, dict[str, int]]:
    """Faces from a table with ``emotion`` and ``pixels`` columns (and optionally ``usage``).

    Rows whose pixels are not 2,304 numbers are skipped and reported by row number;
    rows whose label is not one of the seven are skipped with a warning.
    """
    n = len(table)
    labels, unknown = labels_to_ids(table["emotion"])
    skipped = _warn_unknown_labels(unknown, where)
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    good = np.zeros(n, dtype=bool)
    pixels = table["pixels"].tolist()
    for i, text in enumerate(progress_bar(pixels, total=n, desc=f"parsing {where}", enable=progress)):
        face = parse_pixels(text)
        if face is not None:
            images[i] = face
            good[i] = True
    bad_rows = np.flatnonzero(~good)
    if len(bad_rows):
        # Row numbers as a person counts them in the file: header is line 1, first face is row 1.
        shown = ", ".join(str(r + 1) for r in bad_rows[:_ROWS_LISTED])
        more = f" and {len(bad_rows) - _ROWS_LISTED} more" if len(bad_rows) > _ROWS_LISTED else ""
        warnings.warn(
            f"{where}: skipped {len(bad_rows)} rows whose pixels are not {NUM_PIXELS} numbers "
            f"in 0..255 (rows {shown}{more})",
            stacklevel=4,
        )
        skipped["bad_pixels_rows"] = len(bad_rows)
    keep = good & (labels >= 0)
    if "usage" in table.columns:
        usage = table["usage"].astype("string").str.strip().str.lower().str.replace(r"[\s_-]", "", regex=True)
        splits = usage.map(lambda u: SPLIT_ALIASES.get(u, u) if isinstance(u, str) else UNSPLIT).tolist()
    else:
        splits = [UNSPLIT] * n
    rows = np.flatnonzero(keep)
    frame = build_frame(
        [f"{id_prefix}{r:05d}" for r in rows],
        labels[rows],
        [splits[r] for r in rows],
        [f"{where}:{r + 1}" for r in rows],
    )
    return images[rows], frame, skipped


def read_csv(path: Path, *, progress: bool = True) -> FaceTable:
    """Read ``fer2013.csv`` (``emotion,pixels[,Usage]``) or the same records as JSON Lines.

    Usage ``Training``/``PublicTest``/``PrivateTest`` become the splits ``train``/``val``/``test``.
    """
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            table = pd.read_json(path, lines=True, dtype=False)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, ValueError) as err:
        raise DatasetError(f"{path.name} is not a readable {path.suffix.lstrip('.').upper()} file: {err}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("emotion", "pixels") if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path.name} lacks the column(s) {missing}: a FER2013 CSV has the columns emotion,pixels,Usage "
            f"(found: {list(table.columns)})"
        )
    if table.empty:
        raise DatasetError(f"{path.name} has a header but no rows")
    images, frame, skipped = frame_from_pixel_rows(table, where=path.name, id_prefix="row", progress=progress)
    if len(frame) == 0:
        raise DatasetError(f"{path.name}: none of its {len(table)} rows holds a valid face")
    # Extra columns (quality fields of an enhanced CSV) ride along.
    own = ("emotion", "pixels", "usage", "sample_id", "split", "source", "emotion_name")
    extra = [c for c in table.columns if c not in own]
    rows = frame["source"].str.rsplit(":", n=1).str[1].astype(int).to_numpy() - 1
    for column in extra:
        original = table[column].iloc[rows]
        values = pd.to_numeric(original, errors="coerce")
        frame[column] = values.to_numpy() if values.notna().all() else original.to_numpy()
    if "sample_id" in table.columns and table["sample_id"].iloc[rows].is_unique:
        frame["sample_id"] = table["sample_id"].iloc[rows].astype("string").to_numpy()
    if "usage" not in table.columns and "split" in table.columns:
        frame["split"] = table["split"].iloc[rows].astype("string").to_numpy()
    return FaceTable(images=images, frame=frame, name=path.stem, skipped=skipped)
