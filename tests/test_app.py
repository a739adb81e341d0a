"""The app launches, serves the loaded data, and honours its host and port settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import app
from conftest import REPO, free_port, serving
from second_model import COPY_NAME, TUNED_NAME, copy_bundled, copy_model


def _wait_for_config(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"app exited with {process.returncode}: {output}")
        try:
            with urllib.request.urlopen(f"{url}/config", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} within {timeout} s")


class TestBuildDemo:
    def test_launched_app_shows_the_bundled_sample(self) -> None:
        table = app.load_data(None)
        assert len(table) == 350
        demo = app.build_demo(table)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
        try:
            config = _wait_for_config(f"http://127.0.0.1:{port}")
            text = json.dumps(config)
            assert "Faces per emotion and split" in text
            assert "fer2013_sample" in text
        finally:
            demo.close()


@pytest.mark.slow
class TestCommandLine:
    def _start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "app.py", *args], cwd=REPO, env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def test_port_from_the_environment(self) -> None:
        port = free_port()
        process = self._start([], {"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"})
        try:
            config = _wait_for_config(f"http://127.0.0.1:{port}", process)
            assert config["version"].startswith("6.")
        finally:
            process.terminate()
            process.wait(timeout=30)

    def test_port_flag_wins_over_the_environment(self) -> None:
        port = free_port()
        process = self._start(["--port", str(port)], {"GRADIO_SERVER_PORT": "1"})
        try:
            _wait_for_config(f"http://127.0.0.1:{port}", process)
        finally:
            process.terminate()
            process.wait(timeout=30)

    def test_bad_data_path_is_a_clean_error(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, "app.py", "--data", str(tmp_path / "missing")], cwd=REPO,
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2
        assert "error: data set not found" in result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_port_in_the_environment_is_a_clean_error(self) -> None:
        result = subprocess.run(
            [sys.executable, "app.py"], cwd=REPO, env={**os.environ, "GRADIO_SERVER_PORT": "http"},
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2
        assert "GRADIO_SERVER_PORT must be a port number" in result.stderr


class TestWeightsSetting:
    """``FER_WEIGHTS`` (read once by Settings, or ``--weights``) chooses the model every tab serves."""

    def _copy_of_bundled_weights(self, folder: Path) -> Path:
        import shutil

        from fer_core.weights import DEFAULT_WEIGHTS, card_path

        weights = folder / "my_model.safetensors"
        shutil.copyfile(DEFAULT_WEIGHTS, weights)
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
        card["code_version"] = "copy-under-test"  # so that the model name tells the copy from the bundled one
        card_path(weights).write_text(json.dumps(card))
        for export in card.get("onnx", {}).values():  # the ONNX files the card names go beside it
            shutil.copyfile(DEFAULT_WEIGHTS.parent / export["file"], folder / export["file"])
        return weights

    def test_app_serves_the_weights_named_in_fer_weights(self, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        import signal

        from fer_core.config import EXAMPLES_DIR

        weights = self._copy_of_bundled_weights(tmp_path)
        monkeypatch.setenv("FER_WEIGHTS", str(weights))
        monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(free_port()))
        launched = {}

        def fake_launch(demo, **kwargs) -> None:  # build everything, serve nothing
            launched["demo"] = demo
            demo.block_thread = lambda: None

        monkeypatch.setattr(app, "launch", fake_launch)
        monkeypatch.setattr(signal, "signal", lambda *args: None)
        assert app.main([]) == 0
        predict = next(f for f in launched["demo"].fns.values() if f.api_name == "predict")
        answer = predict.fn({"path": str(EXAMPLES_DIR / "fer2013_face.png")}, True)
        # The copy is the default model, by its name (the file's stem); the bundled one stays choosable.
        assert answer["model"] == "my_model" and answer["model_version"].endswith("@copy-under-test")
        bundled = predict.fn({"path": str(EXAMPLES_DIR / "fer2013_face.png")}, True, "fer_model")
        assert bundled["model"] == "fer_model" and not bundled["model_version"].endswith("@copy-under-test")

    def test_missing_weights_file_is_one_error_line(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.setenv("FER_WEIGHTS", str(tmp_path / "missing.safetensors"))
        monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(free_port()))
        monkeypatch.setattr(app, "load_data", lambda *args, **kwargs: pytest.fail("the data set was loaded"))
        assert app.main([]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        missing = str(tmp_path / "missing.safetensors")
        assert errors == [f"error: --weights (or FER_WEIGHTS): weights file not found: {missing!r}"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tuned_weights: Path):
    """The app launched over a catalog of the bundled model, a copy under another name and a fine-tuned one."""
    from annotate import open_store
    from benchmarks.app_bench import api_client
    from fer_core.catalog import ModelCatalog

    folder = tmp_path_factory.mktemp("models")
    copy_bundled(folder)
    copy_model(tuned_weights, folder)
    catalog = ModelCatalog(folder=folder)
    with pytest.MonkeyPatch.context() as patch:  # the module's own cache, as conftest gives each test
        patch.setenv("FER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        store = open_store(tmp_path_factory.mktemp("db") / "relabel.db")
        demo = app.build_demo(app.load_data(None, catalog=catalog), store, catalog=catalog)
        with serving(demo) as url:
            yield api_client(url), catalog, tmp_path_factory.mktemp("added")


@pytest.mark.slow
class TestModelsByName:
    """The launched app over a catalog of real models: the ``predict`` API answers with the model asked for by name."""

    @staticmethod
    def _predict(client, *args):
        from gradio_client import handle_file

        from fer_core.config import EXAMPLES_DIR

        return client.predict(handle_file(str(EXAMPLES_DIR / "fer2013_face.png")), True, *args, api_name="/predict")

    def test_each_model_answers_by_its_name(self, served) -> None:
        client, catalog, _ = served
        default, copy, tuned = (self._predict(client, *args) for args in ((), (COPY_NAME,), (TUNED_NAME,)))
        assert (default["model"], copy["model"], tuned["model"]) == ("fer_model", COPY_NAME, TUNED_NAME)
        assert copy["faces"] == default["faces"]  # the same weights and card under another name
        difference = max(abs(tuned["faces"][0]["probabilities"][k] - copy["faces"][0]["probabilities"][k])
                         for k in copy["faces"][0]["probabilities"])
        assert difference > 0.01
        assert tuned["model_version"] == catalog.predictor(TUNED_NAME).model_name

    def test_an_unknown_name_is_a_clear_error_listing_the_names(self, served) -> None:
        from gradio_client.exceptions import AppError

        client, _, _ = served
        with pytest.raises(AppError, match="no model named 'nonsense'; choose one of fer_copy, fer_model") as info:
            self._predict(client, "nonsense")
        assert "Traceback" not in str(info.value)
        with pytest.raises(AppError, match="no model named '&lt;b&gt;'"):  # escaped: nothing typed is rendered
            self._predict(client, "<b>")
        assert self._predict(client, "")["model"] == "fer_model"  # empty: the default

    def test_a_model_added_while_running_is_served_and_can_become_the_default(self, served,
                                                                           tuned_weights: Path) -> None:
        client, catalog, folder = served
        catalog.add(copy_model(tuned_weights, folder), name="added now")
        try:
            assert self._predict(client, "added now")["model"] == "added now"
            catalog.set_default("added now")
            assert self._predict(client)["model"] == "added now"
        finally:
            catalog.set_default("fer_model")
            catalog.remove("added now")
