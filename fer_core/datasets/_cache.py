"""A loaded table as one cache file (:mod:`fer_core._cache`): faces, fields, name and skip counts in a ``.npz``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ._table import FaceTable

__all__ = ["CACHE_VERSION", "SUFFIX", "read_table", "write_table"]

#: Bump when the decoding or the table's columns change, so old entries are not reused.
CACHE_VERSION = 2
SUFFIX = ".npz"


def write_table(table: FaceTable, path: Path) -> None:
    """Store ``table`` in ``path`` (uncompressed ``.npz``: ``images``, the frame as Parquet bytes, ``meta`` JSON)."""
    frame = io.BytesIO()
    table.frame.to_parquet(frame, index=False)
    meta = json.dumps({"name": table.name, "skipped": table.skipped}).encode()
    with path.open("wb") as handle:  # a file object: np.savez would add ".npz" to a name
        np.savez(handle, images=table.images, frame=np.frombuffer(frame.getbuffer(), np.uint8),
                 meta=np.frombuffer(meta, np.uint8))


def read_table(path: Path) -> FaceTable:
    """The table :func:`write_table` stored in ``path``."""
    with np.load(path, allow_pickle=False) as entry:
        meta = json.loads(entry["meta"].tobytes())
        frame = pd.read_parquet(io.BytesIO(entry["frame"].tobytes()))
        return FaceTable(images=entry["images"], frame=frame, name=meta["name"], skipped=meta["skipped"])
