"""Who is who in the Relabel tab, through a launched app: bound sessions, own undo, leases, sign-in.

Each test launches a real app (the whole app for the open ``"name"`` identity, the Relabel
tab alone for the sign-in identities) over the bundled sample and a real SQLite store, and
drives it with ``gradio_client`` as a person's browser tab or a script would.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest

from annotate import open_store
from conftest import Clock, free_port
from fer_core.browse import enrich
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from ui.relabel_tab import RelabelDesk, build_relabel_tab

pytestmark = pytest.mark.slow

#: Faces (whole data set), then the queue settings: strategy, given labels, quality range, second opinion, N.
SETTINGS = ["whole data set", "random", [], 0.0, 1.0, False, 3]
SAMPLE_ID = re.compile(r"`([^`]+)`")


@pytest.fixture(scope="module")
def table():
    return enrich(load_faces(SAMPLE_PATH))


def _client(url: str, **kwargs):
    from gradio_client import Client

    return Client(url, verbose=False, **kwargs)


def _launch_app(table, store):
    import app

    demo = app.build_demo(table, store)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}"


def _launch_tab(table, store, identity: str, **launch):
    import gradio as gr

    with gr.Blocks() as demo:
        build_relabel_tab(RelabelDesk(store, table, model_version="test-model"), identity=identity)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    return demo, f"http://127.0.0.1:{port}"


def _answers(store, dataset: str) -> pd.DataFrame:
    log = store.decisions(dataset)
    return log[log["reverses_id"].isna()]


def test_a_tab_answers_and_undoes_only_as_its_bound_annotator(table, tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db")
    demo, url = _launch_app(table, store)
    try:
        first_tab, second_tab = _client(url), _client(url)
        first_tab.predict("ana", *SETTINGS, api_name="/relabel_start")
        first_tab.predict("ana", *SETTINGS, api_name="/relabel_happy")
        second_tab.predict("ana", *SETTINGS, api_name="/relabel_start")  # the same name in another tab
        second_tab.predict("ana", *SETTINGS, api_name="/relabel_sad")
        first_tab.predict("ana", *SETTINGS, api_name="/relabel_undo")  # undoes this tab's answer, not the latest
        answers = _answers(store, table.name).set_index("label")
        assert answers.loc["happy", "undone"] and not answers.loc["sad", "undone"]
        first_tab.predict("ana", *SETTINGS, api_name="/relabel_undo")  # nothing more of this tab's
        assert len(store.decisions(table.name)) == 3

        # Typing another name does not change who answers: it is refused, nothing recorded.
        with pytest.raises(Exception, match="answers as 'ana'"):
            second_tab.predict("bob", *SETTINGS, api_name="/relabel_fear")
        with pytest.raises(Exception, match="Switch annotator"):
            second_tab.predict("bob", *SETTINGS, api_name="/relabel_start")
        assert len(store.decisions(table.name)) == 3
        second_tab.predict(api_name="/relabel_switch")
        _, _, progress = second_tab.predict("bob", *SETTINGS, api_name="/relabel_start")
        assert progress.startswith("**0** done") and "you answered **0** and skipped **0**" in progress
        assert "bob: **0** answers today" in progress  # a new annotator: none of ana's answers counted as his
        second_tab.predict("bob", *SETTINGS, api_name="/relabel_fear")
        _, _, progress = second_tab.predict("bob", *SETTINGS, api_name="/relabel_skip")
        assert progress.startswith("**2** done") and "you answered **1** and skipped **1**" in progress
        assert _answers(store, table.name)["annotator"].tolist() == ["ana", "ana", "bob", "bob"]
    finally:
        demo.close()


def test_an_answer_after_the_lease_went_to_someone_else_is_refused(table, tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "app.db", now=clock)
    demo, url = _launch_app(table, store)
    try:
        ana, bob = _client(url), _client(url)
        _, text, _ = ana.predict("ana", *SETTINGS, api_name="/relabel_start")
        clock.advance(minutes=11)  # ana's lease runs out and bob is given her face
        _, bob_text, _ = bob.predict("bob", *SETTINGS, api_name="/relabel_start")
        assert SAMPLE_ID.search(bob_text).group(1) == SAMPLE_ID.search(text).group(1)
        with pytest.raises(Exception, match="leased to another annotator"):
            ana.predict("ana", *SETTINGS, api_name="/relabel_happy")
        assert store.decisions(table.name).empty
        bob.predict("bob", *SETTINGS, api_name="/relabel_sad")
        ana.predict("ana", *SETTINGS, api_name="/relabel_start")  # a new face for ana, and her answer counts
        ana.predict("ana", *SETTINGS, api_name="/relabel_happy")
        assert _answers(store, table.name)["annotator"].tolist() == ["bob", "ana"]
    finally:
        demo.close()


def test_password_sign_in_is_who_answers(table, tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db")
    demo, url = _launch_tab(table, store, "password", auth=[("ana", "pw-ana"), ("bob", "pw-bob")])
    try:
        ana = _client(url, auth=("ana", "pw-ana"))
        _, _, progress = ana.predict("mallory", *SETTINGS, api_name="/relabel_start")  # the typed name is ignored
        assert "ana: **0** answers today" in progress
        ana.predict("mallory", *SETTINGS, api_name="/relabel_happy")
        assert _answers(store, table.name)["annotator"].tolist() == ["ana"]
        files = ana.predict(api_name="/relabel_export")
        assert sorted(Path(f).name for f in files) == ["corrections.csv", "corrections.parquet", "ferplus_votes.csv"]
    finally:
        demo.close()


def test_password_identity_without_a_signed_in_user_refuses_answers_and_exports(table, tmp_path: Path) -> None:
    store = open_store(tmp_path / "app.db")
    demo, url = _launch_tab(table, store, "password")  # launched without auth: no one is signed in
    try:
        client = _client(url)
        with pytest.raises(Exception, match="sign in first"):
            client.predict("ana", *SETTINGS, api_name="/relabel_start")
        with pytest.raises(Exception, match="sign in first"):
            client.predict(api_name="/relabel_export")
        assert store.decisions(table.name).empty
    finally:
        demo.close()


def _mock_hugging_face_login(monkeypatch: pytest.MonkeyPatch, username: str) -> None:
    """Gradio's local stand-in for Hugging Face OAuth, with this profile instead of a call to the Hub."""
    pytest.importorskip("itsdangerous", reason="gr.LoginButton needs gradio[oauth] (itsdangerous)")
    import gradio.oauth

    info = {"access_token": "test", "token_type": "bearer", "expires_in": 3600, "id_token": "test",
            "scope": "openid profile", "expires_at": int(time.time()) + 3600,
            "userinfo": {"sub": "1", "name": username.title(), "preferred_username": username,
                         "profile": f"https://huggingface.co/{username}", "picture": ""}}
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: info)


def _hugging_face_session_cookie(url: str) -> str:
    """Sign in through the app's ``/login/huggingface`` route; returns the session cookie it sets."""
    import httpx

    login = httpx.get(f"{url}/login/huggingface", follow_redirects=False)
    callback = login.headers["location"]
    answer = httpx.get(callback if callback.startswith("http") else url + callback, follow_redirects=False)
    return answer.headers["set-cookie"].split(";")[0]


@pytest.mark.filterwarnings("ignore:Gradio does not support OAuth features outside of a Space")
def test_hugging_face_sign_in_is_who_answers_and_exports_need_it(table, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _mock_hugging_face_login(monkeypatch, "ana-hf")
    store = open_store(tmp_path / "app.db")
    demo, url = _launch_tab(table, store, "huggingface")
    try:
        anonymous = _client(url)
        with pytest.raises(Exception, match="sign in with Hugging Face first"):
            anonymous.predict("ana", *SETTINGS, api_name="/relabel_start")
        with pytest.raises(Exception, match="sign in with Hugging Face first"):
            anonymous.predict(api_name="/relabel_export")

        signed_in = _client(url, headers={"Cookie": _hugging_face_session_cookie(url)})
        _, _, progress = signed_in.predict("", *SETTINGS, api_name="/relabel_start")
        assert "hf:ana-hf: **0** answers today" in progress
        signed_in.predict("", *SETTINGS, api_name="/relabel_unsure")
        assert _answers(store, table.name)["annotator"].tolist() == ["hf:ana-hf"]
        files = {Path(f).name: f for f in signed_in.predict(api_name="/relabel_export")}
        exported = pd.read_csv(files["corrections.csv"])
        # An unsure answer keeps the given label: not a correction.
        assert exported[["changed", "judged_unsure"]].values.tolist() == [[False, True]]
        assert (exported["resolved_label"] == exported["original_label"]).all()
    finally:
        demo.close()
