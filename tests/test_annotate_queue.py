"""The relabelling queue on a real SQLite file and a real PostgreSQL database: strategies, filters, leases,
second opinions, progress, exports (the ``store`` fixture runs each test on both backends, see ``db_url``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annotate import STRATEGIES, AnnotateError, Queue, open_store
from annotate.export import (
    CORRECTION_COLUMNS,
    FERPLUS_COLUMNS,
    corrections,
    export_corrections,
    export_ferplus,
    ferplus_votes,
)
from annotate.store import Store
from conftest import Clock
from fer_core.labels import EMOTIONS

#: For tests of the ranking alone (no lease, no vote): the SQLite case is enough.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def store(db_url: str, clock: Clock) -> Store:
    s = open_store(db_url, now=clock)
    yield s
    s.close()


def known_table() -> pd.DataFrame:
    """24 faces: 21 clean ones (3 per class, the model 0.9 sure of the label) and 3 planted label errors.

    Row 21: labelled angry, the model says happy 0.95 and angry 0.03.
    Row 22: labelled sad, the model says surprise 0.93 and sad 0.01.
    Row 23: labelled neutral, the model says disgust 0.96 and neutral 0.02.
    """
    labels, probs = [], []
    for k in range(7):
        for _ in range(3):
            p = np.full(7, 0.1 / 6)
            p[k] = 0.9
            labels.append(k)
            probs.append(p)
    for given, true, conf, self_conf in [(0, 3, 0.95, 0.03), (4, 5, 0.93, 0.01), (6, 1, 0.96, 0.02)]:
        p = np.full(7, (1 - conf - self_conf) / 5)
        p[true], p[given] = conf, self_conf
        labels.append(given)
        probs.append(p)
    frame = pd.DataFrame(np.array(probs), columns=list(EMOTIONS))
    frame.insert(0, "sample_id", [f"s{i:02d}" for i in range(len(labels))])
    frame.insert(1, "emotion", labels)
    quality = np.linspace(0.9, 0.2, len(labels))
    quality[[3, 10]] = [0.05, 0.05]  # a tie, broken by row order
    quality[5] = np.nan  # no quality: left out of low_quality
    frame.insert(2, "quality_score", quality)
    return frame


@pytest.fixture
def queue(store: Store) -> Queue:
    return Queue(store, known_table(), dataset="fer")


def simple_queue(store: Store, n: int = 6) -> Queue:
    frame = pd.DataFrame({"sample_id": [f"f{i}" for i in range(n)], "emotion": np.arange(n) % 7,
                          "quality_score": np.linspace(0.0, 1.0, n)})
    return Queue(store, frame, dataset="fer")


# -- strategies and filters ---------------------------------------------------------------------------------


def test_strategy_registry() -> None:
    assert list(STRATEGIES) == ["likely_label_error", "model_disagrees", "low_quality", "random"]
    assert all(s.description for s in STRATEGIES.values())


@SQLITE_ONLY
def test_likely_label_error_order(queue: Queue) -> None:
    # cleanlab flags exactly the planted errors, lowest self-confidence (0.01, 0.02, 0.03) first.
    assert queue.order("likely_label_error").tolist() == [22, 23, 21]
    assert queue.label_quality()[[21, 22, 23]] == pytest.approx([0.03, 0.01, 0.02])


@SQLITE_ONLY
def test_model_disagrees_order(queue: Queue) -> None:
    # Most confident disagreement first: 0.96, 0.95, 0.93.
    assert queue.order("model_disagrees").tolist() == [23, 21, 22]


@SQLITE_ONLY
def test_low_quality_order(queue: Queue) -> None:
    expected = [3, 10, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 9, 8, 7, 6, 4, 2, 1, 0]
    assert queue.order("low_quality").tolist() == expected


@SQLITE_ONLY
def test_random_order_is_seeded(store: Store, queue: Queue) -> None:
    assert queue.order("random").tolist() == np.random.default_rng(0).permutation(24).tolist()
    again = Queue(store, known_table(), dataset="fer")
    assert again.order("random").tolist() == queue.order("random").tolist()
    other = Queue(store, known_table(), dataset="fer", seed=1)
    assert other.order("random").tolist() != queue.order("random").tolist()


@SQLITE_ONLY
def test_filters(queue: Queue) -> None:
    assert queue.order("likely_label_error", emotions=["sad", "neutral"]).tolist() == [22, 23]
    assert queue.order("likely_label_error", emotions=0).tolist() == [21]
    assert queue.order("low_quality", emotions="Angry").tolist() == [21, 2, 1, 0]
    assert queue.order("low_quality", quality_range=(0.0, 0.06)).tolist() == [3, 10]
    assert queue.order("random", quality_range=(0.0, 0.06)).tolist() in ([3, 10], [10, 3])
    assert len(queue.order("random", emotions=[])) == 24  # empty filter: all emotions
    with pytest.raises(AnnotateError, match="unknown emotion"):
        queue.order("random", emotions=["contempt"])
    with pytest.raises(AnnotateError, match="low <= high"):
        queue.order("random", quality_range=(0.5, 0.1))


@SQLITE_ONLY
def test_strategy_errors(store: Store) -> None:
    q = simple_queue(store)
    assert q.strategies() == ["low_quality", "random"]
    with pytest.raises(AnnotateError, match="needs model probabilities"):
        q.next_face("a", "likely_label_error")
    with pytest.raises(AnnotateError, match="unknown queue strategy"):
        q.next_face("a", "hardest")
    with pytest.raises(AnnotateError, match="sample_id and emotion"):
        Queue(store, pd.DataFrame({"sample_id": ["x"]}), dataset="fer")
    with pytest.raises(AnnotateError, match="0..6"):
        Queue(store, pd.DataFrame({"sample_id": ["x"], "emotion": [7]}), dataset="fer")
    with pytest.raises(AnnotateError, match="shape"):
        Queue(store, pd.DataFrame({"sample_id": ["x"], "emotion": [1]}), dataset="fer", probabilities=np.ones((2, 7)))


def test_probabilities_as_array_and_missing_rows(store: Store) -> None:
    frame = known_table()
    probs = frame[list(EMOTIONS)].to_numpy(copy=True)
    probs[21] = np.nan  # no out-of-sample prediction for this face
    q = Queue(store, frame.drop(columns=list(EMOTIONS)), dataset="fer", probabilities=probs)
    assert q.order("model_disagrees").tolist() == [23, 22]
    face = q.next_face("a", "model_disagrees")
    assert face.sample_id == "s23" and face.model_label == "disgust" and face.original_label == "neutral"
    assert face.probabilities["disgust"] == pytest.approx(0.96)
    assert face.label_quality == pytest.approx(0.02)


# -- leases, expiry, who sees what ------------------------------------------------------------------------------


def test_next_face_describes_and_leases(queue: Queue, store: Store, clock: Clock) -> None:
    face = queue.next_face("alice", "likely_label_error")
    assert face.sample_id == "s22" and face.row == 22 and face.rank == 0 and face.opinions == 0
    assert face.original_label == "sad" and face.model_label == "surprise"
    assert face.lease_expires_at == clock.t + timedelta(minutes=10)
    leases = store.leases("fer")
    assert leases[["sample_id", "annotator"]].values.tolist() == [["s22", "alice"]]


def test_two_annotators_never_share_a_face_and_leases_expire(store: Store, clock: Clock) -> None:
    q = simple_queue(store)
    assert q.next_face("alice", "low_quality").sample_id == "f0"
    assert q.next_face("bob", "low_quality").sample_id == "f1"
    assert q.next_face("alice", "low_quality").sample_id == "f0"  # asking again: the same face back
    clock.advance(minutes=9, seconds=59)
    assert q.next_face("carol", "low_quality").sample_id == "f2"
    clock.advance(minutes=20)  # every lease has expired: faces return to the queue
    assert q.next_face("dave", "low_quality").sample_id == "f0"
    assert q.next_face("erin", "low_quality", lease_minutes=0.5).sample_id == "f1"
    clock.advance(seconds=31)
    assert q.next_face("frank", "low_quality").sample_id == "f1"


def test_submit_releases_the_lease_and_the_face_leaves_the_queue(store: Store) -> None:
    q = simple_queue(store)
    face = q.next_face("alice", "low_quality")
    rec = q.submit("alice", face.sample_id, "sad", "model-v1", "low_quality")
    assert rec.label == "sad" and rec.model_version == "model-v1" and rec.strategy == "low_quality"
    assert store.leases().empty
    assert q.next_face("bob", "low_quality").sample_id == "f1"  # f0 has a vote: not queued again
    assert store.decisions()[["model_version", "strategy"]].values.tolist() == [["model-v1", "low_quality"]]


def test_a_decided_face_is_never_shown_to_the_same_annotator(store: Store, clock: Clock) -> None:
    q = simple_queue(store, 3)
    q.submit("alice", q.next_face("alice", "low_quality").sample_id, "skip")
    # skip: not a vote, so others still get f0, but alice never again
    assert q.next_face("alice", "low_quality").sample_id == "f1"
    assert q.next_face("bob", "low_quality").sample_id == "f0"
    q.submit("alice", "f1", "happy")
    clock.advance(hours=1)
    assert q.next_face("alice", "low_quality").sample_id == "f2"
    q.submit("alice", "f2", "unsure")
    assert q.next_face("alice", "low_quality") is None
    for _ in range(3):
        assert q.next_face("alice", "low_quality", second_opinion=True) is None


def test_second_opinion(store: Store) -> None:
    q = simple_queue(store, 4)
    q.submit("alice", "f0", "happy")
    q.submit("alice", "f2", "sad")
    # Without second opinion, faces with a vote are not queued.
    assert q.next_face("bob", "low_quality").sample_id == "f1"
    q.release("bob")
    # With it, bob is shown faces others answered and that have fewer than 3 votes.
    face = q.next_face("bob", "low_quality", second_opinion=True)
    assert face.sample_id == "f0" and face.opinions == 1
    assert q.next_face("carol", "low_quality", second_opinion=True).sample_id == "f2"  # f0 leased to bob
    q.submit("bob", "f0", "happy")
    q.submit("carol", "f2", "sad")
    assert q.next_face("carol", "low_quality", second_opinion=True).sample_id == "f0"
    q.submit("carol", "f0", "happy")  # f0 now has 3 votes
    assert q.next_face("dave", "low_quality", second_opinion=True).sample_id == "f2"
    q.submit("dave", "f2", "sad")
    assert q.next_face("erin", "low_quality", second_opinion=True) is None
    assert q.next_face("erin", "low_quality", second_opinion=True, opinions_needed=4).sample_id == "f0"
    assert q.next_face("alice", "low_quality", second_opinion=True, opinions_needed=4) is None  # her own answers
    with pytest.raises(AnnotateError, match="at least 2"):
        q.next_face("erin", "low_quality", second_opinion=True, opinions_needed=1)
    with pytest.raises(AnnotateError, match="positive"):
        q.next_face("erin", "low_quality", lease_minutes=0)


def test_undo_puts_the_face_back(store: Store) -> None:
    q = simple_queue(store)
    q.submit("bob", "f0", "sad")
    q.submit("alice", "f0", "happy")
    q.submit("alice", "f1", "fear")
    assert store.resolved_labels("fer").set_index("sample_id").loc["f0", "resolved_label"] is None  # 1-1 tie
    face = q.undo("alice")
    assert face.sample_id == "f1" and face.undone_label == "fear" and face.row == 1
    assert face.lease_expires_at is not None
    assert q.next_face("alice", "low_quality").sample_id == "f1"  # undone: hers to answer again
    face = q.undo("alice")
    assert face.sample_id == "f0" and face.undone_label == "happy" and face.opinions == 1
    assert store.resolved_labels("fer").set_index("sample_id").loc["f0", "resolved_label"] == "sad"
    assert q.undo("alice") is None
    assert len(store.decisions()) == 5  # 3 answers, 2 reversals


def test_progress(store: Store, clock: Clock) -> None:
    q = simple_queue(store, 6)
    q.submit("alice", "f0", "happy")
    q.submit("alice", "f1", "skip")
    q.submit("bob", "f2", "sad")
    q.submit("bob", "f0", "happy")
    q.next_face("carol", "low_quality")  # leases f1
    p = q.progress("alice", "low_quality")
    assert (p.total, p.done, p.remaining, p.leased, p.annotator_today) == (6, 2, 3, 1, 1)
    p = q.progress("alice", "low_quality", second_opinion=True, opinions_needed=2)
    assert (p.total, p.done, p.remaining) == (2, 1, 1)  # f0 has 2 votes; f2 (bob's) waits for alice
    assert p.agreement.faces == 1 and p.agreement.agreement == 1.0
    p = q.progress("alice", "low_quality", emotions=["angry", "fear"])
    assert (p.total, p.done, p.remaining) == (2, 2, 0)
    clock.advance(days=1)
    assert q.progress("alice", "low_quality").annotator_today == 0


def test_progress_counts_this_annotators_answers_and_skips(store: Store) -> None:
    q = simple_queue(store, 6)
    for name, sid, label in [("alice", "f0", "happy"), ("alice", "f1", "sad"), ("bob", "f2", "fear")]:
        q.submit(name, sid, label)
    p = q.progress("newcomer", "low_quality")
    assert (p.answered, p.skipped, p.done, p.remaining) == (0, 0, 3, 3)  # others' answers are not the newcomer's
    q.submit("newcomer", "f3", "skip")
    q.submit("newcomer", "f4", "unsure")
    p = q.progress("newcomer", "low_quality")
    assert (p.answered, p.skipped, p.done, p.remaining) == (1, 1, 4, 1)
    p = q.progress("newcomer", "low_quality", emotions=["angry", "disgust", "fear"])  # f0..f2: none of hers
    assert (p.answered, p.skipped) == (0, 0)
    q.undo("newcomer")  # the unsure answer on f4
    assert (q.progress("newcomer", "low_quality").answered, q.progress("newcomer", "low_quality").skipped) == (0, 1)


def test_submit_with_require_lease_and_undo_of_a_given_decision(store: Store, clock: Clock) -> None:
    q = simple_queue(store, 4)
    face = q.next_face("alice", "low_quality")
    with pytest.raises(AnnotateError, match="leased to another annotator"):
        q.submit("mallory", face.sample_id, "happy", require_lease=True)
    first = q.submit("alice", face.sample_id, "happy", require_lease=True)
    second = q.submit("alice", q.next_face("alice", "low_quality").sample_id, "sad", require_lease=True)
    assert store.decisions()["annotator"].tolist() == ["alice", "alice"]
    back = q.undo("alice", decision_id=first.id)  # not the latest: exactly the one asked for
    assert back.sample_id == first.sample_id and back.undone_label == "happy" and back.lease_expires_at is not None
    with pytest.raises(AnnotateError, match="not an answer of 'mallory'"):
        q.undo("mallory", decision_id=second.id)
    assert q.submit("alice", back.sample_id, "fear", require_lease=True).label == "fear"  # given back, leased again
    assert store.resolved_labels("fer")["resolved_label"].tolist() == ["fear", "sad"]


def test_one_given_label_ranks_by_self_confidence(store: Store) -> None:
    """cleanlab cannot rank faces of one label: the queue ranks them by the model's probability of it instead."""
    frame = known_table()
    sad = frame[frame["emotion"] == 4].reset_index(drop=True)  # rows 12-14 (0.9 sure) and 22 (0.01 sure)
    q = Queue(store, sad, dataset="fer")
    order = q.order("likely_label_error")
    probs = sad[list(EMOTIONS)].to_numpy()[:, 4]
    assert order.tolist() == np.argsort(probs, kind="stable").tolist() and order[0] == 3
    assert "at least two given labels" in q.ranking_note("likely_label_error")
    assert q.next_face("alice", "likely_label_error").sample_id == "s22"
    assert Queue(store, frame, dataset="fer").ranking_note("likely_label_error") is None
    lone = Queue(store, sad.iloc[[0]], dataset="fer")
    assert lone.order("likely_label_error").tolist() == [0]  # one face: still served


def test_pixels_are_hashed_and_checked(store: Store) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    frame = pd.DataFrame({"sample_id": [f"f{i}" for i in range(6)], "emotion": np.arange(6) % 7,
                          "quality_score": np.linspace(0.0, 1.0, 6)})
    Queue(store, frame, dataset="fer", images=images)
    Queue(store, frame, dataset="fer", images=images)  # same pixels: fine
    with pytest.raises(AnnotateError, match="under another data set name"):
        Queue(store, frame, dataset="fer", images=images[::-1].copy())


def test_queue_with_nasty_names(store: Store) -> None:
    frame = pd.DataFrame({"sample_id": ["x'; DROP TABLE faces; --", "ordinary"], "emotion": [0, 1],
                          "quality_score": [0.1, 0.2]})
    q = Queue(store, frame, dataset="Robert'); DROP TABLE decisions;--")
    name = "O'Brien \"the ☃\" 😀"
    face = q.next_face(name, "low_quality")
    assert face.sample_id == "x'; DROP TABLE faces; --"
    q.submit(name, face.sample_id, "happy", "v'1", "low_quality", note="'; DELETE FROM annotators; --")
    table = store.resolved_labels("Robert'); DROP TABLE decisions;--")
    assert table["annotators"].iloc[0] == [name] and table["sample_id"].iloc[0] == "x'; DROP TABLE faces; --"
    assert q.progress(name, "low_quality").done == 1


# -- exports --------------------------------------------------------------------------------------------------------


def voted_store(store: Store) -> Store:
    q = simple_queue(store, 4)
    for name, sid, label in [("a", "f0", "happy"), ("b", "f0", "happy"), ("c", "f0", "sad"),
                             ("a", "f1", "disgust"), ("b", "f2", "fear"), ("a", "f2", "not_a_face")]:
        q.submit(name, sid, label)
    return store


def test_corrections_table(store: Store) -> None:
    table = corrections(voted_store(store), "fer")
    assert tuple(table.columns) == CORRECTION_COLUMNS
    assert table["sample_id"].tolist() == ["f0", "f1", "f2"]
    assert table["original_label"].tolist() == ["angry", "disgust", "fear"]
    assert table["resolved_label"].tolist() == ["happy", "disgust", None]
    assert table["changed"].tolist() == [True, False, False]
    assert table[["votes_happy", "votes_sad", "votes_fear", "votes_not_a_face"]].values.tolist() == [
        [2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]
    assert table["annotators"].tolist() == [["a", "b", "c"], ["a"], ["b", "a"]]
    assert corrections(store, "fer", only_changed=True)["sample_id"].tolist() == ["f0"]


def test_unsure_is_exported_as_kept_not_as_a_correction(store: Store, tmp_path: Path) -> None:
    q = simple_queue(store, 3)
    for name, sid, label in [("a", "f0", "unsure"), ("b", "f0", "unsure"), ("a", "f1", "happy")]:
        q.submit(name, sid, label)
    csv = pd.read_csv(export_corrections(store, tmp_path / "corr.csv", "fer"))
    columns = ["sample_id", "original_label", "resolved_label", "changed", "judged_unsure", "votes_unsure"]
    assert csv[columns].values.tolist() == [
        ["f0", "angry", "angry", False, True, 2], ["f1", "disgust", "happy", True, False, 0]]
    assert corrections(store, "fer", only_changed=True)["sample_id"].tolist() == ["f1"]
    assert ferplus_votes(store, "fer")["unsure"].tolist() == [2, 0]  # the votes themselves are kept


def test_export_corrections_csv_and_parquet(store: Store, tmp_path: Path) -> None:
    voted_store(store)
    csv = pd.read_csv(export_corrections(store, tmp_path / "corr.csv", "fer"), keep_default_na=False)
    assert tuple(csv.columns) == CORRECTION_COLUMNS
    assert csv["resolved_label"].tolist() == ["happy", "disgust", ""]
    assert [json.loads(v) for v in csv["annotators"]] == [["a", "b", "c"], ["a"], ["b", "a"]]
    parquet = pd.read_parquet(export_corrections(store, tmp_path / "corr.parquet"))
    assert tuple(parquet.columns) == CORRECTION_COLUMNS and len(parquet) == 3
    assert [list(v) for v in parquet["annotators"]] == [["a", "b", "c"], ["a"], ["b", "a"]]
    assert parquet["votes_happy"].tolist() == [2, 0, 0]
    with pytest.raises(AnnotateError, match=".csv or .parquet"):
        export_corrections(store, tmp_path / "corr.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("corr")) == ["corr.csv", "corr.parquet"]


def test_ferplus_votes(store: Store, tmp_path: Path) -> None:
    table = ferplus_votes(voted_store(store), "fer")
    assert tuple(table.columns) == FERPLUS_COLUMNS
    columns = ["happy", "sad", "disgust", "fear", "not_a_face", "unsure"]
    assert table.set_index("sample_id").loc[:, columns].values.tolist() == [
        [2, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    back = pd.read_csv(export_ferplus(store, tmp_path / "ferplus.csv"))
    assert back[list(FERPLUS_COLUMNS[3:])].to_numpy().sum(axis=1).tolist() == [3, 1, 2]
