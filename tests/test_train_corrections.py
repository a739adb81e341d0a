"""``--corrections FILE``: the annotation store's exported corrections change what the model trains on
(a real SQLite store, its export, real faces)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fer_core.train as train_module
from annotate import open_store
from annotate.corrections import get_args_parser as export_parser
from annotate.corrections import main as export_main
from annotate.export import export_corrections
from annotate.store import content_hash
from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.train import get_args_parser, main
from fer_core.training.data import LabelMap, prepare_training_data, soft_targets
from fer_core.weights import load_model

TINY = ["--model", "fer_tiny", "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5", "--lr", "0.005",
        "--max-steps", "2", "--threads", "1", "--time-budget", "none", "--self-kd", "0"]
ANGRY, DISGUST, FEAR, HAPPY, SAD, SURPRISE, NEUTRAL = range(7)


@pytest.fixture(scope="module")
def sample():
    return load_faces(SAMPLE_PATH, progress=False)


def _ids(sample, label: int, n: int) -> list[str]:
    return sample.frame.loc[sample.frame["emotion"] == label, "sample_id"].astype(str).tolist()[:n]


@pytest.fixture
def store_path(tmp_path: Path, sample) -> tuple[Path, dict[str, str]]:
    """A store holding the sample faces (as the relabelling tab registers them) and a few decisions.

    Returns the database path and the faces it talks about, by role.
    """
    angry, sad, fear = _ids(sample, ANGRY, 7), _ids(sample, SAD, 2), _ids(sample, FEAR, 1)
    faces = {"relabelled": angry[0], "relabelled_split": angry[1], "dropped": angry[2], "tie": angry[3],
             "unsure": angry[4], "confirmed": sad[0], "undone": angry[5], "skipped": angry[6], "disgust_vote": fear[0]}
    path = tmp_path / "annotations.db"
    store = open_store(str(path))
    store.register_faces(sample.name, sample.frame["sample_id"].astype(str).tolist(), sample.labels,
                         [content_hash(image) for image in sample.images])

    def decide(who, face, label):
        return store.record_decision(who, sample.name, faces[face], label)
    decide("ann", "relabelled", "happy"), decide("bob", "relabelled", "happy")
    decide("ann", "relabelled_split", "happy"), decide("bob", "relabelled_split", "happy")
    decide("cy", "relabelled_split", "unsure")
    decide("ann", "dropped", "not_a_face")
    decide("ann", "tie", "happy"), decide("bob", "tie", "sad")
    decide("ann", "unsure", "unsure")
    decide("ann", "confirmed", "sad")
    decide("ann", "undone", "happy"), store.undo_last("ann")
    decide("ann", "skipped", "skip")
    decide("bob", "disgust_vote", "disgust")
    store.close()
    return path, faces


@pytest.fixture(params=["csv", "parquet"])
def corrections_file(request, store_path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The store's corrections as ``python -m annotate.corrections`` writes them (CSV and Parquet)."""
    db, faces = store_path
    out = tmp_path / f"corrections.{request.param}"
    assert export_main(export_parser().parse_args(["--db", str(db), "--out", str(out)])) == 0
    return out, faces


def _args(*extra: str, out: str = "unused"):
    return get_args_parser().parse_args([str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--out", out, *TINY, *extra])


def _row(sample, sample_id: str) -> int:
    return int(np.flatnonzero(sample.frame["sample_id"].astype(str).to_numpy() == sample_id)[0])


class TestPrepare:
    def test_without_corrections_the_labels_are_as_given(self, sample) -> None:
        data = prepare_training_data(_args(), sample, LabelMap())
        np.testing.assert_array_equal(data.labels, sample.labels)
        assert data.keep.all() and data.targets is None and data.corrections is None

    def test_hard_labels_follow_the_resolved_labels(self, sample, corrections_file) -> None:
        path, faces = corrections_file
        data = prepare_training_data(_args("--corrections", str(path)), sample, LabelMap())

        def row(role):
            return _row(sample, faces[role])
        expected = sample.labels.copy()
        expected[row("relabelled")] = HAPPY
        expected[row("relabelled_split")] = HAPPY
        expected[row("disgust_vote")] = DISGUST
        np.testing.assert_array_equal(data.labels, expected)  # ties, unsure, undone, skip: as given
        assert np.flatnonzero(~data.keep).tolist() == [row("dropped")]
        assert data.targets is None
        summary = dict(data.corrections)
        assert len(summary.pop("sha256")) == 64
        assert summary == {"file": path.name, "dataset": sample.name, "faces_with_votes": 7, "relabelled": 3,
                           "confirmed": 1, "dropped": 1, "kept_original": 2, "soft_labelled": 0, "not_in_data": 0}

    def test_soft_labels_are_the_emotion_vote_distribution(self, sample, corrections_file) -> None:
        path, faces = corrections_file
        data = prepare_training_data(_args("--corrections", str(path), "--soft-labels"), sample, LabelMap())
        t = data.targets

        def row(role):
            return _row(sample, faces[role])
        assert t.shape == (len(sample), 7) and t.dtype == np.float32
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(t[row("relabelled")], np.eye(7)[HAPPY])
        np.testing.assert_allclose(t[row("relabelled_split")], np.eye(7)[HAPPY])  # the unsure vote is not an emotion
        np.testing.assert_allclose(t[row("tie")], 0.5 * (np.eye(7)[HAPPY] + np.eye(7)[SAD]))
        for role in ("unsure", "undone", "skipped"):  # no emotion vote: one-hot of the label as given
            np.testing.assert_allclose(t[row(role)], np.eye(7)[ANGRY])
        untouched = np.ones(len(sample), dtype=bool)
        untouched[[row(r) for r in faces]] = False
        np.testing.assert_array_equal(t[untouched].argmax(1), sample.labels[untouched])
        assert t[untouched].max(1).min() == 1.0
        assert data.corrections["soft_labelled"] == 5  # relabelled x2, tie, confirmed, disgust vote (dropped excluded)

    def test_original_share_mixes_the_original_label_into_the_votes(self, sample, corrections_file) -> None:
        path, faces = corrections_file
        data = prepare_training_data(_args("--corrections", str(path), "--soft-labels", "--original-share", "0.3"),
                                     sample, LabelMap())
        t = data.targets
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
        relabelled = t[_row(sample, faces["relabelled"])]  # originally angry, both votes happy
        np.testing.assert_allclose(relabelled, 0.3 * np.eye(7)[ANGRY] + 0.7 * np.eye(7)[HAPPY], rtol=1e-6)
        tie = t[_row(sample, faces["tie"])]  # angry, one vote happy and one sad
        np.testing.assert_allclose(tie, 0.3 * np.eye(7)[ANGRY] + 0.35 * (np.eye(7)[HAPPY] + np.eye(7)[SAD]),
                                   rtol=1e-6)
        np.testing.assert_array_equal(data.labels[_row(sample, faces["relabelled"])], HAPPY)  # hard labels as before

    @pytest.mark.parametrize("extra, message", [(["--soft-labels", "--original-share", "1.5"], "from 0 to 1"),
                                                (["--original-share", "0.3"], "add --soft-labels")])
    def test_original_share_is_checked(self, sample, corrections_file, extra: list[str], message: str) -> None:
        path, _ = corrections_file
        with pytest.raises(FERError, match=message):
            prepare_training_data(_args("--corrections", str(path), *extra), sample, LabelMap())

    def test_soft_labels_follow_merges(self) -> None:
        votes = np.zeros((2, 7), dtype=np.int64)
        votes[0, [ANGRY, DISGUST, HAPPY]] = [1, 2, 1]
        merged = LabelMap(["disgust=angry"])
        targets, voted = soft_targets(votes, merged(np.array([FEAR, NEUTRAL])), merged)
        np.testing.assert_allclose(targets[0], [0.75, 0, 0.25, 0, 0, 0])
        np.testing.assert_allclose(targets[1], np.eye(6)[5])
        assert voted.tolist() == [True, False]

    def test_other_data_set_name(self, sample, corrections_file, capsys: pytest.CaptureFixture) -> None:
        path, _ = corrections_file
        data = prepare_training_data(_args("--corrections", str(path), "--corrections-dataset", "nobody"), sample,
                                     LabelMap())
        err = capsys.readouterr().err
        assert "holds no corrections for data set 'nobody'" in err
        assert f"it has corrections for: '{sample.name}'" in err  # says which names it knows
        np.testing.assert_array_equal(data.labels, sample.labels)
        assert data.keep.all() and data.corrections["faces_with_votes"] == 0

    def test_a_file_with_other_faces_under_the_same_ids_is_refused(self, sample, tmp_path: Path) -> None:
        store = open_store(str(tmp_path / "other.db"))
        sid = str(sample.frame["sample_id"].iloc[0])
        store.register_faces(sample.name, [sid], [(int(sample.labels[0]) + 1) % 7])
        store.record_decision("ann", sample.name, sid, "happy")
        export_corrections(store, tmp_path / "other.csv")
        store.close()
        with pytest.raises(ValueError, match="holds other faces"):
            prepare_training_data(_args("--corrections", str(tmp_path / "other.csv")), sample, LabelMap())

    def test_other_pixels_under_the_same_id_are_refused(self, sample, store_path, tmp_path: Path) -> None:
        db, _ = store_path
        store = open_store(str(db))
        frame = export_corrections(store, tmp_path / "c.csv")
        store.close()
        table = pd.read_csv(frame, dtype=str, keep_default_na=False)
        table.loc[0, "content_sha256"] = "0" * 64
        table.to_csv(tmp_path / "c.csv", index=False)
        with pytest.raises(ValueError, match="other pixels"):
            prepare_training_data(_args("--corrections", str(tmp_path / "c.csv")), sample, LabelMap())


def _edited(path: Path, edit) -> Path:
    """The CSV at ``path`` changed by ``edit(frame)``, written beside it."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = path.with_name("edited.csv")
    edit(frame).to_csv(out, index=False)
    return out


class TestFileValidation:
    @pytest.mark.parametrize(("edit", "message"), [
        (lambda f: f.drop(columns=["resolved_label"]), "lacks the columns resolved_label"),
        (lambda f: f.assign(resolved_label="contempt"), "unknown labels in resolved_label: 'contempt'"),
        (lambda f: f.assign(original_label="Angry"), "unknown labels in original_label: 'Angry'"),
        (lambda f: f.assign(votes_happy="two"), "votes_happy holds values that are not counts"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "lists 1 faces twice"),
    ])
    def test_a_file_that_does_not_fit_is_refused_with_what_is_wrong(self, sample, store_path, tmp_path: Path,
                                                                    edit, message: str) -> None:
        db, _ = store_path
        store = open_store(str(db))
        path = export_corrections(store, tmp_path / "corrections.csv")
        store.close()
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            prepare_training_data(_args("--corrections", str(_edited(path, edit))), sample, LabelMap())

    def test_soft_labels_need_the_vote_counts(self, sample, store_path, tmp_path: Path) -> None:
        db, _ = store_path
        store = open_store(str(db))
        path = export_corrections(store, tmp_path / "corrections.csv")
        store.close()
        hard_only = _edited(path, lambda f: f[["dataset", "sample_id", "original_label", "resolved_label"]])
        prepared = prepare_training_data(_args("--corrections", str(hard_only)), sample, LabelMap())
        assert prepared.corrections["relabelled"] == 3
        with pytest.raises(ValueError, match="lacks the columns votes_angry"):
            prepare_training_data(_args("--corrections", str(hard_only), "--soft-labels"), sample, LabelMap())


class TestEndToEnd:
    def test_card_counts_and_soft_targets_reach_the_loss(self, tmp_path: Path, sample, corrections_file,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        path, faces = corrections_file
        seen: list[torch.Tensor] = []
        cross_entropy = train_module.F.cross_entropy

        def spy(logits, target, **kwargs):
            if "label_smoothing" in kwargs:  # the training loss (calibration calls it too)
                seen.append(target.detach().clone())
            return cross_entropy(logits, target, **kwargs)

        monkeypatch.setattr(train_module.F, "cross_entropy", spy)
        out = tmp_path / "run"
        # One whole epoch (11 steps of 32): every kept face's target goes through the loss once.
        args = _args("--corrections", str(path), "--soft-labels", "--epochs", "1", "--max-steps", "20", out=str(out))
        assert main(args) == 0
        _, card = load_model(out / "model.safetensors")
        corrections = card["training"]["corrections"]
        assert (corrections["relabelled"], corrections["dropped"], corrections["soft_labelled"]) == (3, 1, 5)
        assert corrections["file"] == path.name
        assert card["training"]["soft_labels"] is True and card["training"]["original_share"] == 0.0
        assert card["training"]["faces_trained_on"] == len(sample) - 1
        assert seen and all(t.dtype == torch.float32 and t.shape[1] == 7 for t in seen)
        targets = torch.cat(seen).numpy()
        assert len(targets) == len(sample) - 1  # the not_a_face face never reaches the loss
        assert sorted(targets.max(1))[:1] == [0.5] and (targets.max(1) == 1.0).sum() == len(sample) - 2  # one tie
        expected = sample.labels.copy()
        for role, label in (("relabelled", HAPPY), ("relabelled_split", HAPPY), ("disgust_vote", DISGUST)):
            expected[_row(sample, faces[role])] = label
        expected = np.delete(expected, [_row(sample, faces["dropped"]), _row(sample, faces["tie"])])
        hard = targets[targets.max(1) == 1.0].argmax(1)
        np.testing.assert_array_equal(np.bincount(hard, minlength=7), np.bincount(expected, minlength=7))

    def test_the_card_says_what_share_the_original_labels_had(self, tmp_path: Path, corrections_file) -> None:
        path, _ = corrections_file
        out = tmp_path / "mixed"
        assert main(_args("--corrections", str(path), "--soft-labels", "--original-share", "0.25", "--epochs", "1",
                          out=str(out))) == 0
        training = load_model(out / "model.safetensors")[1]["training"]
        assert training["original_share"] == 0.25
        assert training["trained_on"] == "corrections (vote distributions, 25% original labels)"

    def test_no_rows_for_the_data_set_warns_and_trains(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        empty = tmp_path / "empty.db"
        store = open_store(str(empty))
        export_corrections(store, tmp_path / "empty.csv")
        store.close()
        out = tmp_path / "plain"
        assert main(_args("--corrections", str(tmp_path / "empty.csv"), "--epochs", "1", out=str(out))) == 0
        assert "holds no corrections" in capsys.readouterr().err
        assert json.loads((out / "model.json").read_text())["training"]["corrections"]["faces_with_votes"] == 0

    @pytest.mark.parametrize("extra, message", [
        (["--corrections", "/nonexistent/corrections.csv"], "no file at"),
        (["--soft-labels"], "give the corrections file with --corrections"),
    ])
    def test_bad_input_is_refused(self, tmp_path: Path, extra: list[str], message: str,
                                  capsys: pytest.CaptureFixture) -> None:
        assert main(_args(*extra, "--epochs", "1", out=str(tmp_path / "x"))) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


class TestExportCommand:
    def test_writes_what_the_relabel_tab_exports(self, store_path, tmp_path: Path) -> None:
        db, _ = store_path
        assert export_main(export_parser().parse_args(
            ["--db", f"sqlite:///{db}", "--out", str(tmp_path / "a.csv")])) == 0
        store = open_store(str(db))
        export_corrections(store, tmp_path / "b.csv", "fer2013_sample")
        store.close()
        assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()

    def test_ferplus_and_only_changed(self, store_path, tmp_path: Path) -> None:
        db, _ = store_path
        assert export_main(export_parser().parse_args(["--db", str(db), "--out", str(tmp_path / "v.csv"),
                                                       "--table", "ferplus"])) == 0
        assert "not_a_face" in pd.read_csv(tmp_path / "v.csv").columns
        assert export_main(export_parser().parse_args(["--db", str(db), "--out", str(tmp_path / "c.parquet"),
                                                       "--only-changed"])) == 0
        assert pd.read_parquet(tmp_path / "c.parquet")["changed"].all()

    @pytest.mark.parametrize(("db", "message"), [("missing.db", "no annotation database"), ("junk.db", "cannot read"),
                                                 ("empty.db", "is not an annotation store")])
    def test_refuses_what_is_not_a_store_and_creates_nothing(self, tmp_path: Path, db: str, message: str,
                                                             capsys: pytest.CaptureFixture) -> None:
        (tmp_path / "junk.db").write_text("not a database")
        import sqlite3

        sqlite3.connect(tmp_path / "empty.db").close()
        assert export_main(export_parser().parse_args(
            ["--db", str(tmp_path / db), "--out", str(tmp_path / "c.csv")])) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "c.csv").exists() and not (tmp_path / "missing.db").exists()

    def test_an_unknown_data_set_is_named(self, store_path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        db, _ = store_path
        assert export_main(export_parser().parse_args(["--db", str(db), "--out", str(tmp_path / "c.csv"),
                                                       "--dataset", "nobody"])) == 0
        assert "no votes for data set 'nobody' (it has votes for: 'fer2013_sample')" in capsys.readouterr().err


def test_fer_core_never_imports_annotate_and_folds_never_import_train() -> None:
    """Imports go one way: annotate -> fer_core; fer_core.train -> fer_core.folds -> fer_core.training."""
    import ast

    root = Path(train_module.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "annotate"], path
        if path.name == "folds.py" or path.parent.name == "training":
            assert "fer_core.train" not in names and "fer_core.folds" not in names, path
