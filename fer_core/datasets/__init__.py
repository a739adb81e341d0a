"""Load FER2013 in any real form into one table of faces, and write tables back out.

Forms (see ``DESIGN.md``):

1. Kaggle folder layout, ``<root>/<split>/<emotion>/<image>`` or ``<root>/<emotion>/<image>``
   (jpg, png, bmp, tiff);
2. the original ``fer2013.csv`` (``emotion,pixels,Usage``), or the same records as JSON Lines;
3. a Parquet file or folder of Parquet files with an ``image`` column and an
   ``emotion``/``label`` column, or a hub id ``user/name`` read with ``datasets``.

Every form gives a :class:`FaceTable`: ``images`` (N, 48, 48) uint8 and a
``frame`` with ``sample_id, emotion, emotion_name, split, source`` and any extra
columns. Folders, CSV and Parquet files are cached on disk, keyed by their
content, so a second load of the same data is fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from fer_core._cache import cache_key, cached
from fer_core._validation import DatasetError, check_path_exists

from ._cache import CACHE_VERSION, SUFFIX, read_table, write_table
from ._csv import read_csv
from ._export import save_table, stratified_split
from ._folder import list_folder, read_folder
from ._parquet import parquet_files, read_hub, read_parquet
from ._table import BASE_COLUMNS, FaceTable

__all__ = ["FaceTable", "BASE_COLUMNS", "load_faces", "save_table", "stratified_split", "DatasetError"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "csv", ".ndjson": "csv", ".parquet": "parquet"}


def _form_of(path: Path, folder_files: list) -> str:
    """``csv``, ``parquet`` or ``folder``; ``folder_files`` is what :func:`list_folder` found in a folder."""
    if path.is_file():
        form = _TABLE_SUFFIXES.get(path.suffix.lower())
        if form is None:
            raise DatasetError(
                f"{path.name}: unsupported file type {path.suffix or '(none)'}; give a folder of class folders, "
                f"a fer2013 .csv, a .jsonl, or a .parquet file"
            )
        return form
    if not any(path.iterdir()):
        raise DatasetError(f"the folder {str(path)!r} is empty")
    if not folder_files and parquet_files(path):
        return "parquet"
    return "folder"


def load_faces(
    source: str | Path,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> FaceTable:
    """Read a FER data set in any supported form into one :class:`FaceTable`.

    Parameters
    ----------
    source : str or Path
        A folder (Kaggle layout or Parquet files), a ``.csv``/``.jsonl``/``.parquet``
        file, or a hub id ``user/name`` when no such local path exists.
    cache_dir : path, optional
        The cache folder (decoded tables go to its ``datasets`` sub-folder); default
        :func:`fer_core.config.default_cache_dir`.
    use_cache : bool, default=True
        Read from and write to the cache. The key is a hash of the files' content,
        so changed files are read again.
    progress : bool, default=True
        Show a progress bar on long loads.
    allow_outside_root : bool, default=False
        Follow links (in a folder) and image paths (in Parquet rows) that lead outside the data
        set's own folder. By default such files are skipped (folders) or refused (Parquet), so a
        data set cannot make the app read other files of the machine.

    Raises
    ------
    DatasetError
        Missing path, empty folder, no readable face, a table without the expected columns.
        Corrupt images inside a folder and malformed rows are skipped with a warning instead.
    """
    if isinstance(source, str) and _HUB_ID.match(source) and not Path(source).exists():
        return read_hub(source, progress=progress, allow_outside_root=allow_outside_root)
    path = check_path_exists(source).resolve()
    # The folder is listed once: its image files decide the form and are then read.
    files, skipped = list_folder(path, allow_outside_root=allow_outside_root) if path.is_dir() else ([], {})
    form = _form_of(path, files)

    def read() -> FaceTable:
        if form == "folder":
            return read_folder(path, files=files, skipped=skipped, progress=progress,
                               allow_outside_root=allow_outside_root)
        if form == "csv":
            return read_csv(path, progress=progress)
        return read_parquet(path, progress=progress, allow_outside_root=allow_outside_root)

    key = _cache_key(path, form, files, allow_outside_root=allow_outside_root) if use_cache else None
    if key is None:
        return read()
    table, _ = cached("datasets", key, read, suffix=SUFFIX, read=read_table, write=write_table, folder=cache_dir)
    return table


def _cache_key(path: Path, form: str, files: list, *, allow_outside_root: bool) -> str | None:
    """The cache key of a data set: a hash of its files' names and content; None for a folder with no image."""
    if form == "csv":
        return cache_key("csv", CACHE_VERSION, path.suffix.lower(), path)
    if form == "folder":
        if not files:
            return None  # reading it raises the error that says why
        named = [(f"{f.sample_id}|{f.label}|{f.split}", f.path) for f in files]
        return cache_key("folder", CACHE_VERSION, *(part for pair in named for part in pair))
    named = [(p.relative_to(path).as_posix() if path.is_dir() else p.name, p) for p in parquet_files(path)]
    # A table read with paths outside the root must not answer a load that refuses them.
    return cache_key("parquet", CACHE_VERSION, allow_outside_root, *(part for pair in named for part in pair))


def summary(table: FaceTable) -> pd.DataFrame:
    """Face counts per emotion (rows) and split (columns), with totals."""
    counts = pd.crosstab(table.frame["emotion_name"], table.frame["split"], margins=True, margins_name="total")
    return counts.astype(np.int64)
