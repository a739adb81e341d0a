"""An annotator's pace (annotate.pace): the gaps between answers in a real SQLite store, the command, and
the Relabel tab's progress line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from annotate import AnnotateError, open_store
from annotate.pace import PAUSE_SECONDS, get_args_parser, main, pace_from_times
from conftest import Clock

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _times(*gaps: float) -> list[datetime]:
    times = [T0]
    for gap in gaps:
        times.append(times[-1] + timedelta(seconds=gap))
    return times


def test_pace_is_the_median_gap_without_pauses_or_batches() -> None:
    pace = pace_from_times(_times(2, 4, 3, 600, 0, 5))  # 600 s: a pause; 0 s: two answers in one batch
    assert (pace.answers, pace.median_seconds) == (4, 3.5)
    assert 4.0 < pace.p90_seconds <= 5.0
    assert pace.per_hour == pytest.approx(3600 / 3.5)
    assert pace.describe().startswith("3.5 s a face (90% within 4.")
    shuffled = _times(2, 4, 3)
    assert pace_from_times(shuffled[::-1]) == pace_from_times(shuffled)  # order of the input does not matter


def test_no_pace_without_a_timed_gap() -> None:
    assert pace_from_times([]) is None
    assert pace_from_times(_times()) is None
    assert pace_from_times(_times(0, 0, 0)) is None  # an import: every vote at one instant
    assert pace_from_times(_times(PAUSE_SECONDS + 1)) is None
    assert pace_from_times(_times(90), pause_seconds=120).median_seconds == 90
    with pytest.raises(AnnotateError, match="pause_seconds must be positive"):
        pace_from_times(_times(1), pause_seconds=0)


def _answers(path: Path, clock: Clock, annotator: str, gaps: list[float]) -> None:
    with open_store(str(path), now=clock) as store:
        store.register_faces("fer", [f"{annotator}{i}" for i in range(len(gaps) + 1)], [0] * (len(gaps) + 1))
        for i, gap in enumerate([0.0, *gaps]):
            clock.advance(seconds=gap)
            store.record_decision(annotator, "fer", f"{annotator}{i}", "happy" if i % 3 else "skip")


def test_the_command_prints_each_annotators_pace(tmp_path: Path, clock: Clock, capsys) -> None:
    db = tmp_path / "pace.db"
    _answers(db, clock, "ana", [2.0, 3.0, 4.0, 3.0, 120.0, 3.0])
    _answers(db, clock, "bo", [6.0, 6.0, 8.0])
    with open_store(str(db)) as store:  # an imported annotator: one batch, nothing to time
        store.register_faces("fer", ["x0", "x1"], [0, 0])
        when = datetime(2025, 1, 1, tzinfo=UTC)
        for sample_id in ("x0", "x1"):
            store.record_decision("ferplus-1", "fer", sample_id, "sad", created_at=when)
    assert main(get_args_parser().parse_args(["--db", str(db)])) == 0
    out = capsys.readouterr().out
    assert "ana: 3.0 s a face" in out and "5 answers timed" in out
    assert "bo: 6.0 s a face" in out
    assert "1 annotator(s) without timed answers" in out
    assert "median of their medians 4.5 s a face" in out
    assert main(get_args_parser().parse_args(["--db", str(db), "--annotator", "bo", "--last", "2"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("bo: 8.0 s a face") and "ana" not in out


@pytest.mark.parametrize("argv, message", [
    (["--annotator", "nobody"], "no annotator named 'nobody'"),
    (["--last", "1"], "--last must be at least 2"),
    (["--pause", "0"], "--pause must be positive"),
])
def test_the_command_refuses_bad_input(tmp_path: Path, clock: Clock, capsys, argv, message) -> None:
    db = tmp_path / "pace.db"
    _answers(db, clock, "ana", [2.0])
    assert main(get_args_parser().parse_args(["--db", str(db), *argv])) == 2
    assert message in capsys.readouterr().err


def test_the_command_refuses_a_missing_database(tmp_path: Path, capsys) -> None:
    assert main(get_args_parser().parse_args(["--db", str(tmp_path / "none.db")])) == 2
    assert "no annotation database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
