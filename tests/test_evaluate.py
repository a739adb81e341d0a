"""The evaluation command: metrics checked against known predictions on a class-folder set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.evaluate import compute_metrics, get_args_parser, main
from fer_core.label_sets import write_label_file
from fer_core.model import create_model
from fer_core.predict import Predictor
from fer_core.weights import save_model

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


class TestComputeMetrics:
    def test_known_predictions(self) -> None:
        y_true = np.array([0, 0, 0, 0, 3, 3, 3, 3, 6, 6])
        y_pred = np.array([0, 0, 0, 3, 3, 3, 3, 3, 6, -1])  # -1: no face found, counts as wrong
        m = compute_metrics(y_true, y_pred, LABELS, quality=np.linspace(0, 1, 10), faces_found=0.9)
        assert m["n"] == 10 and m["accuracy"] == pytest.approx(0.8)
        assert m["per_class_recall"]["angry"] == pytest.approx(0.75)
        assert m["per_class_recall"]["happy"] == 1.0 and m["per_class_recall"]["neutral"] == 0.5
        assert m["per_class_precision"]["happy"] == pytest.approx(0.8)
        assert m["confusion"][0] == [3, 0, 0, 1, 0, 0, 0]
        assert m["confusion"][6] == [0, 0, 0, 0, 0, 0, 1]  # the face not found is in no column
        assert [b["n"] for b in m["quality_bands"]] == [3, 2, 2, 3]
        # Quality-weighted: the wrong faces have quality 3/9 and 1.0.
        assert m["quality_weighted_accuracy"] == pytest.approx(1 - (3 / 9 + 1.0) / 5.0)
        assert m["faces_found"] == 0.9


class TestCommand:
    def test_class_folders_with_synonyms_match_the_predictor(self, tmp_path: Path, val_faces,
                                                              capsys: pytest.CaptureFixture) -> None:
        images, labels, _ = val_faces
        torch.manual_seed(0)
        weights = save_model(create_model("fer_tiny").eval(), tmp_path / "tiny.safetensors",
                             {"architecture": "fer_tiny", "labels": LABELS})
        names = {"angry": "Anger", "happy": "happiness", "surprise": "surprised"}
        for i, (face, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "data" / names.get(LABELS[label], LABELS[label])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(face).save(folder / f"{i}.png")
        (tmp_path / "data" / "contempt").mkdir()
        Image.fromarray(images[0]).save(tmp_path / "data" / "contempt" / "x.png")

        args = get_args_parser().parse_args([
            str(tmp_path / "data"), "--weights", str(weights), "--json", str(tmp_path / "m.json"),
            "--plots", str(tmp_path / "plots"), "--export", str(tmp_path / "f.npz"), "--runtime", "onnx",
        ])
        with pytest.warns(UserWarning, match="contempt"):
            assert main(args) == 0
        printed = capsys.readouterr().out
        metrics = json.loads((tmp_path / "m.json").read_text())
        predicted = Predictor(weights, runtime="onnx").predict_faces(images).argmax(1)
        assert metrics["n"] == 35
        assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()))
        assert f"accuracy: {metrics['accuracy']:.4f}" in printed
        assert np.asarray(metrics["confusion"]).sum() == 35
        assert set(metrics) >= {"n", "accuracy", "macro_f1", "per_class_recall", "confusion", "faces_found"}
        assert (tmp_path / "plots" / "confusion.png").stat().st_size > 1000
        exported = np.load(tmp_path / "f.npz")
        assert exported["features"].shape[0] == exported["logits"].shape[0] == exported["probs"].shape[0] == 35
        assert (tmp_path / "f.csv").read_text().splitlines()[0] == "sample_id,dataset,emotion,split"

    def test_missing_data_is_a_clean_error(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert main(get_args_parser().parse_args([str(tmp_path / "none")])) == 2
        assert "error: data set not found" in capsys.readouterr().err

    @pytest.mark.parametrize(("options", "message"), [(["--runtime", "torch"], "invalid choice: 'torch'"),
                                                      (["--tta", "views"], "invalid choice: 'views'")])
    def test_an_unknown_runtime_or_tta_mode_is_refused(self, options: list[str], message: str,
                                                       capsys: pytest.CaptureFixture) -> None:
        with pytest.raises(SystemExit):
            get_args_parser().parse_args([str(SAMPLE_PATH), *options])
        assert message in capsys.readouterr().err

    @pytest.mark.parametrize(("options", "predictor_args"), [
        ([], {}), (["--tta", "off"], {"tta": False}), (["--tta", "on"], {"tta": True}),
        (["--tta", "all"], {"tta": True, "mirror_gap": float("inf")}),
        (["--runtime", "onnx", "--tta", "off"], {"runtime": "onnx", "tta": False})])
    def test_tta_modes_reach_the_predictor(self, tmp_path: Path, val_faces, options: list[str],
                                           predictor_args: dict) -> None:
        # The bundled model, whose card gates the second pass: each mode serves the logits of its Predictor.
        images, labels, _ = val_faces
        for i, (face, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "data" / LABELS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(face).save(folder / f"{i:03d}.png")
        args = get_args_parser().parse_args([str(tmp_path / "data"), *options, "--export", str(tmp_path / "f.npz")])
        assert main(args) == 0
        exported = np.load(tmp_path / "f.npz")
        order = np.argsort([f"{LABELS[label]}/{i:03d}" for i, label in enumerate(labels)])  # the folder's reading order
        expected = Predictor(**predictor_args).logits(images[order])
        np.testing.assert_allclose(exported["logits"], expected, atol=1e-4)


class TestLabels:
    """``--labels FILE``: the same faces measured against another label set."""

    def test_accuracy_against_the_label_file_with_unlabelled_faces_left_out(self, tmp_path: Path, val_faces,
                                                                           capsys: pytest.CaptureFixture) -> None:
        images, labels, _ = val_faces
        for i, (face, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "data" / LABELS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(face).save(folder / f"{i:03d}.png")
        table = load_faces(tmp_path / "data", progress=False)
        other = table.labels.copy()
        other[::3] = (other[::3] + 1) % 7  # a third of the faces relabelled
        other[1::5] = -1  # and some without a label in this set
        labels_file = write_label_file(tmp_path / "ferplus_val.csv", table.frame["sample_id"].tolist(), other)

        args = get_args_parser().parse_args([str(tmp_path / "data"), "--labels", str(labels_file),
                                             "--json", str(tmp_path / "m.json")])
        assert main(args) == 0
        printed = capsys.readouterr().out
        metrics = json.loads((tmp_path / "m.json").read_text())
        has = other >= 0
        predicted = Predictor().predict_faces(table.images[has]).argmax(1)
        assert metrics["n"] == int(has.sum()) == 28
        assert metrics["accuracy"] == pytest.approx(float((predicted == other[has]).mean()))
        assert metrics["accuracy"] != pytest.approx(float((predicted == table.labels[has]).mean()))
        assert metrics["label_set"] == {"name": "ferplus_val", "file": "ferplus_val.csv", "faces": 28, "left_out": 7,
                                        "sha256": metrics["label_set"]["sha256"]}
        assert set(metrics) >= {"n", "accuracy", "macro_f1", "per_class_recall", "confusion", "faces_found"}
        assert "labels: ferplus_val (ferplus_val.csv): 28 faces labelled, 7 left out" in printed

        # Without --labels: the data's own labels, all faces.
        assert main(get_args_parser().parse_args([str(tmp_path / "data"), "--json", str(tmp_path / "o.json")])) == 0
        own = json.loads((tmp_path / "o.json").read_text())
        assert own["n"] == 35 and own["label_set"]["name"] == "original" and own["label_set"]["left_out"] == 0

    def test_a_bad_label_file_is_a_clean_error(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        (tmp_path / "l.csv").write_text("sample_id,label\ntrain/angry/Training_10333072,contempt\n")
        assert main(get_args_parser().parse_args([str(SAMPLE_PATH), "--labels", str(tmp_path / "l.csv")])) == 2
        assert "line 2: unknown emotion 'contempt'" in capsys.readouterr().err
