"""Reading Parquet files and hub data sets (an ``image`` column and an ``emotion``/``label`` column) with ``datasets``.

An ``image`` entry holds encoded bytes, or (the ``datasets`` Image feature) a ``{"path": ...}``
to a file. Such a path is read relative to the data set's folder (the Parquet file's folder,
or the folder given) and must stay inside it: an absolute path, a ``..`` component or a
symbolic link leading outside is refused, naming the row, unless ``allow_outside_root=True``.
A hub data set has no folder of its own, so its path entries need that option. Every image is
decoded within the memory bound of :mod:`fer_core.images` (see
:func:`~fer_core.datasets._folder.decode_face_checked`); an image over it is skipped like an
unreadable one.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fer_core._validation import DatasetError, ImageError
from fer_core.config import default_cache_dir
from fer_core.constants import IMAGE_SIZE, SPLIT_ALIASES, UNSPLIT
from fer_core.images import DEFAULT_MAX_BYTES

from . import _stream
from ._csv import frame_from_pixel_rows, labels_to_ids
from ._folder import decode_face_checked
from ._progress import progress_bar
from ._stream import BATCH, FaceWriter
from ._table import FaceTable, build_frame

__all__ = ["read_parquet", "read_hub", "parquet_files"]

LABEL_COLUMNS = ("emotion", "label", "labels", "emotion_label")
IMAGE_COLUMNS = ("image", "img")
SPLIT_COLUMNS = ("split", "usage")
_NOT_EXTRA = set(LABEL_COLUMNS + IMAGE_COLUMNS + SPLIT_COLUMNS) | {"pixels", "emotion_name", "source", "sample_id"}


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file or folder path, in a fixed order."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))


def _split_from_name(path: Path) -> str:
    """``train-00000-of-00001.parquet``, ``data/validation/x.parquet`` and the like name their split."""
    for token in [*re.split(r"[-_.]", path.stem), path.parent.name]:
        split = SPLIT_ALIASES.get(token.lower())
        if split:
            return split
    return UNSPLIT


def _image_paths(values: list[Any], *, root: Path | None, allow_outside_root: bool, where: str,
                 first_row: int = 0) -> list[Path | None]:
    """The file each ``{"path": ...}`` entry without bytes names, checked to lie inside ``root``.

    Raises :class:`DatasetError` naming the first row whose path is absolute, has a ``..``
    component or resolves (through links) outside ``root``, unless ``allow_outside_root``.
    Nothing is read here.
    """
    real_root = root.resolve() if root is not None else None
    paths: list[Path | None] = []
    for row, value in enumerate(values):
        raw = value.get("path") if isinstance(value, dict) and value.get("bytes") is None else None
        if not raw:
            paths.append(None)
            continue
        path = Path(str(raw))
        if allow_outside_root:
            paths.append(path if path.is_absolute() or root is None else root / path)
            continue
        if real_root is None:
            problem = "a hub data set has no folder of its own to read image files from"
        elif path.is_absolute():
            problem = "the path is absolute"
        elif ".." in path.parts:
            problem = "the path goes up with '..'"
        elif not (root / path).resolve().is_relative_to(real_root):
            problem = "a symbolic link leads outside the data set folder"
        else:
            paths.append(root / path)
            continue
        raise DatasetError(
            f"{where}: row {first_row + row}: the image is a file path outside the data set folder ({problem}); "
            "refused without reading it (pass allow_outside_root=True to read such paths)"
        )
    return paths


def _decode_images(values: list[Any], paths: list[Path | None], *, desc: str,
                   progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Faces of the image entries; also the number skipped as too large to decode within the memory bound."""
    from fer_core.images import ImageTooLarge

    def one(item: tuple[Any, Path | None]) -> np.ndarray | str | None:
        value, path = item
        data = value.get("bytes") if isinstance(value, dict) else value
        try:
            if data is None and path is not None and path.is_file():
                if path.stat().st_size > DEFAULT_MAX_BYTES:
                    return "too_large"
                data = path.read_bytes()
            if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
                return None
            return decode_face_checked(bytes(data))
        except ImageTooLarge:
            return "too_large"
        except (OSError, ImageError, cv2.error):
            return None

    images = np.zeros((len(values), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    ok = np.zeros(len(values), dtype=bool)
    too_large = 0
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for i, face in enumerate(progress_bar(pool.map(one, zip(values, paths), chunksize=256), total=len(values),
                                              desc=desc, enable=progress)):
            if isinstance(face, np.ndarray):
                images[i] = face
                ok[i] = True
            elif face == "too_large":
                too_large += 1
    return images, ok, too_large


def _label_ids(dataset: Any, column: str) -> tuple[np.ndarray, pd.Series]:
    feature = dataset.features[column]
    values = pd.Series(dataset[column])
    names = getattr(feature, "names", None)
    if names:
        # A ClassLabel: its integer codes follow the copy's own order (often
        # alphabetical), so map through the names, never assume FER2013 order.
        values = values.map(
            lambda code: names[code] if isinstance(code, (int, np.integer)) and 0 <= code < len(names) else code
        )
    return labels_to_ids(values)


def _decode_column(dataset: Any, image_col: str, labels: np.ndarray, *, writer: FaceWriter, where: str,
                   progress: bool, root: Path | None, allow_outside_root: bool) -> tuple[np.ndarray, int, int]:
    """Decode the image column batch by batch into ``writer`` (rows with a known label only).

    Returns the rows kept, the rows whose image could not be decoded and those too large to.
    Only one batch of encoded images is in memory at a time.
    """
    column = dataset.select_columns([image_col])
    kept, unreadable, too_large = [], 0, 0
    starts = range(0, len(column), BATCH)
    bar = tqdm(starts, desc=f"decoding {where}", unit="batch", disable=not progress or len(starts) < 2)
    for start in bar:
        values = column[start : start + BATCH][image_col]
        paths = _image_paths(values, root=root, allow_outside_root=allow_outside_root, where=where, first_row=start)
        images, ok, large = _decode_images(values, paths, desc=where, progress=False)
        too_large += large
        unreadable += int((~ok).sum()) - large
        keep = ok & (labels[start : start + len(values)] >= 0)
        writer.append(images[keep])
        kept.append(np.flatnonzero(keep) + start)
    return (np.concatenate(kept) if kept else np.zeros(0, np.int64)), unreadable, too_large


def _from_dataset(dataset: Any, *, split: str, where: str, progress: bool, writer: FaceWriter,
                  root: Path | None = None, allow_outside_root: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fields of one ``datasets.Dataset`` split; its faces are appended to ``writer`` in row order.

    Image file paths are read relative to ``root``; see :func:`_image_paths`.
    """
    columns = {c.lower(): c for c in dataset.column_names}
    label_col = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    image_col = next((columns[c] for c in IMAGE_COLUMNS if c in columns), None)
    if label_col is None or (image_col is None and "pixels" not in columns):
        raise DatasetError(
            f"{where} needs an 'image' column (or 'pixels') and an 'emotion' or 'label' column; "
            f"found columns {dataset.column_names}"
        )
    if image_col is None:
        table = pd.DataFrame({"emotion": dataset[label_col], "pixels": dataset[columns["pixels"]]})
        images, frame, skipped = frame_from_pixel_rows(table, where=where, id_prefix=f"{split}/", progress=progress)
        frame["split"] = split
        writer.append(images)
        return frame, skipped

    import datasets as hf  # deferred: importing datasets costs about a second

    if isinstance(dataset.features[image_col], hf.Image):
        dataset = dataset.cast_column(image_col, hf.Image(decode=False))
    labels, unknown = _label_ids(dataset, label_col)
    skipped: dict[str, int] = {}
    if len(unknown):
        counts = unknown.fillna("<empty>").value_counts()
        warnings.warn(
            f"{where}: skipped labels outside the seven emotions: "
            + ", ".join(f"{name} ({count} rows)" for name, count in counts.items()),
            stacklevel=4,
        )
        skipped.update({f"unknown_class:{name}": int(count) for name, count in counts.items()})
    rows, unreadable, too_large = _decode_column(dataset, image_col, labels, writer=writer, where=where,
                                                 progress=progress, root=root, allow_outside_root=allow_outside_root)
    if unreadable:
        skipped["corrupt_images"] = unreadable
        warnings.warn(f"{where}: skipped {unreadable} rows whose image cannot be decoded", stacklevel=4)
    if too_large:
        skipped["too_large_images"] = too_large
        warnings.warn(f"{where}: skipped {too_large} rows whose image is too large to decode within the "
                      "memory limit", stacklevel=4)
    split_col = next((columns[c] for c in SPLIT_COLUMNS if c in columns), None)
    if split_col is not None:
        raw = pd.Series(dataset[split_col]).astype("string").str.strip().str.lower()
        raw = raw.str.replace(r"[\s_-]", "", regex=True)
        splits = raw.map(lambda s: SPLIT_ALIASES.get(s, s) if isinstance(s, str) else split).tolist()
    else:
        splits = [split] * len(labels)
    frame = build_frame(
        [f"{split}/{r:05d}" for r in rows],
        labels[rows],
        [splits[r] for r in rows],
        [f"{where}:{r}" for r in rows],
    )
    if "sample_id" in columns:
        ids = pd.Series(dataset[columns["sample_id"]]).astype("string").iloc[rows]
        if ids.notna().all() and ids.is_unique:
            frame["sample_id"] = ids.to_numpy()
    extra = [c for c in dataset.column_names if c.lower() not in _NOT_EXTRA]
    for column in extra:
        if isinstance(dataset.features[column], hf.Value):
            frame[column] = pd.Series(dataset[column]).iloc[rows].to_numpy()
    return frame, skipped


def _concat(parts: list[tuple[pd.DataFrame, dict[str, int]]], name: str, writer: FaceWriter) -> FaceTable:
    skipped: dict[str, int] = {}
    for _, s in parts:
        for key, count in s.items():
            skipped[key] = skipped.get(key, 0) + count
    images = writer.finish()
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    frame = build_frame(
        frame["sample_id"].tolist(), frame["emotion"].to_numpy(), frame["split"].tolist(), frame["source"].tolist()
    ).join(frame.drop(columns=["sample_id", "emotion", "emotion_name", "split", "source"]))
    return FaceTable(images=images, frame=frame, name=name, skipped=skipped)


def read_parquet(path: Path, *, progress: bool = True, allow_outside_root: bool = False) -> FaceTable:
    """Read one Parquet file or a folder of them; the split comes from a split column, else the file name.

    Files over :data:`~fer_core.datasets._stream.IN_MEMORY_BYTES` are converted once to Arrow files
    under the cache folder's ``arrow`` (``datasets``' own cache) and read memory-mapped, batch by batch.

    Image entries given as file paths are read relative to ``path`` (its folder for a file)
    and refused when they lead outside it, unless ``allow_outside_root``.
    """
    import datasets as hf

    files = parquet_files(path)
    if not files:
        raise DatasetError(f"no .parquet files found in {str(path)!r}")
    by_split: dict[str, list[str]] = {}
    for f in files:
        by_split.setdefault(_split_from_name(f), []).append(str(f))
    parts, writer = [], FaceWriter()
    # Small files are read into memory; larger ones become memory-mapped Arrow in the datasets
    # cache, read batch by batch.
    in_memory = sum(f.stat().st_size for f in files) <= _stream.IN_MEMORY_BYTES
    arrow_dir = None if in_memory else str(default_cache_dir() / "arrow")
    for split, split_files in by_split.items():
        try:
            dataset = hf.Dataset.from_parquet(split_files, keep_in_memory=in_memory, cache_dir=arrow_dir)
        except Exception as err:  # pyarrow raises many kinds for a broken file
            raise DatasetError(f"cannot read Parquet file(s) {split_files}: {err}") from None
        where = Path(split_files[0]).name if len(split_files) == 1 else f"{path.name}/{split}"
        root = path if path.is_dir() else path.parent
        parts.append(_from_dataset(dataset, split=split, where=where, progress=progress, root=root,
                                   allow_outside_root=allow_outside_root, writer=writer))
    table = _concat(parts, name=path.stem if path.is_file() else path.name, writer=writer)
    if len(table) == 0:
        raise DatasetError(f"{str(path)!r} holds no readable face with one of the seven emotions")
    return table


def read_hub(repo_id: str, *, progress: bool = True, allow_outside_root: bool = False) -> FaceTable:
    """Read a hub data set by id (``user/name``) with ``datasets.load_dataset``; needs a network or the local hub cache.

    Image entries given only as file paths are refused unless ``allow_outside_root``.
    """
    import datasets as hf

    try:
        loaded = hf.load_dataset(repo_id)
    except Exception as err:  # offline, unknown repo, gated...: all the user can act on is the message
        raise DatasetError(f"cannot load the hub data set {repo_id!r}: {err}") from None
    splits = loaded.items() if isinstance(loaded, hf.DatasetDict) else [(UNSPLIT, loaded)]
    writer = FaceWriter()
    parts = [
        _from_dataset(ds, split=SPLIT_ALIASES.get(name.lower(), name), where=f"{repo_id}[{name}]", progress=progress,
                      allow_outside_root=allow_outside_root, writer=writer)
        for name, ds in splits
    ]
    return _concat(parts, name=repo_id, writer=writer)
