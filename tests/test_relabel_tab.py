"""The Relabel tab: the desk's work on a real SQLite store, a lost PostgreSQL connection, and the tab driven
through the launched app."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import pytest

from annotate import AnnotateError, open_store
from annotate.probabilities import oof_probabilities
from conftest import Clock, serving
from fer_core.browse import enrich
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import FaceTable, load_faces
from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS
from ui.relabel_tab import (
    ANSWERS,
    KEYBOARD_JS,
    RelabelDesk,
    Session,
    Settings,
    annotator_for,
    check_name,
)

#: The Relabel tab's queue settings as the API takes them: lowest quality first, whole range, no second opinion.
RELABEL_SETTINGS = ["low_quality", [], 0.0, 1.0, False, 3]


@contextlib.contextmanager
def _launched_app(table, url: str) -> Iterator[tuple[Any, Any]]:
    """The app over ``table`` with its store opened as ``--db url`` opens it, launched on a free port:
    a ``gradio_client`` client and the store; both closed afterwards."""
    from gradio_client import Client

    import app

    store = app.open_annotations(url)
    demo = app.build_demo(table, store)
    try:
        with serving(demo) as address:
            yield Client(address, verbose=False), store
    finally:
        store.close()

@pytest.fixture(scope="module")
def table():
    return enrich(load_faces(SAMPLE_PATH))


@pytest.fixture()
def desk(table, tmp_path: Path) -> RelabelDesk:
    return RelabelDesk(open_store(tmp_path / "relabel.db"), table, model_version="test-model")


class TestDesk:
    def test_answers_are_stored_and_the_next_face_comes(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="low_quality")
        session = Session()
        first = desk.start(session, "ana", settings)
        expected = desk.table.frame.sort_values("quality_score", kind="stable")["sample_id"].iloc[0]
        assert first.sample_id == expected
        second = desk.answer(session, "not_a_face", settings)
        assert second.sample_id != first.sample_id
        decisions = desk.store.decisions(desk.table.name)
        assert list(decisions["label"]) == ["not_a_face"]
        assert decisions["model_version"].iloc[0] == "test-model" and decisions["strategy"].iloc[0] == "low_quality"
        assert desk.picture(second).shape == (384, 384)
        assert "Given label" in desk.describe(second) and "Model's top three" in desk.describe(second)

    def test_undo_gives_the_face_back_and_keeps_the_row(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="random")
        session = Session()
        face = desk.start(session, "ben", settings)
        desk.answer(session, "happy", settings)
        back = desk.undo(session)
        assert back.sample_id == face.sample_id and back.undone_label == "happy"
        assert "Undid your answer" in desk.describe(back)
        decisions = desk.store.decisions(desk.table.name)
        assert len(decisions) == 2 and bool(decisions["undone"].iloc[0])  # a reversal appended, nothing deleted
        assert desk.undo(session) is None and desk.undo(Session()) is None

    def test_progress_counts_and_names_are_escaped(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="random")
        name = "<b>Zoë</b> '; DROP TABLE decisions; --"
        session = Session()
        desk.start(session, name, settings)
        desk.answer(session, "sad", settings)
        text = desk.progress_text(name, settings)
        assert "**1** done" in text and "**1** answers today" in text
        assert "&lt;b&gt;Zoë&lt;/b&gt;" in text and "<b>" not in text
        assert name in set(desk.store.decisions(desk.table.name)["annotator"])

    def test_selection_queue_only_serves_selected_faces(self, desk: RelabelDesk) -> None:
        rows = np.array([5, 17, 42])
        selected = set(desk.table.frame["sample_id"].iloc[rows])
        settings = Settings(strategy="random")
        seen = set()
        session = Session()
        face = desk.start(session, "cy", settings, rows)
        while face is not None:
            seen.add(face.sample_id)
            face = desk.answer(session, "unsure", settings, rows)
        assert seen == selected

    def test_a_session_binds_to_one_annotator_until_it_switches(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="random")
        session = Session()
        face = desk.start(session, " ana ", settings)
        assert session.annotator == "ana" and session.face == face
        with pytest.raises(AnnotateError, match="answers as 'ana'.*Switch annotator"):
            desk.start(session, "bob", settings)  # editing the name box does not change who answers
        with pytest.raises(AnnotateError, match="answers as 'ana'"):
            desk.answer(session, "happy", settings, who="bob")
        assert desk.store.decisions(desk.table.name).empty and session.annotator == "ana"
        desk.answer(session, "happy", settings, who="ana")
        fresh = desk.switch(session)
        assert fresh.annotator is None and fresh.decisions == [] and desk.store.leases().empty  # ana's face went back
        desk.start(fresh, "bob", settings)
        desk.answer(fresh, "sad", settings)
        assert desk.store.decisions(desk.table.name)["annotator"].tolist() == ["ana", "bob"]
        with pytest.raises(AnnotateError, match="start the queue first"):
            desk.answer(Session(), "happy", settings)

    def test_undo_reverses_only_this_sessions_answers(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="random")
        first_tab, second_tab = Session(), Session()  # two tabs under the same name
        mine = desk.start(first_tab, "ana", settings)
        desk.answer(first_tab, "happy", settings)
        desk.start(second_tab, "ana", settings)
        other = desk.answer(second_tab, "sad", settings)  # ana's latest answer, from the other tab
        assert other is not None
        back = desk.undo(first_tab)
        assert back.sample_id == mine.sample_id and back.undone_label == "happy"
        log = desk.store.decisions(desk.table.name)
        answers = log[log["reverses_id"].isna()].set_index("label")
        assert answers.loc["happy", "undone"] and not answers.loc["sad", "undone"]
        assert desk.undo(first_tab) is None  # nothing more of this tab's own
        bob = Session()
        desk.start(bob, "bob", settings)
        assert desk.undo(bob) is None  # bob cannot reach ana's answers
        assert len(desk.store.decisions(desk.table.name)) == 3

    def test_an_answer_on_a_face_whose_lease_another_took_is_refused(self, table, tmp_path: Path) -> None:
        clock = Clock()
        desk = RelabelDesk(open_store(tmp_path / "lease.db", now=clock), table, model_version="m")
        settings = Settings(strategy="random")
        ana, bob = Session(), Session()
        face = desk.start(ana, "ana", settings)
        clock.advance(minutes=11)  # ana walked away; her lease ran out
        assert desk.start(bob, "bob", settings).sample_id == face.sample_id  # and bob was given the face
        with pytest.raises(AnnotateError, match="leased to another annotator.*nothing was recorded"):
            desk.answer(ana, "happy", settings)
        assert desk.store.decisions(desk.table.name).empty and ana.decisions == []
        desk.answer(bob, "sad", settings)
        assert desk.store.decisions(desk.table.name)["annotator"].tolist() == ["bob"]

    def test_progress_counts_only_this_annotators_answers_and_skips(self, desk: RelabelDesk) -> None:
        settings = Settings(strategy="random")
        ana = Session()
        desk.start(ana, "ana", settings)
        for label in ("happy", "skip", "sad"):
            desk.answer(ana, label, settings)
        total = len(desk.table.frame)
        text = desk.progress_text("newcomer", settings)
        assert text.startswith(f"**0** done, **{total - 2:,}** left for you in this queue (of {total:,}): "
                               "you answered **0** and skipped **0**")
        assert f"2 of {total:,} faces answered by anyone" in text and "newcomer: **0** answers today" in text
        text = desk.progress_text("ana", settings)
        assert text.startswith(f"**3** done, **{total - 3:,}** left for you")
        assert "you answered **2** and skipped **1**" in text

    def test_progress_shows_the_annotators_own_pace(self, table, tmp_path: Path) -> None:
        clock = Clock()
        desk = RelabelDesk(open_store(tmp_path / "pace.db", now=clock), table, model_version="m")
        settings = Settings(strategy="random")
        ana, bob = Session(), Session()
        desk.start(ana, "ana", settings)
        desk.start(bob, "bob", settings)
        assert "pace" not in desk.progress_text("ana", settings)  # nothing timed before two answers
        for seconds, label in [(0, "happy"), (2, "skip"), (4, "sad"), (300, "happy"), (3, "sad")]:
            clock.advance(seconds=seconds)  # 300 s: ana paused
            desk.answer(ana, label, settings)
        for _ in range(5):
            clock.advance(seconds=5)
            desk.answer(bob, "happy", settings)
        text = desk.progress_text("ana", settings)
        assert "your pace: **3.0 s** a face (median of your last 3 timed answers; pauses over 60 s left out)" in text
        assert "your pace: **5.0 s** a face (median of your last 4 timed answers" in desk.progress_text("bob", settings)

    def test_a_one_emotion_selection_is_ranked_by_self_confidence(self, desk: RelabelDesk) -> None:
        """Real faces of one given label, sent from Browse: cleanlab cannot rank them, the model's confidence does."""
        happy = EMOTIONS.index("happy")
        rows = np.flatnonzero(desk.table.frame["emotion"].to_numpy() == happy)
        settings = Settings()  # the default strategy, likely_label_error
        session = Session()
        face = desk.start(session, "ana", settings, rows)
        confidence = desk.probabilities[rows, happy]
        assert face.sample_id == desk.table.frame["sample_id"].iloc[rows[np.argmin(confidence)]]
        assert "ranked by the model's probability of their given label, lowest first" in desk.progress_text(
            "ana", settings, rows)
        second = desk.answer(session, "sad", settings, rows)
        assert second.label_quality >= face.label_quality
        # the whole data set: cleanlab
        assert "probability of their given label" not in desk.progress_text("ana", settings)

    def test_who_is_answering_by_identity(self) -> None:
        assert annotator_for("name", "  Ana ") == "Ana"
        with pytest.raises(AnnotateError, match="enter your name"):
            annotator_for("name", "")
        assert annotator_for("password", "typed name is ignored", username="ana") == "ana"
        with pytest.raises(AnnotateError, match="sign in first"):
            annotator_for("password", "ana")
        assert annotator_for("huggingface", "x", hf_username="ana-hf") == "hf:ana-hf"
        with pytest.raises(AnnotateError, match="sign in with Hugging Face first"):
            annotator_for("huggingface", "ana")
        with pytest.raises(ValueError, match="unknown identity"):
            annotator_for("oauth", "ana")

    def test_bad_names_are_refused(self) -> None:
        with pytest.raises(AnnotateError, match="enter your name"):
            check_name("   ")
        with pytest.raises(AnnotateError, match="at most"):
            check_name("x" * 200)
        assert check_name("  Ana  ") == "Ana"

    def test_out_of_fold_probabilities_replace_the_models_where_given(self, table, tmp_path: Path) -> None:
        frame = table.frame
        oof = pd.DataFrame({"sample_id": frame["sample_id"].iloc[:10]})
        for i, emotion in enumerate(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]):
            oof[emotion] = 1.0 if i == 2 else 0.0
        path = tmp_path / "oof.parquet"
        oof.to_parquet(path)
        probs, hits = oof_probabilities(frame, path=path)
        assert hits == 10 and np.all(probs[:10, 2] == 1.0)
        assert np.allclose(probs[10:], frame[[c for c in frame if c.startswith("p_")]].to_numpy()[10:])

    def test_out_of_fold_rows_of_other_pixels_under_the_same_name_are_not_used(self, table, tmp_path: Path) -> None:
        frame = table.frame
        oof = pd.DataFrame({"sample_id": frame["sample_id"].iloc[:4]})
        for emotion in ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]:
            oof[emotion] = 1.0 if emotion == "fear" else 0.0
        # Faces 0 and 1 are the ones the file was computed on; 2 and 3 are other pictures under the same ids.
        oof["content_hash"] = [pixels_sha256(table.images[i]) for i in (0, 1, 5, 6)]
        path = tmp_path / "oof.parquet"
        oof.to_parquet(path)
        probs, hits = oof_probabilities(frame, table.images, path)
        assert hits == 2 and np.all(probs[:2, 2] == 1.0)
        model = frame[[c for c in frame if c.startswith("p_")]].to_numpy()
        assert np.allclose(probs[2:4], model[2:4])

    def test_the_description_names_the_model_of_the_probabilities_it_shows(self, table, tmp_path: Path) -> None:
        # The sample's faces are in the shipped out-of-fold file; three with other pixels under their
        # names are not, and show the probabilities of the model whose opinion the table carries.
        images = table.images.copy()
        images[:3] = 255 - images[:3]
        changed = FaceTable(images=images, frame=table.frame, name=table.name)
        desk = RelabelDesk(open_store(tmp_path / "names.db"), changed, model_version="m", model_name="fer_tuned (1 step)")
        assert desk.oof_model == "fer_model" and desk.oof_rows == len(table) - 3
        settings = Settings(strategy="random")
        own = desk.next_face("ana", settings, np.array([0]))
        oof = desk.next_face("ana", settings, np.array([10]))
        assert "(probabilities of fer_tuned (1 step))" in desk.describe(own)
        assert "(out-of-fold probabilities of fer_model)" in desk.describe(oof)
        # Out-of-fold where the file has the face, the table's model elsewhere, as before.
        probs, hits = oof_probabilities(table.frame, images)
        assert hits == desk.oof_rows and np.allclose(desk.probabilities, probs)

    def test_the_description_escapes_the_models_name(self, table, tmp_path: Path) -> None:
        images = table.images.copy()
        images[:1] = 255 - images[:1]
        desk = RelabelDesk(open_store(tmp_path / "esc.db"), FaceTable(images=images, frame=table.frame,
                                                                       name=table.name),
                           model_version="m", model_name="<b>x</b>")
        face = desk.next_face("ana", Settings(strategy="random"), np.array([0]))
        assert "&lt;b&gt;x&lt;/b&gt;" in desk.describe(face) and "<b>" not in desk.describe(face)
        bundled = RelabelDesk(open_store(tmp_path / "default.db"), table, model_version="m")
        assert bundled.model_name == bundled.oof_model == "fer_model"  # default: the bundled model

    def test_keyboard_script_maps_every_answer(self) -> None:
        for answer, _, key in ANSWERS:
            assert f'"{key}": "relabel-{answer}"' in KEYBOARD_JS
        assert '"Backspace": "relabel-undo"' in KEYBOARD_JS


class TestLostConnection:
    """The session's PostgreSQL server stops mid-session and comes back (tests/pg_server.py)."""

    @pytest.fixture()
    def pg_desk(self, table, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> RelabelDesk:
        import annotate.engine

        monkeypatch.setattr(annotate.engine, "RECONNECT_DEADLINE_S", 0.5)  # give up at once, not after 10 s
        desk = RelabelDesk(open_store(pg_url), table, model_version="test-model")
        yield desk
        desk.store.close()

    def test_an_answer_given_while_the_server_is_down_is_kept_and_retried(self, pg_desk, pg_server) -> None:
        from ui.relabel_tab import _handlers

        settings = Settings(strategy="low_quality")
        session = Session()
        face = pg_desk.start(session, "ana", settings)
        pg_server.stop_server()
        try:
            answer = _handlers(pg_desk, "name", "")["answer"]("happy")
            inputs = (None, None, session, "ana", "whole data set", None, "low_quality", [], 0.0, 1.0, False, 3)
            with pytest.raises(gr.Error) as info:  # a message for the annotator, not a traceback
                answer(*inputs)
            assert "cannot be reached" in info.value.message and "Retry (r)" in info.value.message
            assert "“Happy” on this face is kept in this tab, not saved yet" in info.value.message
            assert session.pending[:2] == (face.sample_id, "happy") and session.face == face
        finally:
            pg_server.start_server()
        after = pg_desk.retry(session, "ana", settings)
        log = pg_desk.store.decisions(pg_desk.table.name)
        assert log[["sample_id", "label"]].values.tolist() == [[face.sample_id, "happy"]]
        assert session.pending is None and session.decisions == log["id"].tolist()
        assert after is not None and after.sample_id != face.sample_id

    def test_an_answer_that_reached_the_database_before_the_break_is_not_recorded_twice(self, pg_desk) -> None:
        settings = Settings(strategy="low_quality")
        session = Session()
        face = pg_desk.start(session, "ben", settings)
        session.pending = (face.sample_id, "sad", pg_desk.store.now())
        # The first send committed, but the connection broke before the tab heard back.
        pg_desk.store.record_decision("ben", pg_desk.table.name, face.sample_id, "sad", require_lease=True,
                                      created_at=session.pending[2])
        pg_desk.retry(session, "ben", settings)
        log = pg_desk.store.decisions(pg_desk.table.name)
        assert log["label"].tolist() == ["sad"] and session.decisions == log["id"].tolist()

    @pytest.mark.slow
    def test_through_the_launched_app_the_annotator_reads_a_message_and_retries(self, table, pg_url, pg_server,
                                                                               monkeypatch) -> None:
        from gradio_client.exceptions import AppError

        import annotate.engine

        monkeypatch.setattr(annotate.engine, "RECONNECT_DEADLINE_S", 0.5)
        settings = RELABEL_SETTINGS
        with _launched_app(table, pg_url) as (client, store):
            client.predict("dee", "whole data set", *settings, api_name="/relabel_start")
            pg_server.stop_server()
            try:
                with pytest.raises(AppError, match="kept in this tab, not saved yet: press Retry") as info:
                    client.predict("dee", "whole data set", *settings, api_name="/relabel_sad")
                assert "Traceback" not in str(info.value)
            finally:
                pg_server.start_server()
            _, text, progress = client.predict("dee", "whole data set", *settings, api_name="/relabel_retry")
            assert "Given label" in text and "**1** done" in progress
            assert store.decisions(table.name)["label"].tolist() == ["sad"]

    def test_retry_with_nothing_unsaved_starts_the_queue(self, pg_desk) -> None:
        session = Session()
        face = pg_desk.retry(session, "cy", Settings(strategy="low_quality"))
        assert session.annotator == "cy" and session.face == face and pg_desk.store.decisions().empty


def test_relabel_through_the_launched_app(table, db_url_pg_slow: str) -> None:
    """On both backends: the app's store opened as ``--db`` opens it (a SQLite file, a PostgreSQL URL)."""
    settings = RELABEL_SETTINGS
    with _launched_app(table, db_url_pg_slow) as (client, store):
        image, text, progress = client.predict("dee", "whole data set", *settings, api_name="/relabel_start")
        assert "Given label" in text and "**0** done" in progress
        for answer in ("happy", "not_a_face", "sad"):
            client.predict("dee", "whole data set", *settings, api_name=f"/relabel_{answer}")
        client.predict("dee", "whole data set", *settings, api_name="/relabel_undo")
        decisions = store.decisions(table.name)
        live = decisions[~decisions["undone"] & decisions["reverses_id"].isna()]
        assert list(live["label"]) == ["happy", "not_a_face"]
        assert len(decisions) == 4  # three answers and one reversal
        client.predict("dee", "whole data set", *settings, api_name="/relabel_unsure")  # the face given back
        given = dict(zip(table.frame["sample_id"], table.frame["emotion"]))
        real_changes = sum(EMOTIONS[given[sid]] != label for sid, label in zip(live["sample_id"], live["label"]))
        # The Browse tab's label-status filter sees the corrections.
        from fer_core.quality import COMPONENT_COLUMNS

        filters = ["all", [], 0.0, 1.0, *([0.0, 1.0] * len(COMPONENT_COLUMNS)), "corrected", "any", "any",
                   "quality, lowest first", 0, 48]
        result = client.predict(*filters, api_name="/browse")
        corrected = store.resolved_labels(table.name)
        assert f"**{int(corrected['changed'].sum())}**" in result[1]
        assert int(corrected["changed"].sum()) == real_changes  # the unsure answer keeps its face's label
        with pytest.raises(Exception, match="enter your name"):
            client.predict("", "whole data set", *settings, api_name="/relabel_start")
