"""Serving without PyTorch: the app, its model, saliency, browse and relabel run where ``import torch``
fails, as in an install of requirements.txt alone; what needs PyTorch says how to add it.

Each check runs in a child process whose ``PYTHONPATH`` starts with a folder holding ``torch.py`` and
``torchvision.py`` that raise ImportError, so ``import torch`` fails there as if it were not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, needs_shared, real_face_paths
from fer_core.weights import DEFAULT_WEIGHTS, card_path

EXAMPLE = REPO / "fer_core" / "assets" / "examples" / "group_of_three.jpg"
BLOCKED = 'raise ImportError("No module named {name!r} (blocked by tests/test_serving_without_torch.py)")\n'


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child process in which ``import torch`` (and torchvision) fails."""
    blocker = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "torchvision"):
        (blocker / f"{name}.py").write_text(BLOCKED.format(name=name))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
            "GRADIO_ANALYTICS_ENABLED": "False", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}


def run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_blocks(without_torch: dict[str, str]) -> None:
    done = run(["-c", "import torch"], without_torch)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: No module named 'torch' (blocked by tests/test_serving_without_torch.py)")


SERVE = """
import json, sys
import numpy as np
import app
from fer_core.explain import grad_cam
from fer_core.predict import get_predictor
from ui.predict_tab import analyse_photo, predict_json
from ui.relabel_tab import RelabelDesk, Settings

table = app.load_data(None)                       # browse: quality, model and duplicate columns
store = app.open_annotations(sys.argv[2])
demo = app.build_demo(table, store)               # the Blocks: Predict, Browse, Relabel
predictor = get_predictor()
photo = predict_json(sys.argv[1])                 # what the predict API endpoint answers
analysis = analyse_photo(sys.argv[1], explain=True)
face = predictor.predict_image(sys.argv[3], whole_image=True)[0]
maps = grad_cam(predictor.model, face.face[None])
desk = RelabelDesk(store, table, model_version=predictor.model_name)
queued = desk.next_face("ann", Settings())
print(json.dumps({
    "blocks": type(demo).__name__, "tabs": demo.config["components"].__len__(),
    "runtime": predictor.runtime, "onnx_file": str(predictor.onnx_file),
    "photo": photo["faces"], "saliency": [m.shape for m in analysis.saliency],
    "face": face.probabilities, "face_map_peak": float(maps.max()),
    "browse_columns": sorted(table.frame.columns), "queued": queued is not None,
    "torch": "torch" in sys.modules and sys.modules["torch"] is not None,
}))
"""


@pytest.mark.slow
@needs_shared
def test_the_app_serves_without_torch(without_torch: dict[str, str], tmp_path: Path) -> None:
    from fer_core.predict import Predictor

    real_face = real_face_paths("val", 1)[3][0]  # a happy face of FER2013 val
    env = {**without_torch, "FER_CACHE_DIR": str(tmp_path / "cache")}
    done = run(["-c", SERVE, str(EXAMPLE), f"sqlite:///{tmp_path / 'relabel.db'}", str(real_face)], env)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocks"] == "Blocks" and result["tabs"] > 10
    assert result["runtime"] == "onnx-int8" and Path(result["onnx_file"]).parent == DEFAULT_WEIGHTS.parent
    assert not result["torch"]
    assert [face["label"] for face in result["photo"]] == ["surprise", "sad", "happy"]
    assert result["saliency"] == [[48, 48]] * 3 and result["face_map_peak"] == pytest.approx(1.0)
    assert {"quality_score", "model_label", "model_confidence"} <= set(result["browse_columns"])
    assert result["queued"]
    # The same answers as this process gives with PyTorch installed.
    here = Predictor().predict_image(real_face, whole_image=True)[0]
    assert result["face"] == pytest.approx(here.probabilities, abs=1e-6)
    assert here.label == "happy"


def test_training_says_how_to_add_torch(without_torch: dict[str, str]) -> None:
    done = run(["-m", "fer_core.train", "--help"], without_torch, timeout=120)
    assert done.returncode != 0
    assert "pip install -r requirements-train.txt" in done.stderr and "Traceback" not in done.stderr


def test_weights_without_an_onnx_file_say_how_to_add_torch(without_torch: dict[str, str], tmp_path: Path) -> None:
    """A user's weights whose card names no ONNX file are exported on load, which needs PyTorch:
    the app, the Predictor and the export tool stop with one line saying how to add it."""
    weights = tmp_path / "mine.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, weights)
    card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
    card_path(weights).write_text(json.dumps({k: v for k, v in card.items() if k != "onnx"}))
    message = re.compile(r"^error: .*needs PyTorch, which the serving install \(requirements.txt\) leaves out; "
                         r"add it with `pip install -r requirements-train.txt`", re.MULTILINE)
    for command in (["app.py", "--weights", str(weights), "--port", "0"], ["-m", "tools.export_onnx", str(weights)]):
        done = run(command, without_torch, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert message.search(done.stderr) and "Traceback" not in done.stderr, done.stderr[-3000:]
    done = run(["-c", f"from fer_core.predict import Predictor; Predictor({str(weights)!r})"], without_torch)
    assert "fer_core._torch.TorchMissing" in done.stderr and "requirements-train.txt" in done.stderr


class TestRequirements:
    """requirements.txt serves; requirements-train.txt adds PyTorch; the tests install everything."""

    @staticmethod
    def lines(name: str) -> list[str]:
        return [line.strip() for line in (REPO / name).read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]

    def test_serving_has_no_torch(self) -> None:
        names = {re.split(r"[=<>\[ ]", line)[0].lower() for line in self.lines("requirements.txt")}
        assert not names & {"torch", "torchvision", "onnx"}
        assert "onnxruntime" in names and not any(line.startswith("-r") for line in self.lines("requirements.txt"))

    def test_training_adds_torch_and_the_tests_take_it(self) -> None:
        train = self.lines("requirements-train.txt")
        assert train[0] == "-r requirements.txt"
        assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(train)
        assert self.lines("requirements-test.txt")[0] == "-r requirements-train.txt"

    def test_pyproject_extras_copy_the_files(self) -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())
        assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
        extras = project["project"]["optional-dependencies"]
        assert extras["train"] == self.lines("requirements-train.txt")[1:]
        assert extras["test"] == ["fer-tool[train]", *self.lines("requirements-test.txt")[1:]]

    def test_the_image_serves_by_default_and_trains_on_request(self) -> None:
        dockerfile = (REPO / "Dockerfile").read_text()
        assert re.search(r"^ARG WITH_TRAINING=0$", dockerfile, re.MULTILINE)
        training = r'if \[ "\$WITH_TRAINING" = "1" \]; then.*-r /tmp/requirements-train.txt'
        assert re.search(training, dockerfile, re.DOTALL)


def test_served_and_exported_logits_agree_on_real_faces(val_faces) -> None:
    """The int8 file the app serves against the float32 export of the same weights (PyTorch here)."""
    from fer_core.predict import Predictor

    faces, labels, _ = val_faces
    served = Predictor(tta=False).logits(faces)
    exact = Predictor(runtime="onnx", tta=False).logits(faces)
    assert np.corrcoef(served.ravel(), exact.ravel())[0, 1] > 0.99
    assert (served.argmax(1) == exact.argmax(1)).mean() >= 0.9
