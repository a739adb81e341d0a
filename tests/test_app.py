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
from conftest import REPO, free_port


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
        from fer_core.predict import get_predictor

        predictor = get_predictor(str(weights))
        assert predictor.weights == weights
        assert answer["model"] == predictor.model_name and answer["model"].endswith("@copy-under-test")

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
