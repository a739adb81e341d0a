"""A loaded table as one cache file (:mod:`fer_core._cache`): the faces as ``.npy``, then the fields.

The file is a valid ``.npy`` array of the faces ``(N, 48, 48)`` uint8 (numpy reads it and ignores
what follows), then the frame as Parquet bytes (name and skip counts in its metadata), then
the Parquet part's length (8 bytes, little-endian) and :data:`_MAGIC`. A table of up to
:data:`~fer_core.datasets._stream.IN_MEMORY_BYTES` of pixels is read into memory; a larger one is
memory-mapped, so a million faces cost no resident memory until they are looked at.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import _stream
from ._stream import iter_batches
from ._table import FaceTable

__all__ = ["CACHE_VERSION", "SUFFIX", "read_table", "write_table"]

#: Bump when the decoding or the table's columns change, so old entries are not reused.
CACHE_VERSION = 3
SUFFIX = ".npy"
_MAGIC = b"FERTABLE"
_META = b"fer_table"


def write_table(table: FaceTable, path: Path) -> None:
    """Store ``table`` in ``path``: the faces streamed in batches, then the frame (see the module docstring)."""
    frame = pa.Table.from_pandas(table.frame, preserve_index=False)
    meta = json.dumps({"name": table.name, "skipped": table.skipped}).encode()
    frame = frame.replace_schema_metadata({**(frame.schema.metadata or {}), _META: meta})
    tail = io.BytesIO()
    pq.write_table(frame, tail)
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(table.images.shape)}
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for _, batch in iter_batches(table.images):
            handle.write(np.ascontiguousarray(batch).data)
        handle.write(tail.getbuffer())
        handle.write(len(tail.getbuffer()).to_bytes(8, "little") + _MAGIC)


def read_table(path: Path) -> FaceTable:
    """The table :func:`write_table` stored in ``path``; its faces memory-mapped when they are large."""
    with path.open("rb") as handle:
        handle.seek(-16, 2)
        end = handle.tell()
        trailer = handle.read(16)
        if trailer[8:] != _MAGIC:
            raise ValueError("not a table cache entry (no trailer)")
        length = int.from_bytes(trailer[:8], "little")
        handle.seek(end - length)
        frame = pq.read_table(io.BytesIO(handle.read(length)))
    meta = json.loads(frame.schema.metadata[_META])
    images = np.load(path, mmap_mode="r")
    if images.nbytes <= _stream.IN_MEMORY_BYTES:
        images = np.array(images)
    table_frame: pd.DataFrame = frame.to_pandas()
    return FaceTable(images=images, frame=table_frame, name=meta["name"], skipped=meta["skipped"])
