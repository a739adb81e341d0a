"""A disk cache of computed results, one file per entry, named by a hash of what the result depends on.

Entries live in ``<folder>/<kind>/<key><suffix>``, the folder being
:func:`fer_core.config.default_cache_dir` unless the caller gives one. A cache only saves time,
so it never stops a computation: an entry that is missing, damaged or written by an older
version is computed again, and a folder that cannot be written is warned about once per call
and skipped. Entries are written atomically (:mod:`fer_core._io`), so several processes may
fill the same cache at once.

Use::

    key = cache_key("duplicates", VERSION, images, ids)
    frame, from_cache = cached("duplicates", key, compute, suffix=".parquet",
                               read=pd.read_parquet, write=write_frame)
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from fer_core._io import atomic_write
from fer_core.config import default_cache_dir

__all__ = ["cache_key", "cached", "entry_path", "read_entry", "write_entry", "write_frame"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CHUNK = 8 << 20  # files are hashed in 8 MiB reads


def cache_key(*parts: str | bytes | int | np.ndarray | Path) -> str:
    """A 40-character hex name for an entry: a blake2b digest of ``parts``, in order.

    A ``str``, ``bytes`` or ``int`` counts by its value; a numpy array by its dtype, shape and
    bytes; a :class:`~pathlib.Path` by the content of the file it names (read in chunks, so
    large files are fine). Each part is framed by its type and length, so ``("ab", "c")`` and
    ``("a", "bc")`` give different keys.

    Raises
    ------
    TypeError
        A part of another type.
    """
    digest = hashlib.blake2b(digest_size=20)

    def add(tag: bytes, data: bytes | np.ndarray) -> None:
        digest.update(tag + memoryview(data).nbytes.to_bytes(8, "little"))
        digest.update(data)

    for part in parts:
        if isinstance(part, Path):
            file_digest = hashlib.blake2b(digest_size=20)
            with part.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    file_digest.update(chunk)
            add(b"f", file_digest.digest())
        elif isinstance(part, np.ndarray):
            add(b"a", f"{part.dtype.str}{part.shape}".encode())
            _add_array(digest, part)
        elif isinstance(part, str):
            add(b"s", part.encode())
        elif isinstance(part, bytes):
            add(b"b", part)
        elif isinstance(part, (int, np.integer)):  # bool included
            add(b"i", str(int(part)).encode())
        else:
            raise TypeError(f"a cache key part must be str, bytes, int, a numpy array or a Path, "
                            f"got {type(part).__name__}")
    return digest.hexdigest()


def _add_array(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed ``array``'s bytes to ``digest`` as ``add(b"d", bytes)`` would, 64 MiB at a time.

    A large (memory-mapped) array is read in batches whose pages are released after use, so
    hashing a million faces does not leave them all resident; the digest is the same either way.
    """
    from fer_core.datasets._stream import iter_batches

    digest.update(b"d" + array.nbytes.to_bytes(8, "little"))
    if array.ndim == 0 or array.nbytes <= _CHUNK * 8:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        return
    rows = max(1, (_CHUNK * 8) // max(1, array[0].nbytes))
    for _, batch in iter_batches(array, size=rows):
        digest.update(np.ascontiguousarray(batch).reshape(-1).view(np.uint8))


def entry_path(kind: str, key: str, *, suffix: str, folder: str | Path | None = None) -> Path:
    """``<folder>/<kind>/<key><suffix>``; ``folder`` defaults to :func:`fer_core.config.default_cache_dir`."""
    base = Path(folder) if folder is not None else default_cache_dir()
    return base / kind / f"{key}{suffix}"


def read_entry(path: Path, read: Callable[[Path], T | None]) -> T | None:
    """``read(path)``, or None when the entry is missing or cannot be used.

    ``read`` returns None for an entry it can read but that does not fit (wrong length); any
    exception it raises marks the entry as damaged: logged, then treated as missing.
    """
    if not path.is_file():
        return None
    try:
        return read(path)
    except Exception as err:  # whatever a damaged file raises, the answer is to recompute
        log.warning("ignoring a damaged cache entry %s: %s", path, err)
        return None


def write_entry(path: Path, value: T, write: Callable[[T, Path], None]) -> None:
    """Store ``value`` at ``path`` through ``write(value, temporary_path)``, atomically.

    A folder that cannot be created or written, or a value ``write`` refuses, only costs time:
    it warns (``UserWarning``) and returns.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            write(value, tmp)
    except (OSError, ValueError) as err:
        warnings.warn(f"could not write the cache entry {path}: {err}", stacklevel=3)


def cached(
    kind: str,
    key: str,
    compute: Callable[[], T],
    *,
    suffix: str,
    read: Callable[[Path], T | None],
    write: Callable[[T, Path], None],
    folder: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[T, bool]:
    """The value stored under ``key``, else ``compute()`` stored there; and whether it came from the cache.

    Parameters
    ----------
    kind : str
        Sub-folder of the cache for this kind of value (``"datasets"``, ``"browse"``...).
    key : str
        The entry's name, from :func:`cache_key` over everything the value depends on
        (including a version number the caller bumps when the value changes meaning).
    compute : callable
        Makes the value when the cache has no usable entry.
    suffix : str
        File name ending of the entries (``".parquet"``).
    read, write : callable
        ``read(path) -> value or None`` and ``write(value, path)``; see :func:`read_entry`
        and :func:`write_entry`.
    folder : path, optional
        The cache folder; default :func:`fer_core.config.default_cache_dir`.
    use_cache : bool, default=True
        False: compute, neither reading nor writing the cache.
    """
    if not use_cache:
        return compute(), False
    path = entry_path(kind, key, suffix=suffix, folder=folder)
    value = read_entry(path, read)
    if value is not None:
        return value, True
    value = compute()
    write_entry(path, value, write)
    return value, False


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """A ``write`` for :func:`cached` that stores a data frame as Parquet (read it back with ``pd.read_parquet``)."""
    frame.to_parquet(path, index=False)
