"""The Relabel tab: the desk's work on a real SQLite store, and the tab driven through the launched app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annotate import AnnotateError, open_store
from conftest import free_port
from fer_core.browse import enrich
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.images import pixels_sha256
from ui.relabel_tab import (
    ANSWERS,
    KEYBOARD_JS,
    RelabelDesk,
    Session,
    Settings,
    annotator_for,
    check_name,
    oof_probabilities,
)


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

    def test_keyboard_script_maps_every_answer(self) -> None:
        for answer, _, key in ANSWERS:
            assert f'"{key}": "relabel-{answer}"' in KEYBOARD_JS
        assert '"Backspace": "relabel-undo"' in KEYBOARD_JS


def test_relabel_through_the_launched_app(table, tmp_path: Path) -> None:
    import app
    from gradio_client import Client

    store = open_store(tmp_path / "app.db")
    demo = app.build_demo(table, store)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        settings = ["low_quality", [], 0.0, 1.0, False, 3]
        image, text, progress = client.predict("dee", "whole data set", *settings, api_name="/relabel_start")
        assert "Given label" in text and "**0** done" in progress
        for answer in ("happy", "not_a_face", "sad"):
            client.predict("dee", "whole data set", *settings, api_name=f"/relabel_{answer}")
        client.predict("dee", "whole data set", *settings, api_name="/relabel_undo")
        decisions = store.decisions(table.name)
        live = decisions[~decisions["undone"] & decisions["reverses_id"].isna()]
        assert list(live["label"]) == ["happy", "not_a_face"]
        assert len(decisions) == 4  # three answers and one reversal
        # The Browse tab's label-status filter sees the corrections.
        from fer_core.quality import COMPONENT_COLUMNS

        filters = ["all", [], 0.0, 1.0, *([0.0, 1.0] * len(COMPONENT_COLUMNS)), "corrected", "any", "any",
                   "quality, lowest first", 0, 48]
        result = client.predict(*filters, api_name="/browse")
        corrected = store.resolved_labels(table.name)
        assert f"**{int(corrected['changed'].sum())}**" in result[1]
        with pytest.raises(Exception, match="enter your name"):
            client.predict("", "whole data set", *settings, api_name="/relabel_start")
    finally:
        demo.close()
