"""Exports of the store: the corrections table (CSV or Parquet) and FER+-style vote counts.

The corrections file is what training reads (``python -m fer_core.train DATA --corrections
corrections.csv``, see :mod:`fer_core.training.corrections`); ``python -m annotate.corrections``
writes it from the command line, the Relabel tab's exports are the same files.

Corrections: one row per face with at least one vote, ``sample_id``, the original and
resolved labels, whether the votes judged it ``unsure`` (it then keeps its original label
and is not ``changed``), the vote counts per label and the annotators (see
:meth:`annotate.store.Store.resolved_labels`). In CSV, ``annotators`` is a JSON list (names
may hold commas or semicolons); in Parquet it is a list of strings.

FER+ style: like ``fer2013new.csv`` of FER+ (Barsoum et al., 2016), one row per face and one
column per label holding how many annotators chose it (``not_a_face`` is FER+'s ``NF``,
``unsure`` its ``unknown``), ready to train on vote distributions.

Files are written to a temporary name next to the target and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from fer_core._io import atomic_write

from .errors import AnnotateError
from .labels import VOTE_LABELS
from .store import VOTE_COLUMNS, Store

__all__ = [
    "CORRECTION_COLUMNS",
    "FERPLUS_COLUMNS",
    "corrections",
    "ferplus_votes",
    "export_corrections",
    "export_ferplus",
    "open_existing_store",
    "table_format",
    "write_table",
]

#: Columns of :func:`corrections`, in order.
CORRECTION_COLUMNS: tuple[str, ...] = (
    "dataset", "sample_id", "content_sha256", "original_label", "resolved_label", "changed", "judged_unsure",
    *VOTE_COLUMNS, "n_annotators", "annotators",
)
#: Columns of :func:`ferplus_votes`, in order.
FERPLUS_COLUMNS: tuple[str, ...] = ("dataset", "sample_id", "original_label", *VOTE_LABELS)


def corrections(store: Store, dataset: str | None = None, *, only_changed: bool = False) -> pd.DataFrame:
    """Faces with votes and their resolved labels (:data:`CORRECTION_COLUMNS`).

    ``only_changed`` keeps relabelled ones.
    """
    table = store.resolved_labels(dataset)
    if only_changed:
        table = table[table["changed"]].reset_index(drop=True)
    return table[list(CORRECTION_COLUMNS)]


def ferplus_votes(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Vote counts per face and label, FER+ style (:data:`FERPLUS_COLUMNS`), for faces with at least one vote."""
    table = store.resolved_labels(dataset)
    out = table[["dataset", "sample_id", "original_label"]].copy()
    for label, column in zip(VOTE_LABELS, VOTE_COLUMNS):
        out[label] = table[column].to_numpy()
    return out


def table_format(path: Path, fmt: str | None = None) -> str:
    """``fmt``, else the format ``path``'s suffix names: ``csv`` or ``parquet``; anything else is refused."""
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "parquet"):
        raise AnnotateError(f"cannot tell the export format of {path.name!r}; use a .csv or .parquet file name")
    return fmt


def write_table(table: pd.DataFrame, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``table`` whole or not at all (CSV or Parquet, :func:`table_format`); lists of annotators as JSON in CSV."""
    path = Path(path).expanduser()
    fmt = table_format(path, fmt)
    if not path.parent.is_dir():
        raise AnnotateError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if fmt == "csv" and "annotators" in table.columns:
        table = table.assign(annotators=[json.dumps(list(names), ensure_ascii=False) for names in table["annotators"]])
    with atomic_write(path) as tmp:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
    return path


def export_corrections(store: Store, path: str | os.PathLike[str], dataset: str | None = None, *,
                       only_changed: bool = False, fmt: str | None = None) -> Path:
    """Write :func:`corrections` to ``path`` (``.csv`` or ``.parquet``, or ``fmt``); returns the path."""
    return write_table(corrections(store, dataset, only_changed=only_changed), path, fmt)


def export_ferplus(store: Store, path: str | os.PathLike[str], dataset: str | None = None, *,
                   fmt: str | None = None) -> Path:
    """Write :func:`ferplus_votes` to ``path`` (``.csv`` or ``.parquet``, or ``fmt``); returns the path."""
    return write_table(ferplus_votes(store, dataset), path, fmt)


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--db`` option of the commands that read an existing store (opened by :func:`open_existing_store`)."""
    parser.add_argument("--db", default=None,
                        help="the annotation store: SQLite file or SQLAlchemy URL; None: the app's "
                             "(FER_DB_URL, else /data, else the working folder)")


def open_existing_store(db: str) -> Store:
    """The annotation store at ``db`` (path or SQLAlchemy URL), upgraded to this version's schema.

    Unlike :func:`annotate.store.open_store`, never creates one: raises :class:`AnnotateError`
    when there is no database at ``db`` or it is not an annotation store.
    """
    from sqlalchemy.exc import DBAPIError

    from .engine import create_store_engine, to_url
    from .migrate import current_revision, upgrade

    url = to_url(db)
    where = url.render_as_string(hide_password=True)
    database = url.database or ""
    on_disk = (url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
               and not database.startswith("file:"))
    if on_disk and not Path(database).expanduser().is_file():
        raise AnnotateError(f"no annotation database at {database!r}")
    engine = create_store_engine(url)
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise AnnotateError(f"cannot read {where} as an annotation database ({exc.orig})") from None
    if revision is None:
        engine.dispose()
        raise AnnotateError(f"{where} is not an annotation store (it has no annotate schema)")
    upgrade(engine)  # a store written by an older version reads like the app reads it
    return Store(engine)
