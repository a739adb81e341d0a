"""The reliability bench, small: real processes (spawn) against one SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.store import bench_collisions, bench_kill, bench_throughput, main
from fer_core.hardware import cpu_description


@pytest.mark.slow
def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    result = bench_throughput(tmp_path / "bench.db", processes=4, decisions=200)
    assert result.ok, result
    assert (result.rows, result.duplicates, result.missing, result.errors) == (200, 0, 0, 0)


@pytest.mark.slow
def test_killed_writer_keeps_every_acknowledged_decision(tmp_path: Path) -> None:
    result = bench_kill(tmp_path / "bench.db", kills=2)
    assert result.ok, result
    assert result.acknowledged >= 40 and result.lost == 0 and result.integrity == ["ok", "ok"]


@pytest.mark.slow
def test_simultaneous_next_face_never_collides(tmp_path: Path) -> None:
    result = bench_collisions(tmp_path / "bench.db", processes=4, rounds=5)
    assert result.ok, result
    assert result.handed_out == 20 and result.collisions == 0


@pytest.mark.slow
def test_bench_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    args = ["--db", str(db), "--processes", "2", "--decisions", "20", "--kills", "1", "--rounds", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "20 rows present, 0 duplicated" in out and "0 lost" in out and "0 collisions" in out
    assert "all checks passed" in out
    assert f"cpu: {cpu_description()}\n" in out


def test_bench_refuses_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "precious.db"
    db.write_bytes(b"decisions someone cares about")
    assert main(["--db", str(db)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert db.read_bytes() == b"decisions someone cares about"
