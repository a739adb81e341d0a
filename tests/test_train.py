"""Training on real faces: the loss falls, a killed run resumes exactly, options behave."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.train import LabelMap, class_weights, curriculum_threshold, get_args_parser, main
from fer_core.weights import load_model

TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005"]


def _run(tmp_path: Path, *extra: str, out: str = "run") -> tuple[int, Path]:
    args = get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(tmp_path / out), *TINY, *extra])
    return main(args), tmp_path / out


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


class TestTraining:
    def test_loss_falls_and_the_model_is_written(self, tmp_path: Path) -> None:
        code, out = _run(tmp_path, "--epochs", "6", "--no-augment", "--ema-decay", "0")
        assert code == 0
        log = _log(out)
        assert len(log) == 6
        assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.05
        model, card = load_model(out / "model.safetensors")
        assert card["architecture"] == "fer_tiny" and card["labels"][0] == "angry"
        assert card["training"]["best_epoch"] == max(range(1, 7), key=lambda e: (log[e - 1]["val_accuracy"], -e))
        assert card["calibration"]["temperature"] > 0
        assert {"plain", "flip_tta"} <= set(card["val_metrics"])
        assert (out / "curve.png").stat().st_size > 1000
        assert (out / "log.csv").read_text().startswith("epoch,train_loss,val_accuracy,val_macro_f1,lr,seconds")

    def test_same_seed_same_result(self, tmp_path: Path) -> None:
        _run(tmp_path, "--epochs", "2", out="a")
        _run(tmp_path, "--epochs", "2", out="b")
        a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-4)

    def test_killed_run_resumes_where_it_stopped(self, tmp_path: Path) -> None:
        command = [sys.executable, "-m", "fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), *TINY, "--epochs", "4"]
        straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr[-2000:]
        # Kill the second run (SIGKILL: no clean-up) once it has checkpointed an epoch.
        process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checkpoint = tmp_path / "killed" / "checkpoint.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (checkpoint.is_file() and json.loads(checkpoint.read_text())["epoch"] >= 1):
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stopped_at = json.loads(checkpoint.read_text())["epoch"]
        assert 1 <= stopped_at < 4, "the run finished before it could be killed"
        resumed = subprocess.run([*command, "--out", str(tmp_path / "killed"), "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resuming {tmp_path / 'killed'} after epoch {stopped_at}" in resumed.stdout
        a, b = _log(tmp_path / "straight"), _log(tmp_path / "killed")
        assert [r["epoch"] for r in b] == [1, 2, 3, 4]
        assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-4)
        assert [r["val_accuracy"] for r in b] == pytest.approx([r["val_accuracy"] for r in a], abs=1e-3)

    def test_refuses_to_overwrite_a_run_and_to_resume_nothing(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert _run(tmp_path, "--epochs", "1", "--resume")[0] == 2
        assert "no checkpoint" in capsys.readouterr().err
        assert _run(tmp_path, "--epochs", "1")[0] == 0
        assert _run(tmp_path, "--epochs", "1")[0] == 2
        assert "already holds a run" in capsys.readouterr().err

    def test_merge_trains_six_classes(self, tmp_path: Path) -> None:
        code, out = _run(tmp_path, "--epochs", "1", "--merge", "disgust=angry")
        assert code == 0
        _, card = load_model(out / "model.safetensors")
        assert card["labels"] == ["angry", "fear", "happy", "sad", "surprise", "neutral"]
        assert card["fer2013_id_to_class"][1] == 0

    def test_min_quality_trains_on_fewer_faces(self, tmp_path: Path) -> None:
        code, out = _run(tmp_path, "--epochs", "1", "--min-quality", "0.5")
        assert code == 0
        assert 100 < _log(out)[0]["train_faces"] < 250  # about half of the 350 sample faces


class TestOptions:
    def test_label_map(self) -> None:
        merged = LabelMap(["disgust=angry"])
        assert merged.names == ["angry", "fear", "happy", "sad", "surprise", "neutral"]
        np.testing.assert_array_equal(merged(np.arange(7)), [0, 0, 1, 2, 3, 4, 5])
        with pytest.raises(ValueError, match="SOURCE=TARGET"):
            LabelMap(["contempt=angry"])

    def test_class_weights_favour_rare_classes_and_average_one(self) -> None:
        labels = np.array([0] * 90 + [1] * 10)
        w = class_weights(labels, 2, "sqrt").numpy()
        assert w[1] > w[0]
        assert (w[labels]).mean() == pytest.approx(1.0)
        with pytest.raises(ValueError, match="choose none, sqrt or balanced"):
            class_weights(labels, 2, "inverse")

    def test_curriculum_stages(self) -> None:
        stages = [0.8, 0.5, 0.0]
        assert [curriculum_threshold(e, 9, stages) for e in range(9)] == [0.8] * 3 + [0.5] * 3 + [0.0] * 3
        assert curriculum_threshold(3, 9, []) == -np.inf


def test_validation_flip_tta_averages_the_logits_of_each_face_and_its_mirror() -> None:
    """``predict_logits`` runs faces and mirrors in one call; each face keeps its own pair, across batches."""
    import torch

    from fer_core.datasets import load_faces
    from fer_core.model import create_model
    from fer_core.train import predict_logits, to_input

    torch.manual_seed(0)
    model = create_model("fer_tiny").eval()
    images = load_faces(SAMPLE_PATH, progress=False).images[:40]
    cpu = torch.device("cpu")
    both = predict_logits(model, images, device=cpu, flip_tta=True, batch_size=16)
    with torch.no_grad():
        x = to_input(torch.from_numpy(images))
        expected = ((model(x) + model(torch.flip(x, dims=[3]))) / 2).numpy()
    np.testing.assert_allclose(both, expected, atol=1e-5, rtol=1e-4)
    plain = predict_logits(model, images, device=cpu, batch_size=16)
    assert not np.allclose(plain, both, atol=1e-4)  # the mirror does change a face's logits
