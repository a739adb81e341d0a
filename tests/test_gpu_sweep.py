"""``python -m tools.gpu_sweep``: the folds and the recipe's seeds side by side, inside one budget (here on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.weights import load_model


@pytest.mark.slow
def test_sweep_trains_the_folds_and_two_seeds_of_the_recipe(tmp_path: Path) -> None:
    work, back = tmp_path / "work", tmp_path / "back"
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_sweep", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH),
         "--work", str(work), "--results", str(back), "--budget", "500", "--folds", "2",
         "--probe-steps", "2", "--max-steps", "2", "--max-epochs", "2", "--keep-models", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((back / "sweep.json").read_text())
    runs = summary["runs"]
    assert sorted(runs) == ["base_s0", "base_s1"]
    assert all(run["finished"] and run["epochs_done"] == 2 for run in runs.values())
    for name, seed in (("base_s0", "0"), ("base_s1", "1")):
        assert f"--seed {seed}" in runs[name]["command"] and "--time-budget none" in runs[name]["command"]
        _, card = load_model(work / name / "model.safetensors")
        assert card["architecture"] == "fer_vgg" and card["training"]["self_kd"]["weight"] == 0.7  # the recipe
    # The folds' out-of-fold file covers every training face.
    assert summary["folds"]["folds"] == 2
    oof = pd.read_parquet(work / "oof2" / "oof_probabilities.parquet")
    assert len(oof) == 350 and sorted(oof["fold"].unique()) == [0, 1]

    # What comes back: one archive in pieces of at most 15 MB, with both models and their cards.
    pieces = sorted(back.glob("results.tar.*"))
    assert len(pieces) > 1 and all(piece.stat().st_size <= 15_000_000 for piece in pieces)
    (tmp_path / "results.tar").write_bytes(b"".join(piece.read_bytes() for piece in pieces))
    with tarfile.open(tmp_path / "results.tar") as tar:
        names = tar.getnames()
    assert "sweep/oof_probabilities.parquet" in names
    for name in runs:
        assert f"sweep/models/{name}.safetensors" in names and f"sweep/models/{name}.json" in names
