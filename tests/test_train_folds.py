"""``--folds K``: K tiny models on the 350 real sample faces, out-of-fold probabilities, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fer_core.train as train_module
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.folds import assign_folds
from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS
from fer_core.train import get_args_parser, main
from fer_core.weights import load_model

TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005",
        "--max-steps", "3", "--threads", "1"]


def _args(out: Path, *extra: str):
    return get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(out), *TINY, *extra])


def _run(out: Path, *extra: str) -> int:
    return main(_args(out, *extra))


@pytest.fixture(scope="module")
def sample():
    return load_faces(SAMPLE_PATH, progress=False)


class TestAssignFolds:
    def test_stratified_seeded_and_complete(self, sample) -> None:
        folds = assign_folds(sample.labels, 5, seed=0)
        assert folds.shape == (len(sample),) and set(folds) == set(range(5))
        np.testing.assert_array_equal(folds, assign_folds(sample.labels, 5, seed=0))
        assert not np.array_equal(folds, assign_folds(sample.labels, 5, seed=1))
        # 50 faces per class in the sample: 10 of each class in every fold.
        counts = pd.crosstab(folds, sample.labels).to_numpy()
        assert counts.min() == counts.max() == 10

    @pytest.mark.parametrize("k", [1, 0, -3])
    def test_refuses_fewer_than_two_folds(self, k: int) -> None:
        with pytest.raises(ValueError, match="at least 2 folds"):
            assign_folds(np.zeros(10, dtype=int), k, seed=0)


class TestFoldRun:
    @pytest.mark.slow
    def test_every_face_gets_one_out_of_fold_row(self, tmp_path: Path, sample) -> None:
        out = tmp_path / "folds"
        assert _run(out, "--folds", "3", "--epochs", "2") == 0
        oof = pd.read_parquet(out / "oof_probabilities.parquet")
        assert list(oof.columns) == ["sample_id", *EMOTIONS, "emotion", "fold", "content_hash"]
        # Every training face exactly once, in the data's order, with its given label and its pixels' hash.
        assert oof["sample_id"].tolist() == sample.frame["sample_id"].astype(str).tolist()
        assert oof["content_hash"].tolist() == [pixels_sha256(face) for face in sample.images]
        np.testing.assert_array_equal(oof["emotion"], sample.labels)
        np.testing.assert_array_equal(oof["fold"], assign_folds(sample.labels, 3, seed=0))
        probs = oof[list(EMOTIONS)].to_numpy()
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        # Each fold's model never saw the faces it predicts, and saw all the others.
        for fold in range(3):
            trained_on = set((out / f"fold_{fold}" / "train_ids.txt").read_text().split())
            held_out = set(oof.loc[oof["fold"] == fold, "sample_id"])
            assert trained_on.isdisjoint(held_out)
            assert trained_on | held_out == set(oof["sample_id"])
            _, card = load_model(out / f"fold_{fold}" / "model.safetensors")
            assert card["training"]["fold"] == fold and card["training"]["faces_trained_on"] == len(trained_on)
            assert card["training"]["time_budget"] is None  # the default budget is for one run, not per fold
        # The fold models are not all the same model: their predictions differ.
        assert not np.allclose(probs[oof["fold"] == 0].mean(0), probs[oof["fold"] == 1].mean(0))

        summary = json.loads((out / "folds.json").read_text())
        assert summary["folds"] == 3 and summary["seed"] == 0
        assert [f["fold"] for f in summary["per_fold"]] == [0, 1, 2]
        assert all(0 <= f["val_accuracy"] <= 1 for f in summary["per_fold"])
        assert sum(f["held_out_faces"] for f in summary["per_fold"]) == len(sample)
        assert summary["command"].startswith("python -m fer_core.train")
        assert 0 <= summary["oof_accuracy_vs_given_label"] <= 1

    @pytest.mark.slow
    def test_merge_writes_the_merged_classes(self, tmp_path: Path) -> None:
        out = tmp_path / "merged"
        assert _run(out, "--folds", "2", "--epochs", "1", "--merge", "disgust=angry") == 0
        oof = pd.read_parquet(out / "oof_probabilities.parquet")
        names = ["angry", "fear", "happy", "sad", "surprise", "neutral"]
        assert list(oof.columns) == ["sample_id", *names, "emotion", "fold", "content_hash"]
        np.testing.assert_allclose(oof[names].sum(axis=1), 1.0, atol=1e-9)
        assert set(oof["emotion"]) == set(range(7))  # the FER2013 ids as given, before the merge
        assert json.loads((out / "folds.json").read_text())["classes"] == names

    @pytest.mark.slow
    def test_killed_run_resumes_skipping_finished_folds(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
        straight, killed = tmp_path / "straight", tmp_path / "killed"
        assert _run(straight, "--folds", "3", "--epochs", "2") == 0

        # Stop the run like a kill would, right after fold 1 (the second) checkpointed its first epoch.
        class Killed(Exception):
            pass

        write_logs = train_module.write_logs

        def dying(out: Path, log: list) -> None:
            write_logs(out, log)
            if out.name == "fold_1" and len(log) == 1:
                raise Killed

        monkeypatch.setattr(train_module, "write_logs", dying)
        with pytest.raises(Killed):
            _run(killed, "--folds", "3", "--epochs", "2")
        monkeypatch.setattr(train_module, "write_logs", write_logs)
        assert (killed / "fold_0" / "oof_probabilities.parquet").is_file()
        assert not (killed / "fold_1" / "model.safetensors").is_file() and not (killed / "fold_2").exists()
        assert not (killed / "oof_probabilities.parquet").exists()
        finished = (killed / "fold_0" / "model.safetensors").stat().st_mtime_ns
        capsys.readouterr()

        assert _run(killed, "--folds", "3", "--epochs", "2") == 2  # no --resume: refused
        assert "already holds a run" in capsys.readouterr().err
        assert _run(killed, "--folds", "3", "--epochs", "2", "--resume") == 0
        printed = capsys.readouterr().out
        assert "fold 1/3: finished, skipped" in printed
        assert f"resuming {killed / 'fold_1'} after epoch 1" in printed
        assert "fold 3/3: training on" in printed
        assert (killed / "fold_0" / "model.safetensors").stat().st_mtime_ns == finished
        fold_log = (killed / "fold_1" / "log.jsonl").read_text().splitlines()
        assert [r["epoch"] for r in map(json.loads, fold_log)] == [1, 2]
        a = pd.read_parquet(straight / "oof_probabilities.parquet")
        b = pd.read_parquet(killed / "oof_probabilities.parquet")
        assert a["sample_id"].tolist() == b["sample_id"].tolist()
        np.testing.assert_allclose(a[list(EMOTIONS)], b[list(EMOTIONS)], atol=1e-3)

        # Resuming a finished run skips every fold and writes the same file again.
        assert _run(killed, "--folds", "3", "--epochs", "2", "--resume") == 0
        assert capsys.readouterr().out.count("finished, skipped") == 3

    @pytest.mark.slow
    def test_bad_requests_are_refused_with_a_message(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert _run(tmp_path / "one", "--folds", "1") == 2
        assert "at least 2 folds" in capsys.readouterr().err
        assert _run(tmp_path / "none", "--folds", "3", "--resume") == 2
        assert "no fold run" in capsys.readouterr().err
        assert _run(tmp_path / "two", "--folds", "2", "--epochs", "1") == 0
        assert _run(tmp_path / "two", "--folds", "3", "--epochs", "1", "--resume") == 2
        assert "--folds differ" in capsys.readouterr().err
