"""Label sets: another label for each face of a table, read from a ``sample_id,label`` file.

A label file is a CSV (or Parquet) table with the columns ``sample_id`` (a face's id, as
:func:`fer_core.datasets.load_faces` names it) and ``label``: an emotion name in any spelling
:func:`fer_core.labels.normalise` reads (``anger``, ``Happy``, ``3``), or empty where the face
has no label in this set (a tie between annotators, an answer outside the seven). Other
columns are ignored. ``python -m annotate.ferplus VOTES --data DATA --out labels.csv`` writes
the FER+ majority labels in this form.

Notation: N faces in the table; labels are FER2013 ids 0-6, -1 for "no label in this set".
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fer_core._validation import FERError
from fer_core.labels import EMOTIONS, to_id

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = ["LABEL_FILE_COLUMNS", "LabelSet", "read_label_file", "load_label_set", "write_label_file",
           "relabel_table"]

#: The columns a label file must have.
LABEL_FILE_COLUMNS: tuple[str, str] = ("sample_id", "label")
#: Most bad rows quoted in one error message.
_MAX_QUOTED = 5


@dataclass(frozen=True)
class LabelSet:
    """A label file read against a table of faces (:func:`load_label_set`)."""

    name: str  #: what reports call this set (the file's stem unless named)
    labels: np.ndarray  #: (N,) int64 FER2013 ids aligned with the table; -1: no label
    file: str  #: the file's name
    sha256: str  #: of the file's bytes

    @property
    def labelled(self) -> np.ndarray:
        """(N,) bool: the faces this set gives a label."""
        return self.labels >= 0

    def summary(self) -> dict[str, Any]:
        """Name, file, sha256, faces labelled and faces left out (for a model card or a report)."""
        labelled = int(self.labelled.sum())
        return {"name": self.name, "file": self.file, "sha256": self.sha256, "faces": labelled,
                "left_out": int(len(self.labels) - labelled)}


def _read_frame(file: Path) -> tuple[pd.DataFrame, str]:
    """The file's table, as text ('' for a missing value), and what its rows are called in messages."""
    if not file.is_file():
        raise FERError(f"label file {str(file)!r} does not exist or is not a file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(file)
            unit = "row"
        else:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False)
            unit = "line"
    except Exception as exc:  # pandas and pyarrow raise many types for a file that is not a table
        raise FERError(f"cannot read label file {file.name!r} as a CSV or Parquet table "
                       f"({type(exc).__name__})") from None
    missing = [c for c in LABEL_FILE_COLUMNS if c not in frame.columns]
    if missing:
        raise FERError(f"label file {file.name!r} lacks the column(s) {', '.join(missing)}: it needs "
                       f"{', '.join(LABEL_FILE_COLUMNS)} (found {', '.join(map(str, frame.columns)) or 'none'})")
    text = frame[list(LABEL_FILE_COLUMNS)].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                                else str(v).strip())
    return text, unit


def _quote(problems: list[str], what: str) -> str:
    shown = "; ".join(problems[:_MAX_QUOTED])
    more = f" (and {len(problems) - _MAX_QUOTED} more)" if len(problems) > _MAX_QUOTED else ""
    return f"{what}: {shown}{more}"


def _parse_labels(frame: pd.DataFrame, file: Path, unit: str) -> np.ndarray:
    """FER2013 id of each row's label (-1 where empty); FERError naming the rows of unknown names or bad ids."""
    # Line numbers as a person sees them: the CSV header is line 1; Parquet rows count from 1.
    first = 2 if unit == "line" else 1
    ids = np.full(len(frame), -1, dtype=np.int64)
    problems = []
    for i, (sample_id, label) in enumerate(zip(frame["sample_id"], frame["label"])):
        if not sample_id:
            problems.append(f"{unit} {i + first}: empty sample_id")
        if label:
            found = to_id(label)
            if found is None:
                problems.append(f"{unit} {i + first}: unknown emotion {label[:30]!r}")
            else:
                ids[i] = found
    repeated = frame["sample_id"].duplicated(keep="first").to_numpy() & (frame["sample_id"] != "").to_numpy()
    problems += [f"{unit} {i + first}: sample_id {frame['sample_id'].iat[i][:60]!r} repeats an earlier row"
                 for i in np.flatnonzero(repeated)]
    if problems:
        raise FERError(_quote(problems, f"label file {file.name!r} has bad rows") + "; a label is one of "
                       f"{', '.join(EMOTIONS)} (or a synonym), or empty for a face without one")
    return ids


def read_label_file(path: str | os.PathLike[str], table: FaceTable) -> np.ndarray:
    """The labels a label file gives ``table``'s faces, by ``sample_id``.

    Parameters
    ----------
    path : path
        A CSV or Parquet file with the columns ``sample_id, label`` (see the module docstring).
    table : FaceTable
        The faces the labels are for.

    Returns
    -------
    labels : (N,) int64
        The FER2013 id of each face of ``table``; -1 where the file gives it no label (an
        empty label, or no row for the face).

    Raises :class:`FERError` for a missing file or column, an unknown emotion name, an empty or
    repeated ``sample_id`` (naming the lines), and for a file none of whose rows is a face of
    ``table``. Rows for faces outside ``table`` (another split's faces) are ignored, with a
    warning that counts them.
    """
    file = Path(path).expanduser()
    frame, unit = _read_frame(file)
    ids = _parse_labels(frame, file, unit)
    row_of = pd.Series(np.arange(len(table)), index=table.frame["sample_id"].astype(str).to_numpy())
    found = frame["sample_id"].isin(row_of.index).to_numpy()
    if len(frame) and not found.any():
        example = frame["sample_id"].iat[0][:60]
        raise FERError(f"none of the {len(frame):,} sample ids in label file {file.name!r} is a face of "
                       f"{table.name or 'the data'!r} (e.g. {example!r}; the data's ids look like "
                       f"{str(table.frame['sample_id'].iat[0]) if len(table) else 'nothing: it is empty'!r}): "
                       "was the file written for the same copy of the data, read the same way?")
    outside = int((~found).sum())
    if outside:
        warnings.warn(f"{outside:,} rows of label file {file.name!r} name faces outside {table.name or 'the data'!r} "
                      "(another split's faces, or another copy of the data); they are ignored", UserWarning,
                      stacklevel=2)
    labels = np.full(len(table), -1, dtype=np.int64)
    labels[row_of.loc[frame["sample_id"][found]].to_numpy()] = ids[found]
    return labels


def load_label_set(path: str | os.PathLike[str], table: FaceTable, *, name: str | None = None) -> LabelSet:
    """:func:`read_label_file` with the file's name and sha256, named ``name`` (default: the file's stem)."""
    file = Path(path).expanduser()
    labels = read_label_file(file, table)
    return LabelSet(name or file.stem, labels, file.name, hashlib.sha256(file.read_bytes()).hexdigest())


def write_label_file(path: str | os.PathLike[str], sample_ids: list[str], labels: np.ndarray) -> Path:
    """Write a label file (CSV, or Parquet for a ``.parquet`` name): one row per face, -1 as an empty label."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(sample_ids),):
        raise ValueError(f"labels must have shape ({len(sample_ids)},), got {labels.shape}")
    if ((labels < -1) | (labels >= len(EMOTIONS))).any():
        raise ValueError(f"labels must be FER2013 ids 0-6 or -1, got {sorted(set(labels.tolist()))}")
    names = np.array([*EMOTIONS, ""], dtype=object)[labels]  # -1 indexes the empty name
    frame = pd.DataFrame({"sample_id": [str(s) for s in sample_ids], "label": names})
    file = Path(path).expanduser()
    if file.suffix.lower() == ".parquet":
        frame.to_parquet(file, index=False)
    else:
        frame.to_csv(file, index=False)
    return file


def relabel_table(table: FaceTable, labels: np.ndarray) -> FaceTable:
    """The faces of ``table`` that ``labels`` (N,) labels (>= 0), carrying those labels instead of their own."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(table),):
        raise ValueError(f"labels must have shape ({len(table)},), got {labels.shape}")
    kept = table.select(labels >= 0)
    frame = kept.frame.copy()
    frame["emotion"] = labels[labels >= 0]
    frame["emotion_name"] = pd.Categorical.from_codes(frame["emotion"], categories=list(EMOTIONS))
    return type(kept)(images=kept.images, frame=frame, name=kept.name, skipped=dict(kept.skipped))
