"""A disk cache of decoded tables, keyed by the content of the files they were read from."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._table import FaceTable

__all__ = ["CACHE_VERSION", "content_key", "files_key", "read_cached", "write_cached"]

log = logging.getLogger(__name__)

#: Bump when the decoding or the table's columns change, so old entries are not reused.
CACHE_VERSION = "1"
_CHUNK = 8 << 20


def files_key(entries: list[tuple[str, Path]]) -> str:
    """Hash of (name, content) for each file, in the given order: the same files give the same key."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"fer-cache-v{CACHE_VERSION}\0".encode())
    for name, path in entries:
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def content_key(path: Path, *, kind: str) -> str:
    """Hash of one (possibly large) file's content, read in chunks."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"fer-cache-v{CACHE_VERSION}\0{kind}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_cached(cache_dir: Path, key: str) -> FaceTable | None:
    entry = cache_dir / key
    try:
        meta = json.loads((entry / "meta.json").read_text())
        images = np.load(entry / "images.npy", allow_pickle=False)
        frame = pd.read_parquet(entry / "frame.parquet")
        return FaceTable(images=images, frame=frame, name=meta["name"], skipped=meta["skipped"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring a damaged cache entry %s: %s", entry, err)
        return None


def write_cached(cache_dir: Path, key: str, table: FaceTable) -> None:
    """Store a table; a cache that cannot be written only costs speed, so failures warn and go on."""
    entry = cache_dir / key
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        np.save(tmp / "images.npy", table.images, allow_pickle=False)
        table.frame.to_parquet(tmp / "frame.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps({"name": table.name, "skipped": table.skipped}))
        try:
            os.replace(tmp, entry)  # atomic: readers see the whole entry or none
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote the same entry first
    except OSError as err:
        warnings.warn(f"could not write the data set cache in {cache_dir}: {err}", stacklevel=3)
