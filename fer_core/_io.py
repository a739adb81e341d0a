"""Writing files atomically: readers see the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _new_temp_file(path: Path, suffix: str) -> Path:
    """Create an empty ``.NAME.<pid>.<random><suffix>`` beside ``path`` (permissions as by ``open``: umask applies)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_write(path: str | Path, *, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary file in ``path``'s folder; write it, and on success it replaces ``path`` in one step.

    When the block raises (or the replace fails) the temporary file is removed and ``path`` is left
    as it was. The name is unique per call, so several processes may write the same ``path`` at
    once (the last to finish wins). The folder must exist; an ``OSError`` creating the temporary
    file propagates like any other.
    """
    path = Path(path)
    tmp = _new_temp_file(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
