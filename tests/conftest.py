"""Shared fixtures: real FER2013 faces from ../shared, a per-test cache folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core.labels import EMOTIONS

REPO = Path(__file__).resolve().parents[1]
SHARED_FER = REPO.parent / "shared" / "fer2013"

needs_shared = pytest.mark.skipif(not SHARED_FER.is_dir(), reason="../shared/fer2013 is not present")


def real_face_paths(split: str = "val", per_class: int = 5) -> list[tuple[Path, int]]:
    """The first ``per_class`` files (sorted by name) of each emotion folder of a shared split."""
    picked = []
    for label, emotion in enumerate(EMOTIONS):
        files = sorted((SHARED_FER / split / emotion).glob("*.png"))[:per_class]
        picked.extend((path, label) for path in files)
    return picked


def free_port() -> int:
    """A TCP port free on the loopback interface right now (for launching the app in a test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(demo) -> Iterator[str]:
    """``demo`` launched as the app launches it (``app.launch``) on a free loopback port: its URL; closed afterwards."""
    import app

    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def read_grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


class Clock:
    """A settable UTC clock for the relabel store (``open_store(..., now=clock)``)."""

    def __init__(self) -> None:
        self.t = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's cache, nor a relabel database beside the app."""
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path_factory.mktemp("fer_cache")))
    monkeypatch.setenv("FER_DB_URL", f"sqlite:///{tmp_path_factory.mktemp('fer_db') / 'annotations.db'}")


@pytest.fixture(scope="session")
def val_faces() -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Five real val faces per class: images (35, 48, 48) uint8, labels (35,), paths."""
    if not SHARED_FER.is_dir():
        pytest.skip("../shared/fer2013 is not present")
    picked = real_face_paths("val", 5)
    images = np.stack([read_grey(p) for p, _ in picked])
    labels = np.array([label for _, label in picked])
    return images, labels, [p for p, _ in picked]


# The fine-tuned second model (tests/second_model.py), registered here so that it is made once per
# session: a fixture imported into several test modules would be one fixture per module.
from second_model import tuned_weights  # noqa: E402, F401

# -- PostgreSQL: one throwaway server per test session (tests/pg_server.py), one database per test ------------


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server of the tests' own, started once per session; skips, saying why, where none can start."""
    from pg_server import start_server

    server, reason = start_server()
    if server is None:
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server, dropped after the test."""
    url = pg_server.create_database()
    yield url
    if pg_server.running:
        pg_server.drop_database(url)


def _backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ann.db'}"
    return request.getfixturevalue("pg_url")


# The PostgreSQL repeats of the store and queue tests run in the full suite; the quick subset keeps
# tests/test_postgres.py (migrations, the write lock, a restarted server) for that backend.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty annotation database on each backend: a SQLite file in ``tmp_path``, then a PostgreSQL database."""
    return _backend_url(request, tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url_pg_slow(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """As ``db_url``, with the PostgreSQL case marked slow: for tests that take seconds there (a launched app)."""
    return _backend_url(request, tmp_path)
