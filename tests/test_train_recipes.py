"""The recipe of ``fer_core.train`` on the real sample faces: the defaults as shipped, self-distillation,
fine-tuning (``--init``) and folds trained in parallel processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.model import create_model
from fer_core.train import get_args_parser, main
from fer_core.training.optim import distillation_loss, teacher_probabilities
from fer_core.training.utils import to_input
from fer_core.weights import load_model

TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005",
        "--threads", "1", "--time-budget", "none"]


def _args(out: Path, *extra: str, tiny: bool = True):
    return get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(out),
                                         *(TINY if tiny else []), *extra])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sample():
    return load_faces(SAMPLE_PATH, progress=False)


class TestShippedRecipe:
    @pytest.mark.slow
    def test_the_short_command_trains_the_bundled_models_recipe(self, tmp_path: Path) -> None:
        """``python -m fer_core.train DATA --val VAL --out DIR``, cut to two steps of one epoch."""
        out = tmp_path / "recipe"
        assert main(_args(out, "--epochs", "1", "--max-steps", "2", "--no-progress", tiny=False)) == 0
        card = json.loads((out / "model.json").read_text())
        assert card["architecture"] == "fer_vgg" and card["model_kwargs"] == {"dropout": 0.5}
        training = card["training"]
        assert training["self_kd"] == {"weight": 0.7, "temperature": 2.0, "teacher": "weight EMA",
                                       "ramp": "linear from 0 over the run"}
        assert training["time_budget"]["seconds"] == 7200 and training["label_smoothing"] == 0.1
        assert training["augment"]["flip"] == 0.5
        checkpoint = json.loads((out / "checkpoint.json").read_text())
        assert checkpoint["args"]["weight_decay"] == 0.1 and checkpoint["args"]["opt"] == "adamw"
        assert checkpoint["param_groups"][0]["weight_decay"] == 0.1


class TestSelfDistillation:
    def test_teacher_probabilities_average_the_face_and_its_mirror(self, sample) -> None:
        torch.manual_seed(0)
        model = create_model("fer_tiny").eval()
        x = to_input(torch.from_numpy(sample.images[:16]))
        soft = teacher_probabilities(model, x, 2.0, None)
        with torch.no_grad():
            own = (torch.softmax(model(x) / 2, 1) + torch.softmax(model(torch.flip(x, dims=[3])) / 2, 1)) / 2
        torch.testing.assert_close(soft, own, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(soft.sum(1), torch.ones(16))

    def test_distillation_loss_is_zero_only_where_the_student_matches_its_teacher(self) -> None:
        logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        same = torch.softmax(logits / 2, dim=1)
        assert distillation_loss(logits, same, 2.0).item() == pytest.approx(0.0, abs=1e-6)
        other = torch.softmax(logits.flip(1) / 2, dim=1)
        loss = distillation_loss(logits, other, 2.0)
        # Batch-mean KL times T^2.
        expected = (other * (other.log() - torch.log_softmax(logits / 2, dim=1))).sum(1).mean() * 4
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0.1

    @pytest.mark.slow
    def test_self_distillation_from_the_weight_average_trains_and_the_card_says_so(self, tmp_path: Path) -> None:
        out, plain = tmp_path / "self", tmp_path / "plain"
        assert main(_args(out, "--epochs", "2", "--self-kd", "0.8")) == 0
        assert main(_args(plain, "--epochs", "2", "--self-kd", "0")) == 0
        card = json.loads((out / "model.json").read_text())
        assert card["training"]["self_kd"]["weight"] == 0.8
        assert json.loads((plain / "model.json").read_text())["training"]["self_kd"] is None
        # The share starts at 0, so the runs match on the first step and part ways as it rises.
        self_log, plain_log = _log(out), _log(plain)
        assert self_log[1]["train_loss"] != pytest.approx(plain_log[1]["train_loss"], rel=1e-3)
        assert np.isfinite([row["train_loss"] for row in self_log]).all()

    @pytest.mark.parametrize(("extra", "message"), [
        (["--self-kd", "1.5"], "--self-kd must be in (0, 1]"),
        (["--self-kd", "-0.1"], "--self-kd must be in (0, 1]"),
        (["--kd-temperature", "0"], "--kd-temperature must be above 0"),
    ])
    def test_self_distillation_options_that_cannot_work_are_refused(
            self, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
        assert main(_args(tmp_path / "x", "--epochs", "1", *extra)) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained a few steps on the sample: something to start from."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(_args(out, "--epochs", "1", "--max-steps", "3", "--self-kd", "0")) == 0
    return out / "model.safetensors"


class TestFineTuning:
    def test_init_starts_from_the_trained_weights(self, tmp_path: Path, trained: Path) -> None:
        # No step at all (learning rate 0): the fine-tuned copy is the model it started from.
        out = tmp_path / "copy"
        assert main(_args(out, "--epochs", "1", "--max-steps", "2", "--init", str(trained), "--lr", "0",
                          "--ema-decay", "0", "--self-kd", "0", "--dropout", "0")) == 0
        start, _ = load_model(trained)
        copy, card = load_model(out / "model.safetensors")
        for name, value in start.state_dict().items():
            if value.is_floating_point() and "running" not in name:
                torch.testing.assert_close(copy.state_dict()[name], value)
        assert card["training"]["init"]["file"] == "model.safetensors" and len(card["training"]["init"]["sha256"]) == 64
        # The card says how the weights it started from were trained, from theirs.
        started_from = json.loads(trained.with_suffix(".json").read_text())["training"]
        assert card["training"]["init"]["training"] == {
            key: started_from[key] for key in ("command", "epochs", "best_epoch", "trained_on", "selected_on", "init")
            if key in started_from}
        assert card["training"]["init"]["training"]["init"] is None and card["training"]["init"]["training"]["epochs"] == 1

    def test_weights_of_another_kind_a_pickle_or_no_file_are_refused(self, tmp_path: Path, trained: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
        merged = tmp_path / "merged"
        assert main(_args(merged, "--epochs", "1", "--merge", "disgust=angry", "--max-steps", "1")) == 0
        assert main(_args(tmp_path / "x", "--epochs", "1", "--init", str(merged / "model.safetensors"))) == 2
        assert "disgust" in capsys.readouterr().err
        pickle = tmp_path / "model.pt"
        torch.save({"w": torch.zeros(1)}, pickle)
        assert main(_args(tmp_path / "y", "--epochs", "1", "--init", str(pickle))) == 2
        assert "safetensors" in capsys.readouterr().err
        assert main(_args(tmp_path / "z", "--epochs", "1", "--init", str(tmp_path / "none.safetensors"))) == 2
        assert "--init: no file at" in capsys.readouterr().err


class TestParallelFolds:
    @pytest.mark.slow
    def test_folds_trained_one_by_one_combine_into_one_file(self, tmp_path: Path, sample) -> None:
        out = tmp_path / "oof"
        for fold in (1, 0):
            assert main(_args(out, "--folds", "2", "--fold-index", str(fold), "--epochs", "1", "--max-steps", "2")) == 0
            assert (out / f"fold_{fold}" / "oof_probabilities.parquet").is_file()
        assert not (out / "oof_probabilities.parquet").exists()
        assert main(_args(out, "--folds", "2", "--resume", "--epochs", "1", "--max-steps", "2")) == 0
        oof = pd.read_parquet(out / "oof_probabilities.parquet")
        assert oof["sample_id"].tolist() == sample.frame["sample_id"].astype(str).tolist()
        assert sorted(oof["fold"].unique()) == [0, 1]

    def test_a_fold_index_out_of_range_or_alone_is_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert main(_args(tmp_path / "a", "--folds", "3", "--fold-index", "3", "--epochs", "1")) == 2
        assert "between 0 and 2" in capsys.readouterr().err
        assert main(_args(tmp_path / "b", "--fold-index", "0", "--epochs", "1")) == 2
        assert "give --folds K too" in capsys.readouterr().err

    def test_a_finished_fold_is_not_trained_again_without_resume(self, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
        out = tmp_path / "oof"
        assert main(_args(out, "--folds", "2", "--fold-index", "0", "--epochs", "1", "--max-steps", "2")) == 0
        assert main(_args(out, "--folds", "2", "--fold-index", "0", "--epochs", "1", "--max-steps", "2")) == 2
        assert "already holds fold 0" in capsys.readouterr().err

    def test_folds_are_refused_under_torchrun(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
        from fer_core.training.utils import Processes

        monkeypatch.setattr("fer_core.train.init_processes",
                            lambda device: (Processes(rank=0, world_size=2), torch.device("cpu")))
        assert main(_args(tmp_path / "x", "--folds", "2", "--epochs", "1")) == 2
        assert "start one process per fold with --fold-index" in capsys.readouterr().err
