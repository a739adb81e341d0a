"""The annotation store on a real SQLite file and a real PostgreSQL database: schema, migrations, decisions, votes,
undo, agreement, bad input.

The ``store`` fixture runs each test on both backends (``db_url``: a SQLite file, then a database on the
session's throwaway PostgreSQL server, tests/pg_server.py); ``sqlite_store`` is for what only SQLite has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from annotate import AnnotateError, UnknownFaceError, open_store
from annotate.engine import create_store_engine, default_db_url, is_transient, to_url
from annotate.labels import LABELS, VOTE_LABELS, check_label
from annotate.migrate import head_revision, upgrade
from annotate.models import Base
from annotate.store import Store, content_hash
from conftest import Clock
from fer_core._validation import FERError


def _six_faces(url: str, clock: Clock) -> Store:
    s = open_store(url, now=clock)
    s.register_faces("fer", [f"f{i}" for i in range(6)], [0, 1, 2, 3, 4, 5])
    return s


@pytest.fixture
def store(db_url: str, clock: Clock) -> Store:
    s = _six_faces(db_url, clock)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: Clock) -> Store:
    s = _six_faces(str(tmp_path / "ann.db"), clock)
    yield s
    s.close()


def vote(store: Store, annotator: str, sample_id: str, label: str) -> int:
    return store.record_decision(annotator, "fer", sample_id, label, model_version="m1", strategy="random").id


def resolved(store: Store) -> dict[str, object]:
    table = store.resolved_labels("fer")
    return dict(zip(table["sample_id"], table["resolved_label"]))


# -- where the database lives, and how it is opened ---------------------------------------------------


def test_default_db_url_env_data_and_cwd(tmp_path: Path) -> None:
    assert default_db_url({"FER_DB_URL": "postgresql://u@host/db"}) == "postgresql://u@host/db"
    assert default_db_url({"FER_DB_URL": "postgresql://u:s3cret@host/db"}) == "postgresql://u:s3cret@host/db"
    assert default_db_url({"FER_DB_URL": str(tmp_path / "x.db")}) == f"sqlite:///{tmp_path / 'x.db'}"
    data = tmp_path / "data"
    data.mkdir()
    assert default_db_url({}, data_dir=data) == f"sqlite:///{data / 'fer_annotations.db'}"
    expected = f"sqlite:///{tmp_path / 'fer_annotations.db'}"
    assert default_db_url({}, data_dir=tmp_path / "absent", cwd=tmp_path) == expected


def test_open_store_sets_sqlite_safety_pragmas(sqlite_store: Store) -> None:
    store = sqlite_store
    with store.engine.connect() as conn:
        def pragma(name):
            return conn.execute(text(f"PRAGMA {name}")).scalar()
        assert pragma("journal_mode") == "wal"
        assert pragma("foreign_keys") == 1
        assert pragma("synchronous") == 2  # FULL
        assert pragma("busy_timeout") == 30000
    assert store.schema_revision() == head_revision() == "0002"
    assert store.integrity_check() == "ok"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnnotateError, match="does not exist"):
        open_store(str(tmp_path / "no" / "such" / "ann.db"))


def test_sqlite_specific_code_lives_only_in_engine_py() -> None:
    """PRAGMAs, BEGIN IMMEDIATE and sqlite names appear in code (not docs) of engine.py only."""
    import ast

    package = Path(__file__).resolve().parents[1] / "annotate"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "engine.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            code_text = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            if code_text and ("PRAGMA" in node.value.upper() or "BEGIN IMMEDIATE" in node.value.upper()):
                offenders.append(f"{path.name}: {node.value[:40]!r}")
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
            if "sqlite" in name.lower():
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_busy_errors_are_recognised_as_transient(tmp_path: Path) -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    err = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(err)
    assert not is_transient(OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: x")))
    assert to_url("sqlite:///a.db").get_backend_name() == "sqlite"


# -- migrations ------------------------------------------------------------------------------------------


def test_models_match_the_migrated_schema(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_upgrade_from_0001_keeps_every_decision(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "old.db"
    engine = create_store_engine(str(path))
    upgrade(engine, "0001")  # a database written by the first release
    when = "2024-06-01 10:00:00.000000"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO annotators (id, name, created_at) VALUES (1, :a, :t), (2, :b, :t)"),
                     {"a": "ann", "b": "bo'b", "t": when})
        conn.execute(text("INSERT INTO faces (id, dataset, sample_id, content_sha256, original_label, created_at) "
                          "VALUES (1, 'fer', 's1', NULL, 0, :t), (2, 'fer', 's2', NULL, 3, :t)"), {"t": when})
        conn.execute(text("INSERT INTO decisions (id, annotator_id, face_id, created_at, label, model_version, "
                          "strategy, note, reverses_id) VALUES (1, 1, 1, :t, 'happy', 'v0', 'random', NULL, NULL), "
                          "(2, 2, 1, :t, 'happy', 'v0', 'random', 'sure', NULL), "
                          "(3, 1, 2, :t, 'sad', 'v0', 'random', NULL, NULL), (4, 1, 2, :t, NULL, NULL, NULL, NULL, 3)"),
                     {"t": when})
        assert "ix_decisions_face_id" not in {i["name"] for i in inspect(conn).get_indexes("decisions")}
    engine.dispose()

    store = open_store(str(path), now=clock)  # upgrades to head on open
    assert store.schema_revision() == "0002"
    with store.engine.connect() as conn:
        assert "ix_decisions_face_id" in {i["name"] for i in inspect(conn).get_indexes("decisions")}
    log = store.decisions()
    assert log["id"].tolist() == [1, 2, 3, 4]
    assert log["label"].tolist() == ["happy", "happy", "sad", None]
    assert log["undone"].tolist() == [False, False, True, False]
    assert log["created_at"].iloc[0] == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert resolved(store) == {"s1": "happy"}
    # and the upgraded store keeps working
    store.record_decision("ann", "fer", "s2", "angry")
    assert resolved(store) == {"s1": "happy", "s2": "angry"}
    store.close()


# -- decisions, votes, resolution ---------------------------------------------------------------------------


def test_majority_wins_and_ties_stay_unresolved(store: Store) -> None:
    for name, label in [("a", "happy"), ("b", "happy"), ("c", "sad")]:
        vote(store, name, "f0", label)
    for name, label in [("a", "fear"), ("b", "surprise")]:
        vote(store, name, "f1", label)
    vote(store, "a", "f2", "not_a_face")
    table = store.resolved_labels("fer").set_index("sample_id")
    assert table.loc["f0", "resolved_label"] == "happy"
    assert table.loc["f0", "changed"]  # original of f0 is angry
    assert table.loc["f1", "resolved_label"] is None
    assert not table.loc["f1", "changed"]
    assert table.loc["f2", "resolved_label"] == "not_a_face"
    assert table.loc["f0", ["votes_happy", "votes_sad", "votes_angry"]].tolist() == [2, 1, 0]
    assert table.loc["f0", "n_annotators"] == 3
    assert table.loc["f0", "annotators"] == ["a", "b", "c"]
    assert table.loc["f0", "original_label"] == "angry"
    assert list(table.index) == ["f0", "f1", "f2"]  # faces without votes left out
    assert len(store.resolved_labels("fer", include_undecided=True)) == 6


def test_latest_answer_per_annotator_counts_and_skip_is_no_vote(store: Store) -> None:
    vote(store, "a", "f0", "happy")
    vote(store, "a", "f0", "sad")  # changed their mind: one vote, the latest
    vote(store, "a", "f0", "skip")  # skip is not a vote and does not erase it
    vote(store, "b", "f1", "skip")
    table = store.resolved_labels("fer").set_index("sample_id")
    assert table.loc["f0", "resolved_label"] == "sad"
    assert table.loc["f0", "n_annotators"] == 1
    assert "f1" not in table.index


def test_undo_appends_a_reversal_and_changes_the_resolved_label(store: Store, clock: Clock) -> None:
    vote(store, "a", "f0", "happy")
    vote(store, "b", "f0", "happy")
    first = vote(store, "c", "f0", "sad")
    clock.advance(seconds=5)
    second = vote(store, "c", "f1", "fear")
    assert resolved(store)["f0"] == "happy"

    undone = store.undo_last("c")
    assert undone is not None and undone.id == second and undone.label == "fear" and undone.sample_id == "f1"
    assert "f1" not in resolved(store)
    undone = store.undo_last("c")
    assert undone.id == first
    vote(store, "c", "f0", "happy")
    log = store.decisions("fer")
    assert len(log) == 7  # 5 answers + 2 reversals: nothing deleted or rewritten
    assert log.loc[log["id"] == first, "label"].item() == "sad"
    assert log.loc[log["id"] == first, "undone"].item()
    assert log["reverses_id"].dropna().tolist() == [second, first]
    assert store.resolved_labels("fer").set_index("sample_id").loc["f0", "votes_happy"] == 3

    assert store.undo_last("nobody") is None  # an unknown annotator has nothing to undo
    vote(store, "d", "f2", "sad")
    assert store.undo_last("d") is not None
    assert store.undo_last("d") is None


def test_undo_is_limited_to_the_given_dataset(store: Store) -> None:
    store.register_faces("other", ["x"], [0])
    vote(store, "a", "f0", "happy")
    store.record_decision("a", "other", "x", "sad")
    assert store.undo_last("a", dataset="fer").sample_id == "f0"


def test_undo_of_a_given_decision_reverses_only_that_answer_of_that_annotator(store: Store) -> None:
    """A session undoes the answers it recorded: by id, never another person's, never twice."""
    mine = vote(store, "a", "f0", "happy")
    later = vote(store, "a", "f1", "sad")  # the same name, from another tab: not this session's to undo
    theirs = vote(store, "b", "f2", "fear")
    undone = store.undo_last("a", dataset="fer", decision_id=mine)
    assert undone.id == mine and undone.sample_id == "f0" and undone.label == "happy"
    log = store.decisions("fer").set_index("id")
    assert log.loc[mine, "undone"] and not log.loc[later, "undone"] and not log.loc[theirs, "undone"]
    before = len(store.decisions())
    with pytest.raises(AnnotateError, match="not an answer of 'a'"):
        store.undo_last("a", decision_id=theirs)  # someone else's answer
    with pytest.raises(AnnotateError, match="undone already"):
        store.undo_last("a", decision_id=mine)
    reversal = int(store.decisions()["id"].max())
    with pytest.raises(AnnotateError, match="not an answer"):
        store.undo_last("a", decision_id=reversal)  # a reversal row is not an answer
    with pytest.raises(AnnotateError, match="not an answer"):
        store.undo_last("nobody", decision_id=later)
    with pytest.raises(AnnotateError, match="not an answer"):
        store.undo_last("a", decision_id=10_000)
    with pytest.raises(AnnotateError, match="must be an integer"):
        store.undo_last("a", decision_id="1")
    store.register_faces("other", ["x"], [0])
    elsewhere = store.record_decision("a", "other", "x", "sad").id
    with pytest.raises(AnnotateError, match="data set 'other'"):
        store.undo_last("a", dataset="fer", decision_id=elsewhere)
    assert len(store.decisions()) == before + 1  # nothing written by the refusals
    assert resolved(store) == {"f1": "sad", "f2": "fear"}


def test_an_answer_that_requires_a_lease_needs_the_annotators_own(store: Store, clock: Clock) -> None:
    order = store.register_faces("fer", [f"f{i}" for i in range(6)], [0, 1, 2, 3, 4, 5])
    assert store.lease_next("a", "fer", order).sample_id == "f0"
    with pytest.raises(AnnotateError, match="leased to another annotator"):
        store.record_decision("b", "fer", "f0", "happy", require_lease=True)  # a's face
    with pytest.raises(AnnotateError, match="you do not hold face 'f1'"):
        store.record_decision("a", "fer", "f1", "happy", require_lease=True)  # never leased
    assert store.decisions().empty
    assert store.record_decision("a", "fer", "f0", "happy", require_lease=True).label == "happy"
    with pytest.raises(AnnotateError, match="you do not hold"):
        store.record_decision("a", "fer", "f0", "sad", require_lease=True)  # the answer released the lease

    assert store.lease_next("a", "fer", order).sample_id == "f1"
    clock.advance(minutes=11)  # a's lease ran out, but no one took f1: still a's to answer
    assert store.record_decision("a", "fer", "f1", "sad", require_lease=True).label == "sad"

    assert store.lease_next("a", "fer", order).sample_id == "f2"
    clock.advance(minutes=11)
    assert store.lease_next("b", "fer", order).sample_id == "f2"  # expired, and taken by b
    with pytest.raises(AnnotateError, match="leased to another annotator"):
        store.record_decision("a", "fer", "f2", "sad", require_lease=True)
    assert store.decisions()["label"].tolist() == ["happy", "sad"]
    assert store.record_decision("a", "fer", "f5", "fear").label == "fear"  # without require_lease: as before


def test_unsure_keeps_the_original_label_and_is_not_a_change(store: Store) -> None:
    for name, label in [("a", "unsure"), ("b", "unsure"), ("c", "happy")]:
        vote(store, name, "f0", label)  # f0 is angry
    vote(store, "a", "f1", "unsure")  # f1 is disgust
    vote(store, "a", "f2", "happy")  # f2 is fear: a real change
    for name, label in [("a", "unsure"), ("b", "sad")]:
        vote(store, name, "f3", label)  # a tie: unresolved
    table = store.resolved_labels("fer").set_index("sample_id")
    assert table["resolved_label"].to_dict() == {"f0": "angry", "f1": "disgust", "f2": "happy", "f3": None}
    assert table["changed"].to_dict() == {"f0": False, "f1": False, "f2": True, "f3": False}
    assert table["judged_unsure"].to_dict() == {"f0": True, "f1": True, "f2": False, "f3": False}
    assert table.loc["f0", ["votes_unsure", "votes_happy"]].tolist() == [2, 1]  # the votes are kept as given


def test_count_today_uses_the_store_clock(store: Store, clock: Clock) -> None:
    clock.t = datetime(2025, 3, 1, 23, 59, tzinfo=UTC)
    vote(store, "a", "f0", "happy")
    vote(store, "a", "f1", "skip")
    clock.advance(minutes=2)  # next day (UTC)
    vote(store, "a", "f2", "sad")
    vote(store, "a", "f3", "sad")
    store.undo_last("a")
    assert store.count_today("a") == 1
    assert store.count_today("nobody") == 0


def test_answer_times_oldest_first_with_skips_without_undo_rows(store: Store, clock: Clock) -> None:
    expected = []
    for sample_id, label, seconds in [("f0", "happy", 0), ("f1", "skip", 4), ("f2", "sad", 3), ("f3", "sad", 5)]:
        clock.advance(seconds=seconds)
        expected.append(clock.t)
        vote(store, "a", sample_id, label)
    clock.advance(seconds=2)
    store.undo_last("a")  # f3's answer is undone: it still took a look; the undo row itself is no answer
    vote(store, "b", "f4", "angry")
    assert store.answer_times("a") == expected
    assert store.answer_times("a", last=2) == expected[-2:]
    assert store.answer_times("a", dataset="other") == []
    assert store.answer_times("nobody") == []
    for bad in (0, -1, True, 1.5):
        with pytest.raises(AnnotateError, match="last must be a positive integer"):
            store.answer_times("a", last=bad)


# -- agreement ---------------------------------------------------------------------------------------------


AGREEMENT_VOTES = {  # 4 faces x 3 annotators
    "f0": ["happy", "happy", "happy"],
    "f1": ["happy", "happy", "sad"],
    "f2": ["sad", "sad", "sad"],
    "f3": ["angry", "sad", "happy"],
}


def test_fleiss_kappa_on_a_known_table(store: Store) -> None:
    for sid, labels in AGREEMENT_VOTES.items():
        for name, label in zip("abc", labels):
            vote(store, name, sid, label)
    # By hand (Fleiss 1971), n = 3 raters: P_i = (sum_j n_ij^2 - n) / (n (n - 1))
    #   f0: (9 - 3)/6 = 1, f1: (4 + 1 - 3)/6 = 1/3, f2: 1, f3: (1 + 1 + 1 - 3)/6 = 0; P = 7/12.
    #   p_happy = 6/12, p_sad = 5/12, p_angry = 1/12; Pe = (36 + 25 + 1)/144 = 62/144.
    #   kappa = (7/12 - 62/144) / (1 - 62/144) = 22/82 = 11/41.
    result = store.agreement("fer")
    assert result.faces == 4 and result.kappa_faces == 4 and result.kappa_raters == 3
    assert result.kappa == pytest.approx(11 / 41)
    assert result.agreement == pytest.approx(7 / 12)
    assert result.unanimous == pytest.approx(0.5)

    # A face with only two votes: kappa keeps 3 raters on the 4 faces (12 votes rather than 10).
    vote(store, "a", "f4", "sad")
    vote(store, "b", "f4", "happy")
    result = store.agreement("fer")
    assert result.faces == 5 and result.kappa_faces == 4 and result.kappa == pytest.approx(11 / 41)
    assert result.agreement == pytest.approx((7 / 3) / 5)


def test_agreement_is_undefined_without_enough_votes(store: Store) -> None:
    assert store.agreement().kappa is None and store.agreement().faces == 0
    for sid in ("f0", "f1"):
        vote(store, "a", sid, "happy")
        vote(store, "b", sid, "happy")
    result = store.agreement()
    assert result.agreement == 1.0 and result.kappa is None  # every vote the same: chance agreement is 1


# -- input checks, names, SQL injection ------------------------------------------------------------------------


NASTY = ["Robert'); DROP TABLE decisions;--", "' OR '1'='1", 'Zoë "the ☃" 😀', "名前\\%_", "a" * 100]


def test_names_and_text_are_stored_verbatim(store: Store) -> None:
    store.register_faces(NASTY[0], [NASTY[1]], [3])
    for name in NASTY:
        rec = store.record_decision(name, NASTY[0], NASTY[1], "happy", model_version=NASTY[2], strategy=NASTY[3],
                                    note="line 1\nline 2 '; DELETE FROM faces; --")
        assert rec.annotator == name
    assert store.annotators() == NASTY
    log = store.decisions(NASTY[0])
    assert log["annotator"].tolist() == NASTY
    assert set(log["sample_id"]) == {NASTY[1]} and set(log["model_version"]) == {NASTY[2]}
    assert log["note"].iloc[0] == "line 1\nline 2 '; DELETE FROM faces; --"
    table = store.resolved_labels(NASTY[0])
    assert table["annotators"].iloc[0] == NASTY and table["n_annotators"].iloc[0] == len(NASTY)
    assert len(store.resolved_labels("fer", include_undecided=True)) == 6  # the other tables are intact
    assert store.undo_last(NASTY[0]).annotator == NASTY[0]
    assert store.integrity_check() == ("ok" if store.engine.dialect.name == "sqlite" else None)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # checked before the database is asked
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.record_decision("a", "fer", "f0", "contempt"), "unknown label"),
        (lambda s: s.record_decision("a", "fer", "f0", 9), "unknown label"),
        (lambda s: s.record_decision("", "fer", "f0", "happy"), "empty"),
        (lambda s: s.record_decision("   ", "fer", "f0", "happy"), "empty"),
        (lambda s: s.record_decision("a" * 101, "fer", "f0", "happy"), "at most 100"),
        (lambda s: s.record_decision("a\x00b", "fer", "f0", "happy"), "control characters"),
        (lambda s: s.record_decision(None, "fer", "f0", "happy"), "must be text"),
        (lambda s: s.record_decision("a", "fer", "f0", "happy", note="x" * 2001), "at most 2000"),
        (lambda s: s.record_decision("a", "fer", "nope", "happy"), "unknown face"),
        (lambda s: s.record_decision("a", "other", "f0", "happy"), "unknown face"),
        (lambda s: s.register_faces("fer", ["f0"], [4]), "differ from the ones"),
        (lambda s: s.register_faces("fer", ["z", "z"], [0, 0]), "unique"),
        (lambda s: s.register_faces("fer", ["z"], [7]), "0..6"),
    ],
)
def test_bad_input_raises_a_clear_fer_error(store: Store, call, message: str) -> None:
    with pytest.raises(AnnotateError, match=message) as info:
        call(store)
    assert isinstance(info.value, FERError)
    assert store.decisions().empty


def test_unknown_face_error_type(store: Store) -> None:
    with pytest.raises(UnknownFaceError):
        store.record_decision("a", "fer", "missing", "happy")


def test_label_spellings() -> None:
    assert check_label("Happy") == "happy"
    assert check_label("happiness") == "happy"
    assert check_label(3) == "happy"
    assert check_label("Not a face") == "not_a_face"
    assert check_label("UNSURE") == "unsure"
    assert check_label("skip") == "skip"
    assert set(LABELS) - set(VOTE_LABELS) == {"skip"}
    with pytest.raises(AnnotateError):
        check_label(True)


def test_content_hash_ties_decisions_to_pixels(store: Store) -> None:
    face = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    digest = content_hash(face)
    assert len(digest) == 64
    store.register_faces("fer", ["f0"], [0], [digest])  # fills the missing hash
    assert store.resolved_labels("fer", include_undecided=True)["content_sha256"].iloc[0] == digest
    with pytest.raises(AnnotateError, match="pixels"):
        store.register_faces("fer", ["f0"], [0], [content_hash(face[::-1].copy())])
    with pytest.raises(AnnotateError, match="uint8"):
        content_hash(face.astype(np.float32))


def test_decisions_survive_reopening(db_url: str, clock: Clock) -> None:
    path = db_url
    with open_store(path, now=clock) as s:
        s.register_faces("fer", ["f0"], [0])
        s.record_decision("a", "fer", "f0", "sad")
    with open_store(path, now=clock) as s:
        assert resolved(s) == {"f0": "sad"}


# -- errors on open, busy handling ----------------------------------------------------------------------------


def test_database_from_a_newer_version_is_refused_clearly(db_url: str) -> None:
    path = db_url
    open_store(path).close()
    engine = create_store_engine(path)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(AnnotateError, match="newer version"):
        open_store(path)


def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the tables you are looking for" * 100)
    with pytest.raises(AnnotateError, match="cannot open the annotation database"):
        open_store(str(path))


def test_retry_backs_off_on_busy_and_gives_up_after_the_deadline() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from annotate.engine import retry
    from annotate.errors import StoreBusyError

    busy = OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))
    calls, retried = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise busy
        return "done"

    assert retry(flaky, on_retry=retried.append) == "done"
    assert len(calls) == 3 and len(retried) == 2

    def broken() -> None:
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))

    with pytest.raises(OperationalError):
        retry(broken)  # not transient: raised at once

    def always_busy() -> None:
        raise busy

    with pytest.raises(StoreBusyError, match="stayed locked"):
        retry(always_busy, deadline_s=0.05)


def test_a_held_write_lock_delays_but_does_not_fail_a_decision(sqlite_store: Store) -> None:
    import sqlite3
    import threading
    import time

    store = sqlite_store
    database = store.engine.url.database
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()
    start = time.monotonic()
    try:
        rec = store.record_decision("a", "fer", "f0", "happy")
    finally:
        released.join()
        other.close()
    assert time.monotonic() - start >= 0.25
    assert rec.id == 1 and resolved(store) == {"f0": "happy"}


def test_leasing_reads_the_order_in_slices_and_finds_faces_far_down_it(tmp_path: Path, clock: Clock) -> None:
    """The first faces an annotator may take sit past the first slices (256, then 512 ...) of the order.

    SQLite only: the slicing is plain SQLAlchemy, the same on PostgreSQL, and 2,400 commits take seconds.
    """
    store = open_store(str(tmp_path / "deep.db"), now=clock)
    ids = store.register_faces("deep", [f"d{i}" for i in range(1500)], np.zeros(1500, dtype=int))
    order = ids[::-1].copy()  # the queue's order: last registered first
    for i in range(900):  # the first 900 faces of the order already have a vote
        store.record_decision("earlier", "deep", f"d{1499 - i}", "happy")
    store.lease_face("holder", "deep", "d599")  # the 901st is held by someone else
    grant = store.lease_next("me", "deep", order)
    assert grant.position == 901 and grant.sample_id == "d598"
    # Second opinions come from the voted faces, from the front of the order.
    again = store.lease_next("me", "deep", order, second_opinion=True, opinions_needed=2)
    assert again.position == 0 and again.opinions == 1
    # Asking again gave back "me"'s first face: the next annotator finds it past the 900 voted ones.
    assert store.lease_next("earlier", "deep", order).sample_id == "d598"
    # Nothing left to give once every face has a vote: the whole order is read, and None returned.
    for i in range(600):
        store.record_decision("rest", "deep", f"d{i}", "sad")
    assert store.lease_next("late", "deep", order) is None
    store.close()


def _answer_next(store: Store, annotator: str, order: np.ndarray, n: int, **mode) -> list[int]:
    """``annotator`` takes and answers the next ``n`` faces of ``order``; their positions."""
    positions = []
    for _ in range(n):
        grant = store.lease_next(annotator, "deep", order, **mode)
        store.record_decision(annotator, "deep", grant.sample_id, "happy", require_lease=True)
        positions.append(grant.position)
    return positions


def test_leasing_skips_the_faces_done_for_good_and_reads_them_again_after_an_undo(tmp_path: Path,
                                                                                   clock: Clock) -> None:
    """A lease does not read again the leading faces that are done for good (answered by the annotator, or voted
    on), so it costs the same after many answers; faces that may come back (leased by someone else, an
    undone answer, a second opinion wanted) are found again, also when the undo comes from another process."""
    path = str(tmp_path / "deep.db")
    store = open_store(path, now=clock)
    ids = store.register_faces("deep", [f"d{i}" for i in range(1200)], np.zeros(1200, dtype=int))
    order = ids.copy()
    store.lease_face("holder", "deep", "d0")  # the first face is held by someone else: not done
    for i in range(1, 600):
        store.record_decision("earlier", "deep", f"d{i}", "sad")
    assert _answer_next(store, "me", order, 3) == [600, 601, 602]
    read: list[np.ndarray] = []
    state_of = store._queue_state
    store._queue_state = lambda conn, aid, dataset, now, *, face_ids=None: (
        read.append(face_ids), state_of(conn, aid, dataset, now, face_ids=face_ids))[1]
    assert _answer_next(store, "me", order, 1) == [603]
    assert read[0][0] == ids[0]  # the held face keeps the whole order in view ...
    clock.advance(minutes=11)  # ... until its lease runs out: it is the next face
    assert _answer_next(store, "me", order, 1) == [0]
    assert _answer_next(store, "me", order, 1) == [604]  # this lease reads from the front, and remembers
    read.clear()
    assert _answer_next(store, "me", order, 1) == [605]
    assert read[0][0] == ids[604] and sum(len(r) for r in read) <= 256  # the 604 done faces are not read again
    # An undo (here by another process on the same database) makes its face wanted again.
    other = open_store(path, now=clock)
    other.undo_last("earlier", dataset="deep")  # d599, at position 599
    read.clear()
    assert _answer_next(store, "me", order, 1) == [599]
    assert read[0][0] == ids[0]
    assert _answer_next(store, "me", order, 1) == [606]
    # Second opinions: a face without a vote is not done, and becomes wanted once someone votes on it.
    store.record_decision("earlier", "deep", "d607", "sad")
    assert store.lease_next("second", "deep", order, second_opinion=True, opinions_needed=3).position == 0
    store.record_decision("second", "deep", "d0", "sad")
    store.record_decision("third", "deep", "d0", "sad")  # d0: three votes, done for second opinions too
    assert _answer_next(store, "second", order, 2, second_opinion=True, opinions_needed=3) == [1, 2]
    store.record_decision("earlier", "deep", "d700", "sad")
    assert store.lease_next("fresh", "deep", order).position == 608  # d607 and d700 voted, d608 not
    other.close()
    store.close()


def test_agreement_is_computed_again_only_when_older_than_asked(store: Store) -> None:
    for annotator, label in (("a", "happy"), ("b", "happy")):
        vote(store, annotator, "f0", label)
    first = store.agreement("fer", max_age=60)
    assert first.unanimous == 1.0
    vote(store, "c", "f0", "sad")
    assert store.agreement("fer", max_age=60) is first  # within the age asked: the same figure
    assert store.agreement("fer").unanimous == 0.0  # max_age 0 (the default): computed anew


def test_an_answer_sent_again_with_its_time_is_recorded_once(store: Store, clock: Clock) -> None:
    """A retry after a lost connection sends the answer with the time it was given: one row, however often."""
    given_at = clock()
    first = store.record_decision("a", "fer", "f0", "happy", created_at=given_at)
    again = store.record_decision("a", "fer", "f0", "happy", created_at=given_at)
    assert again == first and store.decisions()["id"].tolist() == [first.id]
    store.record_decision("a", "fer", "f0", "sad", created_at=given_at)  # another answer: recorded
    clock.advance(seconds=1)
    store.record_decision("a", "fer", "f0", "happy")  # the same answer later: recorded too
    assert store.decisions()["label"].tolist() == ["happy", "sad", "happy"]
    with pytest.raises(AnnotateError, match="timezone-aware"):
        store.record_decision("a", "fer", "f0", "happy", created_at=datetime(2025, 1, 1))
