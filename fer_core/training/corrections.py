"""Corrections of the training labels, read from the file the annotation tool exports.

``python -m annotate.corrections --db fer_annotations.db --out corrections.csv`` (or
the Relabel tab's *Corrections* export, CSV or Parquet) writes one row per face with votes.
Training reads these columns (others are ignored):

``dataset``, ``sample_id``
    the face, as the Relabel tab registered it (the data set's name and the face's id);
``original_label``
    the label the face came with: one of the seven emotions;
``resolved_label``
    what the votes say now: an emotion, ``not_a_face``, or empty on a tie;
``content_sha256`` (optional)
    sha256 of the face's pixels; where given, it must match the training face;
``judged_unsure`` (optional)
    the votes' plurality was *unsure*: the face keeps its label;
``votes_<emotion>`` (needed by ``--soft-labels``)
    how many annotators chose each of the seven emotions.

A face resolved to an emotion trains on it; ``not_a_face`` drops it; unsure faces, ties and
faces without votes keep the label they came with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fer_core._validation import FERError
from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS
from fer_core.training.utils import warn

if TYPE_CHECKING:
    from fer_core.datasets import FaceTable

__all__ = ["NOT_A_FACE", "REQUIRED_COLUMNS", "VOTE_COLUMNS", "Corrections", "read_corrections_file", "read_corrections"]

#: The label of a face that is not a face (the annotation store's name for it).
NOT_A_FACE = "not_a_face"
#: Columns every corrections file must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("dataset", "sample_id", "original_label", "resolved_label")
#: The emotion vote counts, FER2013 order (``--soft-labels`` needs them).
VOTE_COLUMNS: tuple[str, ...] = tuple(f"votes_{e}" for e in EMOTIONS)
_TRUE = {"true", "1", "yes"}


@dataclass(frozen=True)
class Corrections:
    """What the corrections file says about the training faces, row-aligned with the table."""

    labels: np.ndarray  #: (N,) FER2013 ids: the resolved emotion where there is one, else the label as given
    drop: np.ndarray  #: (N,) bool: resolved ``not_a_face``
    votes: np.ndarray  #: (N, 7) votes per emotion, FER2013 order (zeros without votes or vote columns)
    summary: dict[str, Any]  #: counts and where they came from (for the model card)


def _read_table(file: Path) -> pd.DataFrame:
    if not file.is_file():
        raise FERError(f"--corrections: no file at {str(file)!r} (export one with "
                       "`python -m annotate.corrections --db DB --out corrections.csv`)")
    try:
        if file.suffix.lower() == ".parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas and pyarrow raise many types for a file that is not a table
        raise FERError(f"--corrections: cannot read {file.name} as a CSV or Parquet table ({exc})") from None


def _text(column: pd.Series) -> pd.Series:
    """Strings, with missing values (None, NaN) as ''."""
    return column.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def _check_labels(file: Path, column: str, values: pd.Series, allowed: list[str]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise FERError(f"--corrections: {file.name} has unknown labels in {column}: {shown}; "
                       f"expected one of {', '.join(a or repr('') for a in allowed)}")


def read_corrections_file(path: str | Path, *, need_votes: bool = False) -> pd.DataFrame:
    """The corrections table at ``path`` (CSV or Parquet), checked and normalised.

    Returns ``dataset, sample_id, content_sha256`` (None where not given), ``original_label``,
    ``resolved_label`` ('' on a tie), ``judged_unsure`` (bool) and :data:`VOTE_COLUMNS` (int,
    zeros where the file has none). Raises :class:`FERError` for a missing file or column, an
    unknown label, a vote count that is not a number, or a face listed twice.
    """
    file = Path(path).expanduser()
    frame = _read_table(file)
    wanted = [*REQUIRED_COLUMNS, *(VOTE_COLUMNS if need_votes else ())]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        votes = ", and the votes_<emotion> counts for --soft-labels" if need_votes else ""
        raise FERError(f"--corrections: {file.name} lacks the columns {', '.join(missing)} (it needs "
                       f"{', '.join(REQUIRED_COLUMNS)}{votes})")
    out = pd.DataFrame({c: _text(frame[c]) for c in REQUIRED_COLUMNS})
    _check_labels(file, "original_label", out["original_label"], list(EMOTIONS))
    _check_labels(file, "resolved_label", out["resolved_label"], [*EMOTIONS, NOT_A_FACE, ""])
    hashes = _text(frame["content_sha256"]) if "content_sha256" in frame else [""] * len(frame)
    out["content_sha256"] = pd.Series([h or None for h in hashes], index=out.index, dtype=object)
    unsure = frame["judged_unsure"] if "judged_unsure" in frame else pd.Series(False, index=frame.index)
    out["judged_unsure"] = [str(v).strip().lower() in _TRUE for v in unsure]
    for column in VOTE_COLUMNS:
        try:
            out[column] = pd.to_numeric(frame[column]).astype(np.int64) if column in frame else 0
        except (ValueError, TypeError):
            raise FERError(f"--corrections: {file.name}'s column {column} holds values that are not counts") from None
    twice = out.duplicated(["dataset", "sample_id"])
    if twice.any():
        raise FERError(f"--corrections: {file.name} lists {int(twice.sum())} faces twice, "
                       f"e.g. {out.loc[twice, 'sample_id'].iloc[0]!r}")
    return out


def _no_rows(file: Path, frame: pd.DataFrame, dataset: str) -> None:
    known = sorted(set(frame["dataset"]))
    warn(f"{file.name} holds no corrections for data set {dataset!r}"
         + (f" (it has corrections for: {', '.join(map(repr, known))}; choose one with --corrections-dataset)"
            if known else "") + "; training on the labels as given")


def read_corrections(path: str | Path, dataset: str, table: FaceTable, *, need_votes: bool = False) -> Corrections:
    """Apply the rows of data set ``dataset`` in the corrections file ``path`` to ``table``'s faces (by sample_id).

    Raises :class:`FERError` when the file holds other faces under the same ids (another
    label, or other pixels); warns, and changes nothing, when it holds no rows for ``dataset``.
    """
    import hashlib

    file = Path(path).expanduser()
    frame = read_corrections_file(file, need_votes=need_votes)
    n = len(table)
    labels, drop = table.labels.copy(), np.zeros(n, dtype=bool)
    votes = np.zeros((n, len(EMOTIONS)), dtype=np.int64)
    summary: dict[str, Any] = {"file": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                               "dataset": dataset, "faces_with_votes": 0, "relabelled": 0, "confirmed": 0,
                               "dropped": 0, "kept_original": 0, "soft_labelled": 0, "not_in_data": 0}
    rows_here = frame[frame["dataset"] == dataset]
    if not len(rows_here):
        _no_rows(file, frame, dataset)
        return Corrections(labels, drop, votes, summary)
    rows_here, rows = _match_rows(file, rows_here, dataset, table, summary)
    votes[rows] = rows_here[list(VOTE_COLUMNS)].to_numpy(dtype=np.int64)
    outcome = rows_here["resolved_label"].to_numpy(dtype=object)
    # A face judged unsure keeps its given label: it counts as kept, not as confirmed.
    is_emotion = np.isin(outcome, EMOTIONS) & ~rows_here["judged_unsure"].to_numpy(dtype=bool)
    new = np.array([EMOTIONS.index(r) if r in EMOTIONS else -1 for r in outcome], dtype=np.int64)
    summary["faces_with_votes"] = len(rows)
    summary["relabelled"] = int((is_emotion & (new != labels[rows])).sum())
    summary["confirmed"] = int((is_emotion & (new == labels[rows])).sum())
    summary["dropped"] = int((outcome == NOT_A_FACE).sum())
    summary["kept_original"] = len(rows) - summary["relabelled"] - summary["confirmed"] - summary["dropped"]
    labels[rows[is_emotion]] = new[is_emotion]
    drop[rows[outcome == NOT_A_FACE]] = True
    return Corrections(labels, drop, votes, summary)


def _match_rows(file: Path, frame: pd.DataFrame, dataset: str, table: FaceTable,
                summary: dict[str, Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """The file's rows that name training faces, and those faces' rows in ``table``."""
    row_of = pd.Series(np.arange(len(table)), index=table.frame["sample_id"].astype(str).to_numpy())
    found = frame["sample_id"].isin(row_of.index).to_numpy()
    summary["not_in_data"] = int((~found).sum())
    if summary["not_in_data"]:
        warn(f"{summary['not_in_data']} faces of data set {dataset!r} in {file.name} are not among the "
             "training faces (val faces, or another copy of the data); they are ignored")
    frame = frame[found]
    rows = row_of.loc[frame["sample_id"]].to_numpy()
    given = [EMOTIONS[int(i)] for i in table.labels[rows]]
    differs = [sid for sid, original, g, h, r in zip(frame["sample_id"], frame["original_label"], given,
                                                     frame["content_sha256"], rows)
               if original != g or (h is not None and h != pixels_sha256(table.images[r]))]
    if differs:
        raise FERError(f"--corrections: {file.name}'s data set {dataset!r} holds other faces than {table.name!r} "
                       f"under {len(differs)} of the same sample ids (another label or other pixels), e.g. "
                       f"{differs[:3]}; name the right data set with --corrections-dataset")
    return frame, rows
