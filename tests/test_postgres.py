"""The annotation store on a real PostgreSQL server: migrations, the write lock, a restarted server, the
corrections that reach training, and the team server's compose file.

The server is the session's throwaway one (tests/pg_server.py, the ``pg_server`` fixture), each test on
a database of its own (``pg_url``); without Debian's ``postgresql`` package the tests skip and say why.
The store and queue tests (test_annotate_store.py, test_annotate_queue.py), the bench
(test_annotate_bench.py) and the vote import (test_import_votes.py) run on both backends too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import create_engine, func, insert, inspect, select
from sqlalchemy.exc import OperationalError

import annotate.engine
from annotate import AnnotateError, StoreUnavailableError, open_store
from annotate.engine import create_store_engine, is_disconnect, writer
from annotate.export import export_corrections, ferplus_votes
from annotate.import_votes import import_votes, read_vote_table
from annotate.migrate import current_revision, head_revision, upgrade
from annotate.models import Annotator, Decision, Face
from fer_core.datasets import load_faces
from tests.conftest import REPO, SHARED_FER, needs_shared

VOTES = REPO.parent / "shared" / "ferplus" / "fer2013_votes.csv"


# -- migrations -------------------------------------------------------------------------------------------


def test_migrations_create_the_schema_and_upgrade_a_first_release_database(pg_url: str) -> None:
    engine = create_store_engine(pg_url)
    upgrade(engine, "0001")  # a database written by the first release
    when = datetime(2024, 6, 1, 10, tzinfo=UTC)
    with writer(engine).begin() as conn:
        conn.execute(insert(Annotator), [{"name": "ann", "created_at": when}, {"name": "bo'b", "created_at": when}])
        conn.execute(insert(Face), [{"dataset": "fer", "sample_id": f"s{i}", "content_sha256": None,
                                     "original_label": i, "created_at": when} for i in (1, 2)])
        ids = dict(conn.execute(select(Face.sample_id, Face.id)).all())
        who = dict(conn.execute(select(Annotator.name, Annotator.id)).all())
        conn.execute(insert(Decision), [
            {"annotator_id": who["ann"], "face_id": ids["s1"], "created_at": when, "label": "happy"},
            {"annotator_id": who["bo'b"], "face_id": ids["s1"], "created_at": when, "label": "happy"},
        ])
        assert "ix_decisions_face_id" not in {i["name"] for i in inspect(conn).get_indexes("decisions")}
    assert current_revision(engine) == "0001"
    engine.dispose()

    with open_store(pg_url) as store:  # upgrades to head on open
        assert store.schema_revision() == head_revision()
        with store.engine.connect() as conn:
            assert "ix_decisions_face_id" in {i["name"] for i in inspect(conn).get_indexes("decisions")}
        assert store.decisions()["label"].tolist() == ["happy", "happy"]
        assert store.decisions()["created_at"].iloc[0] == when
        store.record_decision("ann", "fer", "s2", "angry")  # the sequences carry on after the old rows
        assert dict(zip(*store.resolved_labels("fer")[["sample_id", "resolved_label"]].T.values)) == {
            "s1": "happy", "s2": "angry"}


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    """Four openers of an empty database: the advisory lock runs their migrations one after the other."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        try:
            barrier.wait()
            open_store(pg_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_store(pg_url) as store:
        assert store.schema_revision() == head_revision()


# -- the write lock ---------------------------------------------------------------------------------------


def test_a_writer_waits_for_another_writer_but_readers_never_wait(pg_url: str) -> None:
    store = open_store(pg_url)
    store.register_faces("fer", ["f0"], [0])
    other = create_store_engine(pg_url)
    try:
        with writer(other).begin() as conn:  # another process is writing
            lock = select(func.pg_try_advisory_xact_lock(annotate.engine._PG_WRITE_LOCK))
            with store.engine.connect() as probe:
                assert probe.execute(lock).scalar() is False  # the writer holds the store's lock
            assert len(store.resolved_labels("fer", include_undecided=True)) == 1  # a read goes through at once
            done = threading.Event()
            worker = threading.Thread(target=lambda: (store.record_decision("a", "fer", "f0", "sad"), done.set()))
            worker.start()
            assert not done.wait(0.3)  # the second writer waits ...
            conn.execute(select(1))
        worker.join(10)  # ... until the first commits
        assert done.is_set() and store.decisions()["label"].tolist() == ["sad"]
    finally:
        other.dispose()
        store.close()


# -- a server that restarts -------------------------------------------------------------------------------


def test_a_server_restart_during_a_call_is_invisible(pg_server, pg_url: str) -> None:
    store = open_store(pg_url)
    store.register_faces("fer", ["f0", "f1"], [0, 1])
    store.record_decision("a", "fer", "f0", "happy")
    pg_server.stop_server()
    back = threading.Timer(1.0, pg_server.start_server)
    back.start()
    try:
        started = time.monotonic()
        record = store.record_decision("a", "fer", "f1", "sad")  # reconnects once the server is back
        assert time.monotonic() - started >= 0.5
    finally:
        back.join()
    assert store.decisions()["id"].tolist() == [1, record.id] and store.retries > 0
    store.close()


def test_a_server_that_stays_down_is_reported_clearly_and_nothing_is_lost(pg_server, pg_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotate.engine, "RECONNECT_DEADLINE_S", 0.5)
    store = open_store(pg_url)
    store.register_faces("fer", ["f0"], [0])
    given_at = store.now()
    pg_server.stop_server()
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be reached .* try again in a moment"):
            store.record_decision("a", "fer", "f0", "happy", created_at=given_at)
        with pytest.raises(StoreUnavailableError):
            store.resolved_labels("fer")
    finally:
        pg_server.start_server()
    store.record_decision("a", "fer", "f0", "happy", created_at=given_at)  # the retry
    store.record_decision("a", "fer", "f0", "happy", created_at=given_at)  # sent twice: still one answer
    assert store.decisions()["label"].tolist() == ["happy"]
    store.close()


def test_lost_connections_are_told_apart_from_other_errors(pg_url: str) -> None:
    import sqlite3

    import psycopg

    refused = OperationalError("connect", {}, psycopg.OperationalError("connection failed: Connection refused"))
    assert is_disconnect(refused)
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert is_disconnect(OperationalError("SELECT", {}, shutdown))
    assert not is_disconnect(OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn, pytest.raises(Exception) as info:
            conn.execute(select(func.no_such_function()))
        assert not is_disconnect(info.value)  # a real error is raised, not retried
    finally:
        engine.dispose()
    started = time.monotonic()  # a database that does not exist: said at once, not after the reconnect deadline
    with pytest.raises(AnnotateError, match='cannot open the annotation database .*"no_such_db" does not exist'):
        open_store(pg_url.rsplit("/", 1)[0] + "/no_such_db")
    assert time.monotonic() - started < annotate.engine.RECONNECT_DEADLINE_S


# -- corrections, exports and imports against the server ------------------------------------------------------


@pytest.fixture(scope="module")
def few_hundred_faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Kaggle-layout copy of 40 real val faces per class (280) and their FER+ vote rows."""
    if not SHARED_FER.is_dir() or not VOTES.is_file():
        pytest.skip("../shared/fer2013 or ../shared/ferplus is not present")
    root = tmp_path_factory.mktemp("pg_votes") / "fer_small"
    votes = pd.read_csv(VOTES)
    val = votes[votes["path"].str.startswith("val/")]
    picked = val.groupby(val["path"].str.split("/").str[1], group_keys=False).head(40).reset_index(drop=True)
    for rel in picked["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FER / rel, root / rel)
    csv = root.parent / "votes.csv"
    picked.to_csv(csv, index=False)
    return root, csv


@needs_shared
@pytest.mark.slow
def test_corrections_and_exports_from_postgresql_equal_sqlites(pg_url: str, tmp_path: Path,
                                                               few_hundred_faces: tuple[Path, Path]) -> None:
    """The same votes imported into both backends give the same corrections file (``python -m
    annotate.corrections``, what training reads) and the same FER+-style table."""
    root, csv = few_hundred_faces
    faces = load_faces(root, use_cache=False, progress=False)
    sqlite_url = f"sqlite:///{tmp_path / 'same.db'}"
    for url in (sqlite_url, pg_url):
        with open_store(url) as store:
            report = import_votes(store, read_vote_table(csv), faces, data_root=root, progress=False)
            assert report.faces == 280
    with open_store(sqlite_url) as store:
        expected = pd.read_csv(export_corrections(store, tmp_path / "sqlite.csv", "fer_small"))
        votes = ferplus_votes(store, "fer_small")
    out = tmp_path / "corrections.csv"
    command = [sys.executable, "-m", "annotate.corrections", "--db", pg_url, "--dataset", "fer_small", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "280 faces with votes" in done.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out), expected)
    with open_store(pg_url) as store:
        pd.testing.assert_frame_equal(ferplus_votes(store, "fer_small"), votes)
        assert store.agreement("fer_small") == open_store(sqlite_url).agreement("fer_small")
    assert set(expected.columns) >= {"dataset", "sample_id", "original_label", "resolved_label", "content_sha256"}
    assert np.isin(expected["resolved_label"].dropna(), ["angry", "disgust", "fear", "happy", "sad", "surprise",
                                                         "neutral", "not_a_face"]).all()


# -- the team server: compose.yaml ---------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_file_runs_the_app_on_postgresql_with_a_volume_and_a_health_check() -> None:
    compose = _compose()
    db, app = compose["services"]["db"], compose["services"]["app"]
    assert db["image"].startswith("postgres:")
    data = [v for v in db["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in compose["volumes"]  # a named volume, not a host folder
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert app["depends_on"]["db"]["condition"] == "service_healthy"  # the app waits for the database
    assert app["build"] == "." and app["environment"]["FER_DB_URL"].startswith("postgresql+psycopg://")
    user, name = db["environment"]["POSTGRES_USER"], db["environment"]["POSTGRES_DB"]
    assert f"//{user}:${{POSTGRES_PASSWORD}}@db:5432/{name}" in app["environment"]["FER_DB_URL"]
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # no default password
    assert any(p.endswith(":7860") for p in app["ports"])


@pytest.mark.slow
def test_compose_up_serves_the_app(tmp_path: Path) -> None:
    """The real thing, where Docker runs: build, start, wait for the app, stop."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client has no compose plugin (docker compose)")
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon to run compose.yaml (docker info fails)")
    env = {"POSTGRES_PASSWORD": "testpassword0123", "FER_PORT": "17860", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    project = ["docker", "compose", "-p", f"fertest{int(time.time())}", "-f", str(REPO / "compose.yaml")]
    try:
        up = subprocess.run([*project, "up", "-d", "--build", "--wait"], env=env, capture_output=True, text=True,
                            timeout=1800)
        assert up.returncode == 0, up.stderr[-2000:]
        import urllib.request

        with urllib.request.urlopen("http://127.0.0.1:17860/", timeout=30) as page:
            assert page.status == 200
    finally:
        subprocess.run([*project, "down", "-v"], env=env, capture_output=True, timeout=300)
