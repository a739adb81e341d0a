"""The model catalog over real models: the bundled one copied under another name and a fine-tuned one,
chosen by name (names, default, add, set_default, remove, unknown names), and ``--model NAME`` in commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_FER, needs_shared
from fer_core._validation import FERError
from fer_core.catalog import ModelCatalog, UnknownModel, check_model_name, weights_for
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.predict import Predictor
from fer_core.weights import DEFAULT_WEIGHTS, card_path
from second_model import COPY_NAME, TUNED_NAME, copy_bundled, copy_model

BUNDLED = "fer_model"  # the bundled default model's name (its file's stem: its card has no name)


@pytest.fixture()
def folder(tmp_path: Path, tuned_weights: Path) -> Path:
    """A models folder: the bundled model under another name, and the fine-tuned model."""
    models = tmp_path / "models"
    copy_bundled(models)
    copy_model(tuned_weights, models)
    return models


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return load_faces(SAMPLE_PATH, progress=False).images[:64]


class TestNames:
    def test_every_model_with_a_card_by_its_name_the_default_first(self, folder: Path) -> None:
        (folder / "no_card.safetensors").write_bytes(DEFAULT_WEIGHTS.read_bytes())  # no card: not a model
        catalog = ModelCatalog(folder=folder)
        assert catalog.default == BUNDLED
        assert catalog.names() == [BUNDLED, COPY_NAME, TUNED_NAME]
        assert catalog.entry(COPY_NAME).weights == folder / "fer_copy.safetensors"
        assert catalog.entry(TUNED_NAME).weights == folder / "fer_tuned.safetensors"
        assert catalog.entry(None).name == catalog.entry("").name == BUNDLED
        assert catalog.entry(COPY_NAME).bundled and not catalog.entry(BUNDLED).bundled  # not in this folder

    def test_the_default_is_the_weights_given(self, folder: Path) -> None:
        catalog = ModelCatalog(folder / "fer_tuned.safetensors", folder=folder)
        assert catalog.default == TUNED_NAME
        assert catalog.names() == [TUNED_NAME, COPY_NAME]

    def test_the_bundled_catalog_holds_the_bundled_model(self) -> None:
        catalog = ModelCatalog()
        assert catalog.default == BUNDLED and BUNDLED in catalog.names()
        assert catalog.entry().weights == DEFAULT_WEIGHTS and catalog.entry().bundled

    def test_the_vote_trained_model_ships_beside_the_default_and_says_what_trained_it(self, faces) -> None:
        catalog = ModelCatalog()
        assert catalog.default == BUNDLED and "fer_votes" in catalog.names()
        votes = catalog.entry("fer_votes")
        assert votes.bundled and votes.trained_on == "corrections (vote distributions)"
        assert catalog.entry().trained_on == "original labels"
        figures = votes.card["training"]["val_by_labels"]
        assert set(figures) == {"original", "ferplus"} and figures["ferplus"]["accuracy"] > 0.8
        # Trained from scratch, its epoch chosen on the FER+ labels, int8 calibrated on training faces; the card says so.
        assert votes.card["training"]["init"] is None and votes.card["training"]["selected_on"] == "ferplus"
        assert votes.card["onnx"]["onnx-int8"]["calibration"] == "2000 faces of train (seed 0)"
        # Served from its own ONNX file: its answers are its own, not the default model's.
        mine, default = catalog.predictor("fer_votes").predict_faces(faces), catalog.predictor().predict_faces(faces)
        assert mine.shape == default.shape == (len(faces), 7) and np.allclose(mine.sum(axis=1), 1, atol=1e-4)
        assert not np.allclose(mine, default, atol=1e-3)

    @pytest.mark.slow
    @needs_shared
    def test_the_vote_models_val_figures_on_both_label_sets_are_those_of_its_card(self) -> None:
        from annotate.ferplus import ferplus_labels_for
        from fer_core.labels import EMOTIONS

        val = load_faces(SHARED_FER / "val", progress=False)
        ferplus = ferplus_labels_for(val, SHARED_FER.parent / "ferplus" / "fer2013_votes.csv", SHARED_FER)
        predictor = ModelCatalog().predictor("fer_votes")
        predicted = np.asarray([EMOTIONS.index(predictor.labels[k]) for k in
                                predictor.predict_faces(val.images).argmax(1)])
        figures = ModelCatalog().entry("fer_votes").card["checks"]["val_by_labels"]  # as served
        has_ferplus = ferplus >= 0
        assert has_ferplus.sum() == figures["ferplus"]["faces"] == 3371
        # Another CPU may round a borderline face the other way: a face or two of slack.
        assert (predicted[has_ferplus] == ferplus[has_ferplus]).mean() == pytest.approx(
            figures["ferplus"]["accuracy"], abs=2.01 / has_ferplus.sum())
        assert (predicted == val.labels).mean() == pytest.approx(figures["original"]["accuracy"],
                                                                 abs=2.01 / len(val))

    def test_unknown_name_lists_the_names(self, folder: Path) -> None:
        catalog = ModelCatalog(folder=folder)
        with pytest.raises(UnknownModel, match=f"no model named 'nonsense'; choose one of {COPY_NAME}, {BUNDLED}, "
                                               rf"fer_tuned \(1 step\)"):
            catalog.entry("nonsense")
        with pytest.raises(UnknownModel, match="choose one of"):
            catalog.predictor("nonsense")

    @pytest.mark.parametrize("name", ["", " leading space", "a<b>", "x" * 81, "tab\there", "quote'", "back`tick"])
    def test_names_a_page_could_misread_are_refused(self, name: str) -> None:
        with pytest.raises(FERError, match="a model name may hold"):
            check_model_name(name)

    def test_a_card_with_such_a_name_is_refused(self, folder: Path) -> None:
        card = json.loads(card_path(folder / "fer_copy.safetensors").read_text())
        card["name"] = "<script>"
        card_path(folder / "fer_copy.safetensors").write_text(json.dumps(card))
        with pytest.raises(FERError, match="a model name may hold"):
            ModelCatalog(folder=folder)


class TestPredictors:
    def test_one_predictor_per_model_each_its_own(self, folder: Path, faces: np.ndarray) -> None:
        catalog = ModelCatalog(folder=folder)
        copy, tuned = catalog.predictor(COPY_NAME), catalog.predictor(TUNED_NAME)
        assert catalog.predictor(COPY_NAME) is copy and catalog.predictor() is not copy
        assert copy.weights == folder / "fer_copy.safetensors" and copy.onnx_file.parent == folder
        np.testing.assert_allclose(copy.predict_faces(faces), Predictor().predict_faces(faces), atol=1e-6)
        # A training step later, the same faces get other probabilities (its own weights and temperature).
        assert tuned.temperature != copy.temperature
        assert np.abs(tuned.predict_faces(faces) - copy.predict_faces(faces)).max() > 0.05


class TestChanges:
    def test_add_set_default_remove(self, folder: Path, tuned_weights: Path,
                                    tmp_path: Path, faces: np.ndarray) -> None:
        catalog = ModelCatalog(folder=folder)
        trained = copy_model(tuned_weights, tmp_path / "trained_now")
        assert catalog.add(trained, name="retrained") == "retrained"
        assert catalog.names() == [BUNDLED, COPY_NAME, TUNED_NAME, "retrained"]
        assert not catalog.entry("retrained").bundled
        catalog.set_default("retrained")
        assert catalog.default == "retrained" and catalog.names()[0] == "retrained"
        assert catalog.predictor().weights == trained
        with pytest.raises(FERError, match="the default model and stays"):
            catalog.remove("retrained")
        catalog.set_default(BUNDLED)
        catalog.remove("retrained")
        assert "retrained" not in catalog.names()
        with pytest.raises(UnknownModel, match="choose one of"):
            catalog.entry("retrained")

    def test_bundled_models_stay(self, folder: Path, tuned_weights: Path) -> None:
        catalog = ModelCatalog(folder=folder)
        with pytest.raises(FERError, match="bundled model's name"):
            catalog.add(tuned_weights, name=COPY_NAME)
        with pytest.raises(FERError, match="is bundled and stays"):
            catalog.remove(COPY_NAME)
        with pytest.raises(UnknownModel):
            catalog.set_default("nonsense")
        with pytest.raises(FERError, match="a model name may hold"):
            catalog.add(tuned_weights, name="<b>bold</b>")

    def test_a_model_added_again_under_its_name_is_served_from_its_new_file(self, folder: Path, tmp_path: Path,
                                                                            faces: np.ndarray) -> None:
        catalog = ModelCatalog(folder=folder)
        first = copy_bundled(tmp_path / "a", name=None)
        catalog.add(first, name="latest")
        before = catalog.predictor("latest").predict_faces(faces)
        catalog.add(folder / "fer_tuned.safetensors", name="latest")
        assert catalog.predictor("latest").weights == folder / "fer_tuned.safetensors"
        assert np.abs(catalog.predictor("latest").predict_faces(faces) - before).max() > 0.05


class TestCommands:
    def test_weights_for_a_name(self, folder: Path) -> None:
        assert weights_for(None, None) is None
        assert weights_for("some.safetensors", None) == "some.safetensors"
        assert weights_for(None, TUNED_NAME, folder=folder) == str(folder / "fer_tuned.safetensors")
        with pytest.raises(FERError, match="not both"):
            weights_for("some.safetensors", TUNED_NAME)
        with pytest.raises(UnknownModel, match="choose one of"):
            weights_for(None, "nonsense", folder=folder)

    def test_evaluate_takes_a_bundled_model_by_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from fer_core.evaluate import get_args_parser, main

        by_name, by_file = tmp_path / "by_name.json", tmp_path / "by_file.json"
        assert main(get_args_parser().parse_args([str(SAMPLE_PATH), "--model", BUNDLED, "--json", str(by_name)])) == 0
        assert main(get_args_parser().parse_args([str(SAMPLE_PATH), "--weights", str(DEFAULT_WEIGHTS),
                                                  "--json", str(by_file)])) == 0
        assert json.loads(by_name.read_text()) == json.loads(by_file.read_text())
        assert main(get_args_parser().parse_args([str(SAMPLE_PATH), "--model", "nonsense"])) != 0
        assert "no model named 'nonsense'; choose one of fer_model" in capsys.readouterr().err
