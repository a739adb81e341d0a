"""Import crowd votes into the annotation store, as decisions of named annotators.

Two layouts are read (CSV, or Parquet for the second):

* FER+ (``fer2013new.csv`` of Barsoum et al., 2016, keyed by file as in
  ``../shared/ferplus/fer2013_votes.csv``): a ``path`` column (the face's file relative to the
  data set's folder) and one count column per answer: ``neutral, happiness, surprise, sadness,
  anger, disgust, fear, contempt, unknown, NF``. Contempt (not one of the seven) and unknown
  become ``unsure``; NF becomes ``not_a_face``.
* This tool's FER+-style export (:func:`annotate.export.ferplus_votes`): ``sample_id`` and one
  count column per vote label (:data:`annotate.labels.VOTE_LABELS`).

A face with votes ``{angry: 7, neutral: 2, sad: 1}`` becomes ten decisions, one per annotator
``<prefix>-1`` .. ``<prefix>-10`` (the votes handed out in label order), so every figure the store
computes (resolved labels, Fleiss' kappa, exports) covers imported votes like typed-in ones.

The import checks the whole table before it writes: an unknown face, a vote that is not a
non-negative integer or a missing column is reported with its line number, and nothing is
written. The write is one transaction. Importing the same table twice adds nothing: an
annotator whose current vote on a face already says the same is left alone; a different vote
is added as their newer answer (it replaces the old one), and a vote the table no longer holds
is undone.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection, insert, select
from tqdm.auto import tqdm

from fer_core._cli import cli_main
from fer_core.datasets import FaceTable, load_faces

from .errors import AnnotateError
from .labels import NOT_A_FACE, UNSURE, VOTE_LABELS, check_annotator, check_dataset
from .models import Annotator, Decision, Face
from .store import Store, content_hash, open_store

__all__ = ["FERPLUS_VOTE_COLUMNS", "VoteTable", "ImportReport", "read_vote_table", "rows_of_faces", "import_votes",
           "main"]

#: Count columns of the FER+ layout, and the vote label each one adds to.
FERPLUS_VOTE_COLUMNS: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad", "anger": "angry",
    "disgust": "disgust", "fear": "fear", "contempt": UNSURE, "unknown": UNSURE, "NF": NOT_A_FACE,
}
#: The strategy recorded on imported decisions (what the annotator was "shown": an imported table).
IMPORT_STRATEGY = "import"
#: Most bad rows quoted in one error message.
_MAX_QUOTED = 10
#: Rows per insert statement, and per progress-bar step.
_CHUNK = 5000
_COUNT = re.compile(r"\s*\d+\s*")


@dataclass(frozen=True)
class VoteTable:
    """Votes read from a file: one row per face.

    ``keys`` are the faces' names as the file gives them (a file path in the FER+ layout, a
    ``sample_id`` in the export layout); ``counts`` is (N, len(VOTE_LABELS)) int64 in
    :data:`annotate.labels.VOTE_LABELS` order; ``lines`` the file line of each row (header = 1).
    """

    layout: str
    keys: list[str]
    counts: np.ndarray
    lines: np.ndarray


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    dataset: str
    faces: int
    votes: int
    added: int
    unchanged: int
    undone: int
    annotators: list[str]

    def summary(self) -> str:
        return (f"data set {self.dataset!r}: {self.faces:,} faces, {self.votes:,} votes read; "
                f"{self.added:,} decisions added, {self.unchanged:,} already in the store, "
                f"{self.undone:,} votes no longer in the table undone; annotators "
                f"{self.annotators[0]} .. {self.annotators[-1]}" if self.annotators else
                f"data set {self.dataset!r}: no votes in the table")


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise AnnotateError(f"vote table {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            return frame.astype({c: str for c in frame.columns if frame[c].dtype != object})
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise AnnotateError(f"cannot read vote table {path.name!r}: {type(err).__name__}") from None
    raise AnnotateError(f"cannot tell the format of {path.name!r}; give a .csv or .parquet file")


def _layout(columns: Sequence[str]) -> tuple[str, str, dict[str, str]]:
    """The layout of a table with these columns: (name, key column, {count column: vote label})."""
    if "path" in columns or "ferplus_image" in columns:
        layout, key, mapping = "ferplus", "path", FERPLUS_VOTE_COLUMNS
    elif "sample_id" in columns:
        layout, key, mapping = "export", "sample_id", {label: label for label in VOTE_LABELS}
    else:
        raise AnnotateError("the vote table needs a 'path' column (FER+ layout) or a 'sample_id' column "
                            "(this tool's FER+-style export)")
    missing = [c for c in (key, *mapping) if c not in columns]
    if missing:
        raise AnnotateError(f"the vote table ({layout} layout) lacks the column(s) {missing}")
    return layout, key, mapping


def read_vote_table(path: str | os.PathLike[str]) -> VoteTable:
    """Read and check a vote table in either layout (see the module docstring).

    Raises :class:`AnnotateError` naming the first bad rows by line: a vote that is not a
    non-negative integer, an empty or repeated key, a row without a single vote.
    """
    frame = _read_frame(Path(path).expanduser())
    layout, key, mapping = _layout(list(frame.columns))
    if "dataset" in frame.columns and frame["dataset"].nunique() > 1:
        raise AnnotateError("the vote table holds several data sets; export one data set per file")
    lines = np.arange(len(frame), dtype=np.int64) + 2
    problems: list[str] = []
    counts = np.zeros((len(frame), len(VOTE_LABELS)), dtype=np.int64)
    for column, label in mapping.items():
        cells = frame[column].astype(str)
        bad = ~cells.str.fullmatch(_COUNT)
        problems += [f"line {lines[i]}: {column} is {cells.iat[i][:20]!r}, not a non-negative whole number"
                     for i in np.flatnonzero(bad.to_numpy())[:_MAX_QUOTED]]
        values = pd.to_numeric(cells.where(~bad, "0")).to_numpy(dtype=np.int64)
        counts[:, VOTE_LABELS.index(label)] += values
    keys = frame[key].astype(str).str.strip()
    problems += [f"line {lines[i]}: empty {key}" for i in np.flatnonzero((keys == "").to_numpy())[:_MAX_QUOTED]]
    repeated = keys.duplicated(keep="first") & (keys != "")
    problems += [f"line {lines[i]}: {key} {keys.iat[i][:80]!r} repeats an earlier row"
                 for i in np.flatnonzero(repeated.to_numpy())[:_MAX_QUOTED]]
    if not problems:
        problems += [f"line {lines[i]}: no votes" for i in np.flatnonzero(counts.sum(axis=1) == 0)[:_MAX_QUOTED]]
    _raise_if(problems, "the vote table")
    return VoteTable(layout, keys.tolist(), counts, lines)


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        shown = "; ".join(problems[:_MAX_QUOTED])
        more = f" (and {len(problems) - _MAX_QUOTED} more)" if len(problems) > _MAX_QUOTED else ""
        raise AnnotateError(f"{what} has bad rows, nothing was imported: {shown}{more}")


def rows_of_faces(votes: VoteTable, table: FaceTable, data_root: Path, *, missing_ok: bool = False) -> np.ndarray:
    """Row of ``table`` for each vote row.

    A vote row whose face ``table`` lacks raises :class:`AnnotateError` naming its line, or
    with ``missing_ok`` gets -1 (e.g. the val rows of a table that holds only the train faces).
    """
    by_name: dict[str, int] = {str(s): i for i, s in enumerate(table.frame["sample_id"])}
    if votes.layout == "ferplus":
        # The FER+ key is a file path relative to the data set's folder: match on the files the
        # table was read from, then on the sample id (the path without its suffix).
        root = data_root.resolve()
        for i, source in enumerate(table.frame["source"].astype(str)):
            try:
                by_name.setdefault(Path(source).resolve().relative_to(root).as_posix(), i)
            except ValueError:
                continue
    rows = np.full(len(votes.keys), -1, dtype=np.int64)
    problems = []
    for i, key in enumerate(votes.keys):
        row = by_name.get(key)
        if row is None and votes.layout == "ferplus":
            row = by_name.get(Path(key).with_suffix("").as_posix())
        if row is None and not missing_ok:
            problems.append(f"line {votes.lines[i]}: no face {key[:80]!r} in the data set")
        elif row is not None:
            rows[i] = row
    _raise_if(problems, "the vote table")
    return rows


def _expand(counts: np.ndarray, prefix: str) -> tuple[list[str], list[list[str]]]:
    """Annotator names and, per face, the label of each annotator (``<prefix>-k`` votes k-th)."""
    most = int(counts.sum(axis=1).max(initial=0))
    names = [check_annotator(f"{prefix}-{k}") for k in range(1, most + 1)]
    labels = [[label for label, n in zip(VOTE_LABELS, row) for _ in range(int(n))] for row in counts]
    return names, labels


def import_votes(
    store: Store,
    votes: VoteTable,
    table: FaceTable,
    *,
    data_root: str | os.PathLike[str],
    dataset: str | None = None,
    annotator_prefix: str = "ferplus",
    progress: bool = True,
) -> ImportReport:
    """Record ``votes`` on the faces of ``table`` in one transaction; see the module docstring.

    ``dataset`` is the data set's name in the store (default ``table.name``, as the Relabel
    tab names it). Faces the store does not know yet are registered with their pixels' hash.
    """
    dataset = check_dataset(dataset or table.name)
    rows = rows_of_faces(votes, table, Path(data_root))
    names, per_face = _expand(votes.counts, annotator_prefix)
    sample_ids = [str(s) for s in table.frame["sample_id"].iloc[rows]]
    labels = table.labels[rows]
    hashes = [content_hash(image) for image in table.images[rows]]

    def write(conn: Connection) -> ImportReport:
        now = store.now()
        annotator_ids = _ensure_annotators(conn, names, now)
        face_ids = _ensure_faces(conn, dataset, sample_ids, labels, hashes, now)
        current = _current_votes(conn, face_ids, list(annotator_ids.values()))
        new_rows, undo_rows, unchanged = [], [], 0
        for face_id, face_labels in zip(face_ids, per_face):
            for name, aid in annotator_ids.items():
                k = int(name.rsplit("-", 1)[1]) - 1
                wanted = face_labels[k] if k < len(face_labels) else None
                held = current.get((face_id, aid))
                if held is not None and held[1] == wanted:
                    unchanged += 1
                elif wanted is not None:
                    new_rows.append({"annotator_id": aid, "face_id": face_id, "created_at": now, "label": wanted,
                                     "strategy": IMPORT_STRATEGY})
                elif held is not None:
                    undo_rows.append({"annotator_id": aid, "face_id": face_id, "created_at": now, "label": None,
                                      "reverses_id": held[0], "strategy": IMPORT_STRATEGY})
        # Answers and undos are separate statements: an executemany takes its columns from the first row.
        _insert_chunks(conn, new_rows, progress)
        _insert_chunks(conn, undo_rows, progress)
        return ImportReport(dataset, len(rows), int(votes.counts.sum()), len(new_rows), unchanged, len(undo_rows),
                            names)

    return store._write(write)


def _ensure_annotators(conn: Connection, names: list[str], now: object) -> dict[str, int]:
    known = dict(conn.execute(select(Annotator.name, Annotator.id).where(Annotator.name.in_(names))).all())
    missing = [{"name": n, "created_at": now} for n in names if n not in known]
    if missing:
        conn.execute(insert(Annotator), missing)
        known = dict(conn.execute(select(Annotator.name, Annotator.id).where(Annotator.name.in_(names))).all())
    return {n: int(known[n]) for n in names}


def _ensure_faces(conn: Connection, dataset: str, sample_ids: list[str], labels: np.ndarray,
                  hashes: list[str], now: object) -> list[int]:
    """Face ids of these faces, registering the unknown ones; a known face with other pixels or label raises."""
    query = select(Face.sample_id, Face.id, Face.original_label, Face.content_sha256).where(Face.dataset == dataset)
    known = {sid: (fid, label, sha) for sid, fid, label, sha in conn.execute(query)}
    conflicts = [sid for sid, label, sha in zip(sample_ids, labels, hashes)
                 if sid in known and (known[sid][1] != label or known[sid][2] not in (None, sha))]
    if conflicts:
        raise AnnotateError(f"{len(conflicts)} faces of data set {dataset!r} differ from the ones the store holds "
                            f"under the same sample_id (label or pixels), e.g. {conflicts[:3]}; import into another "
                            "data set name (--dataset)")
    missing = [{"dataset": dataset, "sample_id": sid, "content_sha256": sha, "original_label": int(label),
                "created_at": now} for sid, label, sha in zip(sample_ids, labels, hashes) if sid not in known]
    for start in range(0, len(missing), _CHUNK):
        conn.execute(insert(Face), missing[start:start + _CHUNK])
    if missing:
        known = {sid: (fid, label, sha) for sid, fid, label, sha in conn.execute(query)}
    return [int(known[sid][0]) for sid in sample_ids]


def _current_votes(conn: Connection, face_ids: list[int],
                   annotator_ids: list[int]) -> dict[tuple[int, int], tuple[int, str]]:
    """(face id, annotator id) -> (decision id, label) of each current vote of these annotators."""
    undone = {int(r) for r in conn.scalars(select(Decision.reverses_id).where(
        Decision.reverses_id.is_not(None), Decision.annotator_id.in_(annotator_ids)))}
    wanted = set(face_ids)
    current: dict[tuple[int, int], tuple[int, str]] = {}
    query = (select(Decision.id, Decision.face_id, Decision.annotator_id, Decision.label)
             .where(Decision.annotator_id.in_(annotator_ids), Decision.label.is_not(None), Decision.label != "skip")
             .order_by(Decision.id))
    for decision_id, face_id, aid, label in conn.execute(query):
        if face_id in wanted and decision_id not in undone:
            current[(int(face_id), int(aid))] = (int(decision_id), str(label))  # the latest answer wins
    return current


def _insert_chunks(conn: Connection, rows: list[dict], progress: bool) -> None:
    with tqdm(total=len(rows), desc="decisions", unit="row", disable=not progress or not rows) as bar:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            conn.execute(insert(Decision), chunk)
            bar.update(len(chunk))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotate.import_votes",
        description="Record a table of crowd votes (FER+ layout, or this tool's FER+-style export) as decisions "
                    "of named annotators in the annotation store. All or nothing; a second import adds nothing.",
    )
    parser.add_argument("votes", help="the vote table (.csv, or .parquet for this tool's export)")
    parser.add_argument("--db", default=None, help="database URL or SQLite file (default: the app's store)")
    parser.add_argument("--data", required=True, help="the data set the votes are about (any form the app reads)")
    parser.add_argument("--dataset", default=None,
                        help="the data set's name in the store (default: as the app names it)")
    parser.add_argument("--annotator-prefix", default="ferplus",
                        help="annotators are named PREFIX-1 .. PREFIX-N (default: ferplus)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="follow links and image paths that leave the data set's folder")
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    votes = read_vote_table(args.votes)
    table = load_faces(args.data, allow_outside_root=args.allow_outside_root)
    root = Path(args.data).expanduser()
    with open_store(args.db) as store:
        report = import_votes(store, votes, table, data_root=root if root.is_dir() else root.parent,
                              dataset=args.dataset, annotator_prefix=check_annotator(args.annotator_prefix))
        print(report.summary())
        print(f"store: {store.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
