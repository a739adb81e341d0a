"""A small run of the load command (``python -m benchmarks.load``): concurrent ``predict`` and relabel
clients on a launched ``python app.py``; nothing dropped, no decision lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.load import check_store, main, run_load

pytestmark = pytest.mark.slow


def test_concurrent_clients_lose_nothing(tmp_path: Path) -> None:
    result = run_load(clients=4, calls=5, relabel_clients=4, answers=3, concurrency=None, timeout=300,
                      work=tmp_path / "load")
    print("\n" + "\n".join(result.summary()))
    assert result.predict_errors == [] and result.predict_wrong == []
    assert len(result.predict_latencies_ms) == 20  # every call answered, with the one face of the photo
    assert result.relabel_errors == []
    assert sorted(result.relabel_sent) == [f"load-annotator-{i}" for i in range(1, 5)]
    assert all(len(answers) == 3 for answers in result.relabel_sent.values())
    assert result.store_problems == [] and result.ok
    # Every annotator was shown different faces: the queue leases each face to one of them.
    faces = [sample_id for answers in result.relabel_sent.values() for sample_id, _ in answers]
    assert len(set(faces)) == len(faces) == 12

    # The store check would see a lost or an extra decision.
    db = tmp_path / "load" / "load_annotations.db"
    lost = {**result.relabel_sent, "load-annotator-1": result.relabel_sent["load-annotator-1"] + [("x", "happy")]}
    assert any("13 answers acknowledged" in p for p in check_store(db, lost))
    fewer = {**result.relabel_sent, "load-annotator-2": result.relabel_sent["load-annotator-2"][:2]}
    assert any("load-annotator-2" in p for p in check_store(db, fewer))


def test_the_command_refuses_unbounded_runs() -> None:
    with pytest.raises(SystemExit):
        main(["--clients", "1000", "--calls", "1000"])
    with pytest.raises(SystemExit):
        main(["--relabel-clients", "100", "--answers", "100"])  # more answers than faces in the sample
