"""Faces in bounded memory: written to disk as they are decoded, read back memory-mapped, walked in batches.

A data set of a million 48x48 faces is 2.3 GB of pixels. :class:`FaceWriter` collects decoded
faces in small batches and, past :data:`IN_MEMORY_BYTES`, writes them to an unlinked temporary
file that is then memory-mapped read-only: the process holds one batch, not every face.
:func:`iter_batches` walks any ``(N, 48, 48)`` array in batches; for a memory-mapped one it
hands the pages of each batch back to the kernel once the caller is done with it, so a full
pass (quality, hashes, cache key) does not leave the whole file resident.
"""

from __future__ import annotations

import mmap
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_core.constants import IMAGE_SIZE

__all__ = ["BATCH", "IN_MEMORY_BYTES", "FaceWriter", "iter_batches", "release", "is_mapped"]

#: Faces per batch of a streamed pass (9 MB of pixels).
BATCH: int = 4096
#: Up to this many bytes of pixels (about 116,000 faces) a table keeps its faces in memory;
#: above, they go to a memory-mapped file.
IN_MEMORY_BYTES: int = 256 << 20
_FACE_BYTES = IMAGE_SIZE * IMAGE_SIZE


def is_mapped(images: np.ndarray) -> bool:
    """Whether ``images`` (or the array it views) is memory-mapped from a file."""
    return getattr(images, "_mmap", None) is not None


def _mmap_base(images: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The mmap object behind ``images`` and its start address, or None for an array in memory."""
    handle = getattr(images, "_mmap", None)
    if handle is None or handle.closed:
        return None
    return handle, np.frombuffer(handle, dtype=np.uint8, count=1).ctypes.data


def release(images: np.ndarray, start: int, stop: int) -> None:
    """Drop the resident pages of faces ``start:stop`` of a memory-mapped array (a no-op in memory).

    The data stays in the file and the page cache; the next read of those faces maps them again.
    """
    base = _mmap_base(images)
    if base is None or stop <= start or not hasattr(mmap, "MADV_DONTNEED"):
        return
    handle, address = base
    first = images[start:stop]
    begin = first.ctypes.data - address
    end = begin + first.nbytes
    begin -= begin % mmap.PAGESIZE
    end = min(len(handle), end + (-end) % mmap.PAGESIZE)
    if end > begin:
        handle.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def iter_batches(images: np.ndarray, *, size: int = BATCH) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images[start:start + size])`` over the whole array, batch by batch.

    A memory-mapped array's batch is a view of the file; its pages are released (see
    :func:`release`) when the caller asks for the next batch, so use each batch before then.
    """
    for start in range(0, len(images), size):
        stop = min(start + size, len(images))
        yield start, images[start:stop]
        release(images, start, stop)


class FaceWriter:
    """Collects decoded faces in order; :meth:`finish` gives them as one ``(N, 48, 48)`` uint8 array.

    Faces stay in memory until they pass ``in_memory_bytes`` (default :data:`IN_MEMORY_BYTES`); from then on every batch is written
    to a temporary file in ``folder`` (default: the system's), unlinked at once, and the result is
    that file memory-mapped read-only. Either way the answer holds the same pixels.
    """

    def __init__(self, *, in_memory_bytes: int | None = None, folder: str | Path | None = None) -> None:
        self._limit = int(IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes)
        self._folder = None if folder is None else str(folder)
        self._batches: list[np.ndarray] = []
        self._held = 0
        self._file = None
        self.count = 0

    def append(self, faces: np.ndarray) -> None:
        """Add faces ``(M, 48, 48)`` uint8 (copied) after those already given."""
        faces = np.ascontiguousarray(faces, dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        if len(faces) == 0:
            return
        self.count += len(faces)
        if self._file is None and self._held + faces.nbytes <= self._limit:
            self._batches.append(faces.copy())
            self._held += faces.nbytes
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._folder, prefix="fer-faces-")  # unlinked already
            for held in self._batches:
                self._file.write(held.data)
            self._batches, self._held = [], 0
        self._file.write(faces.data)

    def finish(self) -> np.ndarray:
        """Every face given, ``(N, 48, 48)`` uint8: in memory, or memory-mapped read-only from the file."""
        if self._file is None:
            if not self._batches:
                return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            return np.concatenate(self._batches) if len(self._batches) > 1 else self._batches[0]
        self._file.flush()
        images = np.memmap(self._file, dtype=np.uint8, mode="r", shape=(self.count, IMAGE_SIZE, IMAGE_SIZE))
        self._file.close()  # the mapping keeps the (unlinked) file's data until it is dropped
        return images
