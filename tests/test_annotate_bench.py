"""The reliability bench, small: real processes (spawn) against a SQLite file and a PostgreSQL database.

Each check runs on both backends (``db_url``: a SQLite file, then a database on the session's
throwaway PostgreSQL server, tests/pg_server.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from benchmarks.store import _prepare_server, bench_collisions, bench_depth, bench_kill, bench_throughput, main
from fer_core.hardware import cpu_description


@pytest.mark.slow
def test_concurrent_writers_lose_and_duplicate_nothing(db_url: str) -> None:
    result = bench_throughput(db_url, processes=4, decisions=200)
    assert result.ok, result
    assert (result.rows, result.duplicates, result.missing, result.errors) == (200, 0, 0, 0)


@pytest.mark.slow
def test_killed_writer_keeps_every_acknowledged_decision(db_url: str) -> None:
    result = bench_kill(db_url, kills=2)
    assert result.ok, result
    expected = ["ok", "ok"] if db_url.startswith("sqlite") else ["n/a", "n/a"]
    assert result.acknowledged >= 40 and result.lost == 0 and result.integrity == expected


@pytest.mark.slow
def test_simultaneous_next_face_never_collides(db_url: str) -> None:
    result = bench_collisions(db_url, processes=4, rounds=5)
    assert result.ok, result
    assert result.handed_out == 20 and result.collisions == 0


@pytest.mark.slow
def test_one_annotator_deep_in_the_queue_is_served_as_fast_as_at_its_start(db_url: str) -> None:
    result = bench_depth(db_url, answers=300, faces=3000)
    assert (result.answered, result.repeats) == (300, 0)
    assert result.first_rate > 0 and result.last_rate > 0


@pytest.mark.slow
def test_bench_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    args = ["--db", str(db), "--processes", "2", "--decisions", "20", "--kills", "1", "--rounds", "2", "--depth", "50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "20 rows present, 0 duplicated" in out and "0 lost" in out and "0 collisions" in out
    assert "one annotator, 50 of 50 answers recorded in a 28,000-face queue, 0 faces shown twice" in out
    assert "all checks passed" in out
    assert f"cpu: {cpu_description()}\n" in out


@pytest.mark.slow
def test_bench_command_line_on_postgresql(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--db", pg_url, "--processes", "2", "--decisions", "20", "--kills", "1", "--rounds", "2", "--depth", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(postgresql 1" in out and "integrity_check n/a" in out and "all checks passed" in out
    # A database that holds a store now is refused; --overwrite drops the store's tables first.
    assert main(args) == 2
    assert "already holds an annotation store" in capsys.readouterr().err
    refusal, described = _prepare_server(pg_url, overwrite=True)
    assert refusal is None and described.startswith("postgresql+psycopg://postgres@")
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_bench_refuses_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "precious.db"
    db.write_bytes(b"decisions someone cares about")
    assert main(["--db", str(db)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert db.read_bytes() == b"decisions someone cares about"
