"""``python -m tools.gpu_sweep --plan chain``: teachers, then students of both, inside one budget (here on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.weights import load_model


@pytest.mark.slow
def test_chain_trains_teachers_then_their_students(tmp_path: Path) -> None:
    work, back = tmp_path / "work", tmp_path / "back"
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_sweep", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH),
         "--work", str(work), "--results", str(back), "--budget", "400", "--plan", "chain",
         "--max-steps", "2", "--max-epochs", "2", "--keep-models", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((back / "sweep.json").read_text())
    assert summary["plan"] == "chain"
    runs = summary["runs"]
    assert sorted(runs) == ["student_s0", "student_s1", "teacher_s0", "teacher_s1"]
    assert all(run["finished"] and run["epochs_done"] == 2 for run in runs.values())
    for name, seed in (("teacher_s0", "0"), ("teacher_s1", "1")):
        assert f"--seed {seed}" in runs[name]["command"] and "--teacher" not in runs[name]["command"]
        assert "--time-budget" in runs[name]["command"]
    # Each student learnt from both teachers' trained weights, under its own seed.
    for name, seed in (("student_s0", "0"), ("student_s1", "1")):
        command = runs[name]["command"]
        assert f"--teacher {work / 'teacher_s0' / 'model.safetensors'}" in command
        assert f"--teacher {work / 'teacher_s1' / 'model.safetensors'}" in command
        assert f"--seed {seed} --kd-weight 0.7 --kd-temperature 2" in command
        _, card = load_model(work / name / "model.safetensors")
        assert len(card["training"]["teachers"]) == 2

    # What comes back: one archive in pieces of at most 15 MB, with the four models and their cards.
    pieces = sorted(back.glob("results.tar.*"))
    assert len(pieces) > 1 and all(piece.stat().st_size <= 15_000_000 for piece in pieces)
    (tmp_path / "results.tar").write_bytes(b"".join(piece.read_bytes() for piece in pieces))
    with tarfile.open(tmp_path / "results.tar") as tar:
        names = tar.getnames()
    for name in runs:
        assert f"sweep/models/{name}.safetensors" in names and f"sweep/models/{name}.json" in names
