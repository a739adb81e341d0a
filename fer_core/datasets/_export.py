"""Writing a table of faces as Parquet, CSV or JSON Lines, and re-splitting it by emotion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fer_core._io import atomic_write
from fer_core._validation import DatasetError

from ._table import FaceTable

__all__ = ["save_table", "stratified_split", "USAGE_OF_SPLIT"]

#: The original fer2013.csv names of our splits.
USAGE_OF_SPLIT = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _pixels_text(images: np.ndarray) -> list[str]:
    return [" ".join(map(str, face.ravel().tolist())) for face in images]


def _png_bytes(images: np.ndarray) -> list[bytes]:
    out = []
    for face in images:
        ok, buffer = cv2.imencode(".png", face)
        if not ok:  # pragma: no cover - cv2 encodes any uint8 grey array
            raise RuntimeError("PNG encoding failed")
        out.append(buffer.tobytes())
    return out


def _plain_frame(table: FaceTable) -> pd.DataFrame:
    frame = table.frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, (pd.CategoricalDtype, pd.StringDtype)):
            frame[column] = frame[column].astype(object)
    return frame


def save_table(table: FaceTable, path: str | Path) -> Path:
    """Write ``table`` in the format its extension names.

    - ``.parquet``: the enhanced schema, ``image`` as an image feature holding PNG
      bytes (read back by ``datasets`` and :func:`load_faces` alike);
    - ``.csv`` / ``.jsonl``: ``emotion, pixels, Usage`` first, as in the original
      ``fer2013.csv`` (pixels as 2,304 space-separated grey values), then the other fields.

    The file is written next to its final name and moved into place, so a failed
    write never leaves half a file.
    """
    out = Path(path)
    kind = _FORMATS.get(out.suffix.lower())
    if kind is None:
        raise DatasetError(f"cannot write {out.name}: choose a .parquet, .csv or .jsonl file name")
    if not out.parent.exists():
        raise DatasetError(f"cannot write {out}: the folder {out.parent} does not exist")
    frame = _plain_frame(table)
    with atomic_write(out) as tmp:
        if kind == "parquet":
            _write_parquet_rows(table, frame, tmp)
        else:
            _write_text_rows(table, frame, tmp, kind)
    return out


#: Rows written at a time (Parquet, CSV, JSON Lines): the images or pixel text of a whole data set are
#: never held at once.
TEXT_CHUNK_ROWS = 2048


def _with_images(table: FaceTable, frame: pd.DataFrame, rows: slice) -> pd.DataFrame:
    part = frame.iloc[rows].copy()
    part.insert(3, "image", [{"bytes": b, "path": None} for b in _png_bytes(table.images[rows])])
    return part


def _write_parquet_rows(table: FaceTable, frame: pd.DataFrame, path: Path) -> None:
    """The enhanced schema with ``image`` as a ``datasets`` image feature, written in chunks of rows.

    The schema (with the ``datasets`` features in its metadata) comes from the first rows;
    every chunk is cast to it, so the PNG bytes of the whole table are never held at once.
    """
    import datasets as hf
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = _with_images(table, frame, slice(0, TEXT_CHUNK_ROWS))
    features = hf.Features.from_arrow_schema(hf.Dataset.from_pandas(head.drop(columns="image"),
                                                                    preserve_index=False).data.schema)
    features["image"] = hf.Image()
    schema = hf.Dataset.from_pandas(head, features=hf.Features({c: features[c] for c in head.columns}),
                                    preserve_index=False).data.schema
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(frame), 1), TEXT_CHUNK_ROWS):
            part = head if start == 0 else _with_images(table, frame, slice(start, start + TEXT_CHUNK_ROWS))
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))


def _write_text_rows(table: FaceTable, frame: pd.DataFrame, path: Path, kind: str) -> None:
    """``emotion, pixels, Usage`` then the other fields, as CSV or JSON Lines, in chunks of rows."""
    usage = frame["split"].map(lambda s: USAGE_OF_SPLIT.get(s, s))
    with open(path, "w", newline="") as handle:
        for start in range(0, max(len(frame), 1), TEXT_CHUNK_ROWS):
            rows = slice(start, start + TEXT_CHUNK_ROWS)
            part = frame.iloc[rows]
            records = pd.concat(
                [
                    pd.DataFrame({"emotion": part["emotion"], "pixels": _pixels_text(table.images[rows]),
                                  "Usage": usage.iloc[rows]}),
                    part.drop(columns=["emotion"]),
                ],
                axis=1,
            )
            if kind == "csv":
                records.to_csv(handle, index=False, header=start == 0)
            else:
                records.to_json(handle, orient="records", lines=True)  # each chunk ends with a newline


def _cut(index: np.ndarray, share: float, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into a ``share`` part and the rest, stratified by ``labels``."""
    if share <= 0 or len(index) == 0:
        return index[:0], index
    if share >= 1:
        return index, index[:0]
    from sklearn.model_selection import train_test_split

    first, rest = train_test_split(index, train_size=share, stratify=labels, random_state=seed)
    return np.sort(first), np.sort(rest)


def stratified_split(
    table: FaceTable, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), *, seed: int = 0
) -> FaceTable:
    """A copy of ``table`` re-split into train/val/test, stratified by emotion.

    Parameters
    ----------
    fractions : (train, val, test), default=(0.7, 0.15, 0.15)
        Non-negative, summing to 1; a zero fraction leaves that split empty.
    seed : int
        The same seed gives the same split.
    """
    parts = np.asarray(fractions, dtype=float)
    if parts.shape != (3,) or (parts < 0).any() or not np.isclose(parts.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    labels = table.labels
    index = np.arange(len(table))
    splits = np.empty(len(table), dtype=object)
    try:
        train, rest = _cut(index, float(parts[0]), labels, seed)
        val_share = parts[1] / (parts[1] + parts[2]) if len(rest) else 0.0
        val, test = _cut(rest, float(val_share), labels[rest], seed)
    except ValueError as err:  # scikit-learn: a class too small to be stratified
        raise DatasetError(f"cannot split {len(table)} faces {tuple(fractions)} stratified by emotion: {err}") from None
    splits[train], splits[val], splits[test] = "train", "val", "test"
    frame = table.frame.copy()
    frame["split"] = pd.array(splits.tolist(), dtype="string")
    return FaceTable(images=table.images, frame=frame, name=table.name, skipped=dict(table.skipped))
