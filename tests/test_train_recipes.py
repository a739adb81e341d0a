"""Recipe options of ``fer_core.train`` on the real sample faces: mixing, distillation, fine-tuning, curricula,
and folds trained in parallel processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fer_core.augment import mix_batch, mix_targets
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.labels import EMOTIONS
from fer_core.train import (
    LabelMap,
    distillation_loss,
    get_args_parser,
    main,
    prepare_training_data,
    teacher_probabilities,
    to_input,
)
from fer_core.weights import load_model

TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005",
        "--threads", "1"]


def _args(out: Path, *extra: str):
    return get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", str(out), *TINY, *extra])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sample():
    return load_faces(SAMPLE_PATH, progress=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained a few epochs on the sample: something to distil from and to start from."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(_args(out, "--epochs", "3", "--ema-decay", "0")) == 0
    return out / "model.safetensors"


class TestMixing:
    def test_mixup_blends_faces_and_targets_in_the_same_proportion(self) -> None:
        x = torch.rand(8, 1, 48, 48)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        mixed, partner, lam = mix_batch(x, mixup=0.4, cutmix=0.0, rng=rng, generator=gen)
        assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(8))
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])
        targets = mix_targets(torch.arange(8) % 7, partner, lam, 7)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        assert targets[0, 0] >= lam - 1e-6  # face 0 is class 0: at least its own share

    def test_cutmix_pastes_a_rectangle_whose_area_is_the_partners_share(self) -> None:
        x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 48, 48).clone()  # face i is filled with i
        mixed, partner, lam = mix_batch(x, mixup=0.0, cutmix=1.0, rng=np.random.default_rng(3),
                                        generator=torch.Generator().manual_seed(3))
        for i in range(4):
            own = (mixed[i] == i).float().mean().item()
            if partner[i] != i:
                assert own == pytest.approx(lam, abs=1e-6)
        soft = torch.eye(7)[[0, 1, 2, 3]]
        torch.testing.assert_close(mix_targets(soft, partner, lam, 7), lam * soft + (1 - lam) * soft[partner])

    def test_a_mixed_run_trains_resumes_and_records_its_recipe(self, tmp_path: Path) -> None:
        assert main(_args(tmp_path / "a", "--epochs", "2", "--mixup", "0.2", "--cutmix", "1.0")) == 0
        assert main(_args(tmp_path / "b", "--epochs", "2", "--mixup", "0.2", "--cutmix", "1.0")) == 0
        a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-4)
        plain = tmp_path / "plain"
        assert main(_args(plain, "--epochs", "2")) == 0
        assert _log(plain)[0]["train_loss"] != pytest.approx(a[0]["train_loss"], rel=1e-3)
        card = json.loads((tmp_path / "a" / "model.json").read_text())
        assert card["training"]["mix"] == {"mixup": 0.2, "cutmix": 1.0, "prob": 1.0}


class TestCurriculumSchedule:
    def test_the_learning_rate_ends_its_decay_although_early_stages_train_on_fewer_faces(self, tmp_path: Path) -> None:
        assert main(_args(tmp_path / "c", "--epochs", "3", "--curriculum", "0.8,0.5,0")) == 0
        log = _log(tmp_path / "c")
        assert log[0]["train_faces"] < log[-1]["train_faces"] == 350
        assert log[-1]["lr"] < 0.005 * 0.05  # the last step of the decay, not part-way


class TestOfflineDistillation:
    def test_targets_mix_the_label_and_the_teachers_probabilities(self, tmp_path: Path, sample) -> None:
        ids = sample.frame["sample_id"].astype(str).to_numpy()
        teacher = np.full((len(ids), 7), 1 / 7)
        path = tmp_path / "teacher.parquet"
        frame = pd.DataFrame({"sample_id": ids[::-1], **{e: teacher[:, i] for i, e in enumerate(EMOTIONS)}})
        pd.concat([frame, frame.iloc[:3]]).to_parquet(path)  # in another order, three rows twice
        args = _args(tmp_path / "x", "--distill", str(path), "--distill-weight", "0.25")
        data = prepare_training_data(args, sample, LabelMap())
        expected = 0.75 * np.eye(7)[sample.labels] + 0.25 / 7
        np.testing.assert_allclose(data.targets, expected, atol=1e-6)
        assert data.distill["weight"] == 0.25

    @pytest.mark.parametrize("frame, message", [
        (lambda ids: pd.DataFrame({"sample_id": ids}), "lacks the columns"),
        (lambda ids: pd.DataFrame({"sample_id": ids[:10], **{e: 1.0 for e in EMOTIONS}}), "no probabilities for 340"),
        (lambda ids: pd.DataFrame({"sample_id": ids, **{e: -1.0 for e in EMOTIONS}}), "negative"),
    ])
    def test_a_teacher_file_that_does_not_fit_is_refused(self, tmp_path: Path, sample, frame, message: str,
                                                         capsys: pytest.CaptureFixture) -> None:
        path = tmp_path / "teacher.parquet"
        frame(sample.frame["sample_id"].astype(str).to_numpy()).to_parquet(path)
        assert main(_args(tmp_path / "x", "--distill", str(path), "--epochs", "1")) == 2
        assert message in capsys.readouterr().err

    def test_a_file_that_is_not_parquet_is_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        path = tmp_path / "teacher.parquet"
        path.write_text("sample_id,angry\n")
        assert main(_args(tmp_path / "x", "--distill", str(path), "--epochs", "1")) == 2
        assert "cannot read teacher.parquet as Parquet" in capsys.readouterr().err


class TestTeachersAndInit:
    def test_teacher_probabilities_average_models_and_mirror_images(self, teacher: Path, sample) -> None:
        model, _ = load_model(teacher)
        x = to_input(torch.from_numpy(sample.images[:16]))
        soft = teacher_probabilities([model, model], x, 2.0, None)
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

    def test_a_student_trains_with_its_teacher_and_the_card_names_it(self, tmp_path: Path, teacher: Path) -> None:
        out = tmp_path / "student"
        assert main(_args(out, "--epochs", "2", "--teacher", str(teacher), "--kd-weight", "0.5")) == 0
        card = json.loads((out / "model.json").read_text())
        assert card["training"]["teachers"][0]["file"] == "model.safetensors"
        assert len(card["training"]["teachers"][0]["sha256"]) == 64
        assert card["training"]["kd"] == {"weight": 0.5, "temperature": 2.0}
        # The distillation term changes what is minimised.
        plain = tmp_path / "plain"
        assert main(_args(plain, "--epochs", "2")) == 0
        assert _log(out)[0]["train_loss"] != pytest.approx(_log(plain)[0]["train_loss"], rel=1e-3)

    def test_self_distillation_from_the_weight_average_trains_and_the_card_says_so(self, tmp_path: Path) -> None:
        out, plain = tmp_path / "self", tmp_path / "plain"
        assert main(_args(out, "--epochs", "2", "--self-kd", "0.8")) == 0
        assert main(_args(plain, "--epochs", "2")) == 0
        card = json.loads((out / "model.json").read_text())
        assert card["training"]["self_kd"]["weight"] == 0.8 and card["training"]["teachers"] is None
        # The share starts at 0, so the runs match on the first step and part ways as it rises.
        self_log, plain_log = _log(out), _log(plain)
        assert self_log[1]["train_loss"] != pytest.approx(plain_log[1]["train_loss"], rel=1e-3)
        assert np.isfinite([row["train_loss"] for row in self_log]).all()

    @pytest.mark.parametrize(("extra", "message"), [
        (["--self-kd", "1.5"], "--self-kd must be in (0, 1]"),
        (["--self-kd", "0.5", "--ema-decay", "0"], "needs --ema-decay above 0"),
        (["--self-kd", "0.5", "--teacher", "TEACHER"], "choose one"),
    ])
    def test_self_distillation_options_that_cannot_work_are_refused(self, tmp_path: Path, teacher: Path,
                                                                     extra: list[str], message: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
        extra = [str(teacher) if part == "TEACHER" else part for part in extra]
        assert main(_args(tmp_path / "x", "--epochs", "1", *extra)) == 2
        assert message in capsys.readouterr().err

    def test_init_starts_from_the_trained_weights(self, tmp_path: Path, teacher: Path) -> None:
        # No step at all (learning rate 0): the fine-tuned copy is the model it started from.
        out = tmp_path / "copy"
        assert main(_args(out, "--epochs", "1", "--init", str(teacher), "--lr", "0", "--ema-decay", "0")) == 0
        trained, _ = load_model(teacher)
        copy, card = load_model(out / "model.safetensors")
        for name, value in trained.state_dict().items():
            if value.is_floating_point() and "running" not in name:
                torch.testing.assert_close(copy.state_dict()[name], value)
        assert card["training"]["init"]["file"] == "model.safetensors"

    @pytest.mark.parametrize("option", ["--teacher", "--init"])
    def test_a_model_of_another_kind_or_a_pickle_is_refused(self, tmp_path: Path, teacher: Path, option: str,
                                                             capsys: pytest.CaptureFixture) -> None:
        merged = tmp_path / "merged"
        assert main(_args(merged, "--epochs", "1", "--merge", "disgust=angry", "--max-steps", "1")) == 0
        assert main(_args(tmp_path / "x", "--epochs", "1", option, str(merged / "model.safetensors"))) == 2
        assert "disgust" in capsys.readouterr().err
        pickle = tmp_path / "model.pt"
        torch.save({"w": torch.zeros(1)}, pickle)
        assert main(_args(tmp_path / "y", "--epochs", "1", option, str(pickle))) == 2
        assert "safetensors" in capsys.readouterr().err


class TestParallelFolds:
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
