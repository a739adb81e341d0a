"""Real second models for the catalog's tests: the bundled model copied under another name, and a
model fine-tuned from it for one step on the bundled sample (its own weights, temperature and ONNX file).

The fine-tuned one is made once per test session (about 20 s: ``python -m fer_core.train`` then
``python -m tools.export_onnx``, as a person would make one) and copied into each test's folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.weights import DEFAULT_WEIGHTS, card_path

#: The names the two models go by (their cards' ``name``).
COPY_NAME = "fer_copy"
TUNED_NAME = "fer_tuned (1 step)"


def copy_bundled(folder: Path, stem: str = "fer_copy", name: str | None = COPY_NAME) -> Path:
    """The bundled model's three files (weights, card, ONNX) under ``stem`` in ``folder``, its card named ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    shutil.copyfile(DEFAULT_WEIGHTS, weights)
    card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
    for runtime, entry in card.get("onnx", {}).items():
        renamed = f"{stem}{'.int8' if runtime == 'onnx-int8' else ''}.onnx"
        shutil.copyfile(DEFAULT_WEIGHTS.parent / entry["file"], folder / renamed)
        entry["file"] = renamed
    if name is not None:
        card["name"] = name
    card_path(weights).write_text(json.dumps(card, indent=2))
    return weights


def _tune(work: Path) -> Path:
    """``fer_tuned.safetensors`` (with card and ONNX file) in ``work``: the bundled model after one training step."""
    run = work / "run"
    command = [sys.executable, "-m", "fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(run),
               "--epochs", "1", "--max-steps", "1", "--init", str(DEFAULT_WEIGHTS), "--time-budget", "none",
               "--threads", "1", "--no-progress", "--device", "cpu", "--cache-dir", str(work / "cache")]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    weights = work / "fer_tuned.safetensors"
    shutil.copyfile(run / "model.safetensors", weights)
    card = json.loads((run / "model.json").read_text())
    card["name"] = TUNED_NAME
    card_path(weights).write_text(json.dumps(card, indent=2))
    subprocess.run([sys.executable, "-m", "tools.export_onnx", str(weights)], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=600)
    return weights


@pytest.fixture(scope="session")
def tuned_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuned model's weights (card and ONNX file beside them), made once per session; copy, don't change."""
    pytest.importorskip("torch", reason="training the second model needs PyTorch")
    return _tune(tmp_path_factory.mktemp("tuned_model"))


def copy_model(weights: Path, folder: Path) -> Path:
    """``weights`` with its card and the ONNX files the card names, copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / weights.name)
    shutil.copyfile(card_path(weights), card_path(folder / weights.name))
    for entry in json.loads(card_path(weights).read_text()).get("onnx", {}).values():
        shutil.copyfile(weights.parent / entry["file"], folder / entry["file"])
    return folder / weights.name
