"""The app exposed to the internet: paths, request sizes, queue places, sessions, temp files, start-up.

Most tests speak to a launched app over raw HTTP, as an attacker would (:class:`benchmarks.attack.RawClient`).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.attack import RawClient, _relabel_inputs, photo_jpeg, post_raw
from conftest import REPO, free_port, serving
from fer_core.config import EXAMPLES_DIR, parse_auth
from ui.limits import (
    HEAVY,
    HEAVY_WAITING,
    MAX_BODY_BYTES,
    NOT_UPLOADED,
    BodySizeLimit,
    SessionJanitor,
    TempFiles,
    UploadQuota,
    UploadRefused,
    trusted_upload,
)

SECRET = "fer-secret-line: do not show\n"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    import app

    demo = app.build_demo(app.load_data(None))
    with serving(demo) as url:
        yield demo, RawClient(url)


@pytest.fixture(scope="module")
def raw(launched) -> RawClient:
    return launched[1]


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory) -> dict[str, str]:
    """Files on the server that no visitor uploaded: a text file, an image, a folder, a missing path."""
    folder = tmp_path_factory.mktemp("server_files")
    (folder / "secret.txt").write_text(SECRET)
    (folder / "photo.jpg").write_bytes(photo_jpeg())
    return {"text": str(folder / "secret.txt"), "image": str(folder / "photo.jpg"), "folder": str(folder),
            "missing": str(folder / "missing.png"), "system": "/etc/passwd"}


# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("event", ["predict", "annotate_frame", "photo"])
def test_paths_that_were_not_uploaded_are_refused_alike(raw: RawClient, secret_files: dict[str, str],
                                                        event: str) -> None:
    answers = set()
    for path in secret_files.values():  # the same answer whether the path exists or not
        if event == "photo":
            succeeded, answer = raw.event("photo", [{"path": path}, 20, 0.4, False, False, None])
        else:
            succeeded, answer = raw.call(event, [{"path": path}, False, None] if event == "predict" else [{"path": path}])
        assert "not uploaded" in answer, answer
        assert "fer-secret" not in answer and "root:" not in answer and path not in answer
        if event != "photo":
            assert not succeeded
        answers.add(answer)
    assert len(answers) == 1, "the answer must not tell one path from another"


def test_uploads_and_the_example_photos_are_accepted(raw: RawClient) -> None:
    uploaded = raw.upload(photo_jpeg(), "photo.jpg")
    ok, answer = raw.call("predict", [uploaded, False, None])
    assert ok and '"label"' in answer
    ok, answer = raw.call("predict", [{"path": str(EXAMPLES_DIR / "astronaut.jpg")}, False, None])
    assert ok and '"label"' in answer


def test_a_link_inside_the_upload_folder_is_followed_before_the_check(tmp_path: Path) -> None:
    root, outside = tmp_path / "uploads", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (root / "inside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(outside / "secret.txt")
    assert trusted_upload(root / "inside.png", roots=[root]) == str((root / "inside.png").resolve())
    for path in (root / "link.png", root / ".." / "outside" / "secret.txt", outside / "secret.txt"):
        with pytest.raises(UploadRefused, match="not uploaded") as info:
            trusted_upload(path, roots=[root])
        assert str(info.value) == NOT_UPLOADED


# ------------------------------------------------------------------------------ request size


def test_a_body_over_the_limit_is_refused_before_it_is_read(raw: RawClient) -> None:
    status, seconds = post_raw(raw.url, "/gradio_api/call/predict", 200_000_000, b"A" * 1_000_000, 200)
    assert status == 413 or str(status).startswith("closed"), status
    assert seconds < 10


def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    received = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(20)]
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    limited = BodySizeLimit(app, max_bytes=5000)
    asyncio.run(limited({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 413
    assert sum(received) <= 5000 and len(chunks) >= 14, "reading stopped at the limit"
    assert MAX_BODY_BYTES > 25_000_000 * 4 // 3, "a 25 MB upload as a data URL still fits"


# ------------------------------------------------------------------------------ shared budget and queue places


def test_every_heavy_event_is_in_one_group_of_two(launched) -> None:
    demo, _ = launched
    heavy = {fn.api_name for fn in demo.fns.values() if fn.concurrency_id == HEAVY}
    assert {"photo", "predict", "annotate_frame", "on_pick"} <= heavy
    limits = {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == HEAVY}
    assert limits <= {2, "default"} and demo._queue.default_concurrency_limit in (2, None)
    webcam = [fn for fn in demo.fns.values() if fn.concurrency_id == "webcam"]
    assert webcam and webcam[0].concurrency_limit == 4


@pytest.mark.slow
def test_a_burst_of_predict_calls_leaves_relabel_its_places(tmp_path: Path) -> None:
    # The app runs in a process of its own: 66 client threads in the server's process would
    # compete with it for the interpreter lock and measure the test, not the app.
    from benchmarks.attack import App, burst_case

    app = App(tmp_path)
    try:
        raw = RawClient(app.url)
        warm, answer = raw.event("relabel_start", raw.page_inputs("relabel_start", _relabel_inputs(raw, "warm")))
        assert warm, answer
        outcome = burst_case(app, raw, burst=HEAVY_WAITING + 18)
    finally:
        app.close()
    assert outcome.safe, outcome.answer  # the Relabel start answered within a second
    answered, busy = (int(n) for n in re.findall(r"(\d+) predict answered, (\d+) told busy", outcome.answer)[0])
    assert busy > 0 and answered >= HEAVY_WAITING, outcome.answer


# ------------------------------------------------------------------------------ per visitor


def _photo_states(demo, session: str) -> list:
    from ui.predict_tab import PhotoAnalysis

    state = demo.state_holder.session_data[session].state_data
    return [v for v in state.values() if isinstance(v, PhotoAnalysis)]


def test_a_photo_session_keeps_predictions_not_the_photo(launched) -> None:
    demo, raw = launched
    photo = raw.upload(photo_jpeg(), "photo.jpg")
    session = "photo-session-1"
    ok, _ = raw.event("photo", [photo, 20, 0.4, False, True, None], session=session)
    assert ok
    (kept,) = _photo_states(demo, session)
    assert kept.display is None and len(kept.predictions) == 1
    size = sum(p.face.nbytes for p in kept.predictions) + sum(s.nbytes for s in kept.saliency)
    assert size < 50_000
    ok, answer = raw.event("on_pick", [0, photo, None], session=session)
    assert ok and '"path"' in answer, "the picture is drawn again from the upload"


def test_a_failed_photo_is_said_once_in_the_message(raw: RawClient) -> None:
    text = raw.upload(b"not an image at all\n" * 20, "notes.jpg")
    ok, answer = raw.event("photo", [text, 20, 0.4, False, False, None])
    assert ok, "no red Error badge on every panel"
    assert "Cannot read this image" in answer and "not an image at all" not in answer


def test_sessions_without_a_page_are_forgotten_and_pages_kept(launched) -> None:
    demo, raw = launched
    from gradio_client import Client

    janitor: SessionJanitor = demo.session_janitor
    holder = demo.state_holder
    page = Client(raw.url, verbose=False)  # holds a heartbeat, as an open page does
    try:
        page.predict(raw.upload(photo_jpeg(), "a.jpg"), False, api_name="/predict")
        photo = raw.upload(photo_jpeg(), "b.jpg")
        before = set(holder.session_data)
        for _ in range(5):
            assert raw.call("predict", [photo, False, None])[0]
        api_sessions = set(holder.session_data) - before
        assert len(api_sessions) >= 5, "each /call/ request opened a session"
        later = datetime.datetime.now() + datetime.timedelta(seconds=janitor.api_idle_s + 1)
        janitor.sweep(holder, now=later)
        assert not api_sessions & set(holder.session_data)
        assert page.session_hash in holder.session_data, "a session with a heartbeat stays"
    finally:
        page.close()


def test_an_api_call_does_not_copy_every_setting_and_deep_links_are_closed(launched) -> None:
    import urllib.error
    import urllib.request

    demo, raw = launched
    photo = raw.upload(photo_jpeg(), "c.jpg")
    before = set(demo.state_holder.session_data)
    assert raw.call("predict", [photo, False, None])[0]
    (session,) = set(demo.state_holder.session_data) - before
    copied = demo.state_holder.session_data[session].config_values
    assert 0 < len(copied) <= 6 < len(demo.blocks), "only the event's own inputs and outputs"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{raw.url}/gradio_api/deep_link?session_hash={session}", timeout=30)
    assert info.value.code == 404


# ------------------------------------------------------------------------------ disk


def test_downloads_are_reused_and_swept(tmp_path: Path) -> None:
    files = TempFiles("test", ttl_s=60, root=tmp_path)
    key = files.key("same content")
    with files.claim(key) as (first, existed):
        (first / "a.csv").write_text("x")
    with files.claim(key) as (again, existed_again):
        pass
    assert again == first and not existed and existed_again
    with files.claim(files.key("other")):
        pass
    assert files.sweep(now=time.time() + 61) == 2 and not any(files.root.iterdir())


def test_downloads_beyond_their_size_go_oldest_first(tmp_path: Path) -> None:
    files = TempFiles("test", ttl_s=600, max_bytes=2500, root=tmp_path)
    for i in range(4):
        with files.claim(files.key(str(i))) as (folder, _):
            (folder / "f.bin").write_bytes(b"x" * 1000)
            os.utime(folder, (time.time() - 100 + i, time.time() - 100 + i))  # written one after the other
    files.sweep()
    kept = {f.name for f in files.root.iterdir()}
    assert kept == {files.key("2"), files.key("3")} and files.size_bytes() <= 2500


def test_two_writers_of_one_download_write_it_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = TempFiles("test", ttl_s=60, root=tmp_path)
    writes = []

    def export(_: int) -> bool:
        with files.claim(files.key("one selection")) as (folder, existed):
            if not existed:
                time.sleep(0.2)  # a slow write, as a large selection is
                (folder / "selection.csv").write_text("rows")
                writes.append(folder)
            return (folder / "selection.csv").read_text() == "rows"

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(export, range(4)))
    assert len(writes) == 1


def test_photo_downloads_do_not_grow_with_calls(launched) -> None:
    from ui.predict_tab import DOWNLOADS

    _, raw = launched
    photo = raw.upload(photo_jpeg(), "photo.jpg")
    raw.event("photo", [photo, 20, 0.4, False, False, None])
    size = DOWNLOADS.size_bytes()
    folders = len(list(DOWNLOADS.root.iterdir()))
    for _ in range(5):
        assert raw.event("photo", [photo, 20, 0.4, False, False, None])[0]
    assert DOWNLOADS.size_bytes() == size and len(list(DOWNLOADS.root.iterdir())) == folders


def test_repeated_exports_reuse_their_files(launched) -> None:
    from ui.browse_tab import EXPORTS as BROWSE_EXPORTS
    from ui.relabel_tab import EXPORTS as RELABEL_EXPORTS

    _, raw = launched
    for api, exports in (("export_selection", BROWSE_EXPORTS), ("relabel_export", RELABEL_EXPORTS)):
        assert raw.call(api, [])[0]
        size, folders = exports.size_bytes(), sorted(exports.root.iterdir())
        assert size > 0 and folders  # (other tests of this process may have left exports of their own)
        for _ in range(3):
            assert raw.call(api, [])[0]
        assert exports.size_bytes() == size and sorted(exports.root.iterdir()) == folders, api


def test_uploads_stop_at_the_quota(tmp_path: Path) -> None:
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    (tmp_path / "a").write_bytes(b"x" * 600)
    quota = UploadQuota(app, quota_bytes=1000, folder=tmp_path, every_s=0)
    upload = {"type": "http", "path": "/gradio_api/upload", "headers": []}
    asyncio.run(quota(upload, receive, send))
    (tmp_path / "b").write_bytes(b"x" * 600)
    asyncio.run(quota(upload, receive, send))
    asyncio.run(quota({"type": "http", "path": "/gradio_api/queue/join", "headers": []}, receive, send))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 507, 200]


@pytest.mark.slow
def test_uploads_and_downloads_go_when_the_app_is_stopped(tmp_path: Path) -> None:
    from benchmarks.attack import App

    app = App(tmp_path)
    try:
        raw = RawClient(app.url)
        photo = raw.upload(photo_jpeg(), "visitor.jpg")
        assert raw.event("photo", [photo, 20, 0.4, False, False, None])[0]
        assert raw.call("export_selection", [])[0] and raw.call("relabel_export", [])[0]
        before = {f.name for f in app.tmp.rglob("*") if f.is_file()}
        assert {"visitor.jpg", "faces.csv", "corrections.csv"} <= before
    finally:
        app.close()  # SIGTERM, as `docker stop` sends
    after = {f.name for f in app.tmp.rglob("*") if f.is_file()}
    assert not {"visitor.jpg", "faces.csv", "faces.json", "corrections.csv", "fer2013_sample_selection.csv"} & after
    assert "Keyboard interruption" in (tmp_path / "app.log").read_text(), "the app stopped as on Ctrl-C"


def test_gradio_deletes_its_copies(launched) -> None:
    import app

    demo, _ = launched
    assert demo.delete_cache == app.DELETE_CACHE


# ------------------------------------------------------------------------------ start-up and sign-in


def test_a_port_in_use_is_one_clear_line_at_once(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1"})
        seconds = time.monotonic() - started
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0], result.stderr
    assert "Traceback" not in result.stderr and seconds < 20


def test_sign_in_pairs_are_checked() -> None:
    assert parse_auth("ann:secret, bob:p:w") == [("ann", "secret"), ("bob", "p:w")]
    assert parse_auth("") == [] and parse_auth(None) == []
    for bad in ("ann", "ann:", ":pw"):
        with pytest.raises(ValueError, match="USER:PASS"):
            parse_auth(bad)


def test_a_bad_auth_value_stops_the_app_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "app.py"), "--auth", "nopassword", "--port",
                             str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "USER:PASS" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_with_sign_in_the_app_needs_it(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**os.environ, "FER_AUTH": "ann:secret", "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "FER_DB_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5)
                status = 200
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
                continue
            break
        assert status == 401, "the app's config is closed without sign-in"
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}", auth=("ann", "secret"), verbose=False)
        result = client.predict(handle_file(str(EXAMPLES_DIR / "astronaut.jpg")), False, api_name="/predict")
        assert len(result["faces"]) == 1
        client.close()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    steps = [line for line in stderr.splitlines() if ": done in " in line]
    assert len(steps) >= 4, f"start-up says each step: {stderr[-2000:]}"
