"""Training on real faces: the loss falls, a killed run resumes exactly, the defaults are the shipped recipe."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.label_sets import write_label_file
from fer_core.model import create_model
from fer_core.train import get_args_parser, main
from fer_core.training.data import LabelMap, TrainingData
from fer_core.training.optim import class_weights
from fer_core.training.utils import predict_logits, to_input
from fer_core.training.val_labels import trained_on
from fer_core.weights import DEFAULT_WEIGHTS, card_path, load_model

#: A tiny plain run: no time budget, no self-distillation (both are tested on their own).
TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005",
        "--time-budget", "none", "--self-kd", "0"]


def _run(tmp_path: Path, *extra: str, out: str = "run") -> tuple[int, Path]:
    args = get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(tmp_path / out),
                                         *TINY, *extra])
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
        assert card["training"]["processes"] == 1
        assert card["calibration"]["temperature"] > 0
        assert {"plain", "flip_tta"} <= set(card["val_metrics"])
        assert len(card["val_metrics"]["plain"]["val_recall"]) == 7
        assert (out / "curve.png").stat().st_size > 1000
        assert (out / "log.csv").read_text().startswith("epoch,train_loss,val_accuracy,val_macro_f1,lr,seconds\n")
        assert card["training"]["selected_on"] == "original" and set(card["training"]["val_by_labels"]) == {"original"}
        assert card["training"]["trained_on"] == "original labels"

    @pytest.mark.slow  # a few seconds of training: the full suite runs it
    def test_same_seed_same_result(self, tmp_path: Path) -> None:
        _run(tmp_path, "--epochs", "2", out="a")
        _run(tmp_path, "--epochs", "2", out="b")
        a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-4)

    @pytest.mark.slow
    def test_killed_run_resumes_where_it_stopped(self, tmp_path: Path) -> None:
        command = [sys.executable, "-m", "fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), *TINY,
                   "--epochs", "4"]
        straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr[-2000:]
        # Kill the second run (SIGKILL: no clean-up) once it has checkpointed an epoch.
        process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checkpoint = tmp_path / "killed" / "checkpoint.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (
                checkpoint.is_file() and json.loads(checkpoint.read_text())["epoch"] >= 1):
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stopped_at = json.loads(checkpoint.read_text())["epoch"]
        assert 1 <= stopped_at < 4, "the run finished before it could be killed"
        resumed = subprocess.run([*command, "--out", str(tmp_path / "killed"), "--resume"], cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resuming {tmp_path / 'killed'} after epoch {stopped_at}" in resumed.stdout
        a, b = _log(tmp_path / "straight"), _log(tmp_path / "killed")
        assert [r["epoch"] for r in b] == [1, 2, 3, 4]
        assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-4)
        assert [r["val_accuracy"] for r in b] == pytest.approx([r["val_accuracy"] for r in a], abs=1e-3)

    def test_refuses_to_overwrite_a_run_and_to_resume_nothing(self, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
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


class TestDefaults:
    """The defaults are the bundled model's recipe: the short command trains it again."""

    def test_the_bundled_models_command_sets_nothing_but_data_and_output(self) -> None:
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
        argv = shlex.split(card["training"]["command"])[3:]  # after "python -m fer_core.train"
        recorded = vars(get_args_parser().parse_args(argv))
        defaults = vars(get_args_parser().parse_args(["DATA", "--out", "DIR"]))
        where = {"data", "val", "out", "no_progress"}  # where the data and the run live; not the recipe
        assert ({k: v for k, v in recorded.items() if k not in where}
                == {k: v for k, v in defaults.items() if k not in where})

    def test_the_recipe(self) -> None:
        args = get_args_parser().parse_args(["DATA", "--out", "DIR"])
        assert (args.model, args.epochs, args.time_budget, args.seed) == ("fer_vgg", 86, 7200, 0)
        assert (args.self_kd, args.kd_temperature, args.dropout, args.weight_decay) == (0.7, 2.0, 0.5, 0.1)
        assert str(args.time_budget) == "2h"  # as --help shows it

    @pytest.mark.parametrize("text", ["none", "off", "None"])
    def test_no_time_budget(self, text: str) -> None:
        assert get_args_parser().parse_args(["DATA", "--out", "DIR", "--time-budget", text]).time_budget is None

    @pytest.mark.parametrize(("extra", "message"), [
        (["--self-kd", "1.5"], "--self-kd must be in (0, 1]"),
        (["--self-kd", "0.5", "--ema-decay", "0"], "needs --ema-decay above 0"),
        (["--ema-decay", "0"], "needs --ema-decay above 0 (or --self-kd 0)"),  # the default self-distils
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--fold-index", "0"], "give --folds K too"),
        (["--val-labels", "no_such_labels.csv"], "--val-labels: no file at 'no_such_labels.csv'"),
        (["--val-labels-name", "ferplus"], "give --val-labels FILE too"),
    ])
    def test_options_that_cannot_work_are_refused_before_reading_data(
            self, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
        args = get_args_parser().parse_args([str(tmp_path / "no_data"), "--out", str(tmp_path / "x"), *extra])
        assert main(args) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()

    @pytest.mark.parametrize(("option", "value", "choices"), [("--opt", "adam", "adamw, sgd"),
                                                             ("--class-weighting", "balanced", "sqrt, none"),
                                                             ("--device", "tpu", "auto, cpu, cuda")])
    def test_an_unknown_name_lists_the_choices(self, option: str, value: str, choices: str,
                                               capsys: pytest.CaptureFixture) -> None:
        with pytest.raises(SystemExit):
            get_args_parser().parse_args(["DATA", "--out", "DIR", option, value])
        err = capsys.readouterr().err
        assert f"{option}: invalid choice: '{value}'" in err and all(name in err for name in choices.split(", "))


class TestValLabels:
    """``--val-labels``: a second label set for the val faces chooses the best epoch and is reported beside theirs."""

    #: Two epochs that differ: no EMA, no augmentation, a high rate, four steps each.
    TWO_EPOCHS = ("--epochs", "2", "--max-steps", "4", "--ema-decay", "0", "--no-augment", "--lr", "0.02")

    @pytest.mark.slow  # a few seconds of training: the full suite runs it
    def test_the_second_set_chooses_the_epoch_and_the_card_reports_both(self, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
        # A first run chooses on the val faces' own labels. Labels that its best epoch gets all wrong (its
        # second choice for each face) make a second set on which the same run must choose otherwise.
        assert _run(tmp_path, *self.TWO_EPOCHS, out="own")[0] == 0
        own_best = json.loads((tmp_path / "own" / "model.json").read_text())["training"]["best_epoch"]
        model, _ = load_model(tmp_path / "own" / "model.safetensors")
        val = load_faces(SAMPLE_PATH, progress=False)
        second = np.argsort(predict_logits(model, val.images, device=torch.device("cpu")), axis=1)[:, -2]
        second[::10] = -1  # faces without a label in the second set
        labels_file = write_label_file(tmp_path / "votes_val.csv", val.frame["sample_id"].tolist(), second)

        code, out = _run(tmp_path, *self.TWO_EPOCHS, "--val-labels", str(labels_file), "--val-labels-name", "ferplus")
        assert code == 0
        log = _log(out)
        assert [r["val_accuracy"] for r in log] == pytest.approx([r["val_accuracy"] for r in _log(tmp_path / "own")])
        by_second = max((1, 2), key=lambda e: (log[e - 1]["val2_accuracy"], -e))
        by_own = max((1, 2), key=lambda e: (log[e - 1]["val_accuracy"], -e))
        assert by_own == own_best and by_second != by_own, "the two label sets should choose different epochs"
        model, card = load_model(out / "model.safetensors")
        training = card["training"]
        assert training["best_epoch"] == by_second and training["selected_on"] == "ferplus"
        assert training["trained_on"] == "original labels"
        assert set(training["val_by_labels"]) == {"original", "ferplus"}
        ferplus = training["val_by_labels"]["ferplus"]
        assert ferplus["file"] == "votes_val.csv" and ferplus["faces"] == 315 and ferplus["left_out"] == 35
        assert set(ferplus["per_class_recall"]) == set(card["labels"])
        # The card's figures are the model's, as served, against each set.
        served = predict_logits(model, val.images, device=torch.device("cpu"),
                                flip_tta=card["inference"]["flip_tta"]).argmax(1)
        has = second >= 0
        assert ferplus["accuracy"] == pytest.approx(float((served[has] == second[has]).mean()))
        assert training["val_by_labels"]["original"]["accuracy"] == pytest.approx(float((served == val.labels).mean()))
        assert card["calibration"]["fitted_on"] == "val, ferplus labels (315 faces)"
        assert "val2_accuracy" in card["val_metrics"]["plain"]
        assert (out / "log.csv").read_text().splitlines()[0].endswith(",seconds,val2_accuracy,val2_macro_f1")
        assert "ferplus acc" in capsys.readouterr().out

        # A resumed run goes on choosing on the labels it chose on.
        args = get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(out), *TINY,
                                             *self.TWO_EPOCHS, "--resume"])
        assert main(args) == 2
        assert "resume it with the same --val-labels file" in capsys.readouterr().err

    def test_a_file_for_no_val_face_is_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        empty = write_label_file(tmp_path / "none.csv", ["train/angry/Training_10333072"], np.array([-1]))
        assert _run(tmp_path, "--epochs", "1", "--val-labels", str(empty))[0] == 2
        assert "gives none of the 350 val faces a label" in capsys.readouterr().err

    @pytest.mark.parametrize(("corrections", "soft", "share", "expected"), [
        (None, False, 0.0, "original labels"), ({"file": "c.csv"}, False, 0.0, "corrections (majority)"),
        ({"file": "c.csv"}, True, 0.0, "corrections (vote distributions)"),
        ({"file": "c.csv"}, True, 0.3, "corrections (vote distributions, 30% original labels)")])
    def test_trained_on(self, corrections: dict | None, soft: bool, share: float, expected: str) -> None:
        labels = np.zeros(3, dtype=np.int64)
        data = TrainingData(None, labels, np.ones((3, 7), np.float32) if soft else None, np.ones(3, bool), corrections,
                            share)
        assert trained_on(data) == expected


class TestOptions:
    def test_label_map(self) -> None:
        merged = LabelMap(["disgust=angry"])
        assert merged.names == ["angry", "fear", "happy", "sad", "surprise", "neutral"]
        np.testing.assert_array_equal(merged(np.arange(7)), [0, 0, 1, 2, 3, 4, 5])
        with pytest.raises(ValueError, match="SOURCE=TARGET"):
            LabelMap(["contempt=angry"])

    def test_class_weights_are_inverse_square_root_frequencies_averaging_one_per_face(self) -> None:
        labels = np.array([0] * 90 + [1] * 10 + [2] * 40)
        w = class_weights(labels, 4, "sqrt").numpy()
        assert w[1] > w[2] > w[0]
        np.testing.assert_allclose(w[:3] / w[0], np.sqrt(90 / np.array([90, 10, 40])), rtol=1e-6)
        assert w[labels].mean() == pytest.approx(1.0)
        assert w[3] > 0  # a class without faces: a weight that never reaches the loss
        np.testing.assert_array_equal(class_weights(labels, 4, "none").numpy(), np.ones(4))
        with pytest.raises(ValueError, match="choose one of sqrt, none"):
            class_weights(labels, 4, "balanced")


def test_validation_flip_tta_averages_the_logits_of_each_face_and_its_mirror() -> None:
    """``predict_logits`` runs faces and mirrors in one call; each face keeps its own pair, across batches."""
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


@pytest.mark.slow
def test_torchrun_processes_share_the_batches_of_one_run(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2``: one run, one set of files, written by the first process."""
    out = tmp_path / "ddp"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m",
         "fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(out), *TINY, "--epochs", "2",
         "--max-steps", "3", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("best epoch") == 1  # the first process alone evaluates and writes
    assert [r["epoch"] for r in _log(out)] == [1, 2] and all(r["steps"] == 3 for r in _log(out))
    _, card = load_model(out / "model.safetensors")
    assert card["training"]["processes"] == 2
