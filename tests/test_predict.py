"""The Predictor: faces in, calibrated probabilities out; photos in, boxes and labels out.

It runs the model in ONNX Runtime, from the ONNX file the card names (``python -m tools.export_onnx``)
or, where the card names none, from an export made on load with PyTorch (the reference here).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.scenes import box_iou, compose_scene
from fer_core._torch import TorchMissing
from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.export import export_onnx
from fer_core.model import create_model
from fer_core.predict import SINGLE_THREAD_BATCH, Predictor, top_two_gap
from fer_core.weights import WeightsError, card_path, load_model, save_model
from tools.export_onnx import get_args_parser
from tools.export_onnx import main as export_main

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def bundle_onnx(weights: Path, *runtimes: str) -> Path:
    """``weights`` with their ONNX files for ``runtimes`` written beside them and named in their card."""
    for runtime in runtimes:
        assert export_main(get_args_parser().parse_args([str(weights), "--runtime", runtime])) == 0
    return weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small randomly initialised model with a calibration temperature in its card, and its ONNX files."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    path = save_model(create_model("fer_tiny").eval(), folder / "tiny.safetensors",
                      {"architecture": "fer_tiny", "labels": LABELS, "calibration": {"temperature": 1.5}})
    return bundle_onnx(path, "onnx", "onnx-int8")


@pytest.fixture(scope="module")
def sample_faces() -> np.ndarray:
    return load_faces(SAMPLE_PATH, progress=False).images[::10]


@pytest.fixture(scope="module")
def torch_model(weights: Path) -> torch.nn.Module:
    return load_model(weights)[0]


def torch_logits(model: torch.nn.Module, faces: np.ndarray) -> np.ndarray:
    from fer_core.export import normalise_faces

    with torch.inference_mode():
        return model(torch.from_numpy(normalise_faces(faces))).numpy()


def with_card(weights: Path, folder: Path, name: str, **changes) -> Path:
    """A copy of ``weights`` whose card has ``changes`` (no ONNX file: exported on load)."""
    model, card = load_model(weights)
    return save_model(model, folder / f"{name}.safetensors", {**card, **changes})


class TestFaces:
    @pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
    def test_probabilities_sum_to_one_and_input_is_untouched(self, weights: Path, sample_faces: np.ndarray,
                                                             runtime: str) -> None:
        predictor = Predictor(weights, runtime=runtime)
        assert predictor.runtime == runtime and predictor.onnx_file is not None
        before = sample_faces.copy()
        probs = predictor.predict_faces(sample_faces)
        assert probs.shape == (len(sample_faces), 7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(sample_faces, before)

    def test_onnx_gives_the_logits_of_the_pytorch_model(self, weights: Path, torch_model, sample_faces) -> None:
        logits = Predictor(weights, runtime="onnx", tta=False).logits(sample_faces)
        np.testing.assert_allclose(logits, torch_logits(torch_model, sample_faces), atol=1e-4, rtol=1e-4)

    def test_int8_runtime_stays_close_and_writes_no_cache(self, weights: Path, sample_faces: np.ndarray,
                                                          tmp_path: Path) -> None:
        from fer_core.config import default_cache_dir

        reference = Predictor(weights, runtime="onnx").logits(sample_faces)
        quantised = Predictor(weights, runtime="onnx-int8")
        assert quantised.runtime == "onnx-int8"
        logits = quantised.logits(sample_faces)
        assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.98
        # Quantised on load too (weights without an int8 file): the same model, and nothing on disk.
        loaded = Predictor(with_card(weights, tmp_path, "no_onnx"), runtime="onnx-int8")
        assert loaded.onnx_file is None
        np.testing.assert_array_equal(loaded.logits(sample_faces), logits)
        assert not (default_cache_dir() / "models").exists()

    def test_temperature_from_the_card_softens_probabilities(self, weights: Path, sample_faces: np.ndarray) -> None:
        predictor = Predictor(weights, runtime="onnx")
        logits = predictor.logits(sample_faces)
        raw = torch.softmax(torch.from_numpy(logits), 1).numpy()
        probs = predictor.predict_faces(sample_faces)
        assert predictor.temperature == 1.5
        np.testing.assert_array_equal(probs.argmax(1), raw.argmax(1))
        assert (probs.max(1) <= raw.max(1) + 1e-6).all()

    @pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
    def test_batch_equals_one_by_one(self, weights: Path, sample_faces: np.ndarray, runtime: str) -> None:
        # Batches of up to SINGLE_THREAD_BATCH faces run in a one-thread session, larger ones in the
        # multi-thread one: both must give the same answers.
        predictor = Predictor(weights, runtime=runtime, threads=2)
        assert len(sample_faces) > SINGLE_THREAD_BATCH
        batched = predictor.predict_faces(sample_faces)
        single = np.concatenate([predictor.predict_faces(face) for face in sample_faces])
        np.testing.assert_allclose(batched, single, atol=1e-5)

    def test_flip_tta_is_symmetric(self, weights: Path, sample_faces: np.ndarray) -> None:
        predictor = Predictor(weights, runtime="onnx", tta=True)
        np.testing.assert_allclose(predictor.logits(sample_faces), predictor.logits(sample_faces[:, :, ::-1].copy()),
                                   atol=1e-4)

    @pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
    def test_flip_tta_averages_the_face_and_its_mirror(self, weights: Path, sample_faces: np.ndarray,
                                                       runtime: str) -> None:
        # Faces and mirrors go through the model in one call: the halves must not get mixed up.
        plain = Predictor(weights, runtime=runtime, tta=False)
        mirrored = sample_faces[:, :, ::-1].copy()
        expected = (plain.logits(sample_faces) + plain.logits(mirrored)) / 2
        with_tta = Predictor(weights, runtime=runtime, tta=True)
        np.testing.assert_allclose(with_tta.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(with_tta.logits(sample_faces[:1]), expected[:1], atol=1e-4)
        np.testing.assert_allclose(with_tta.logits(sample_faces, batch_size=3), expected, atol=1e-4)

    @pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
    def test_gated_mirror_averages_only_the_unclear_faces(self, weights: Path, sample_faces: np.ndarray,
                                                          runtime: str) -> None:
        plain = Predictor(weights, runtime=runtime, tta=False)
        logits = plain.logits(sample_faces)
        both = (logits + plain.logits(sample_faces[:, :, ::-1].copy())) / 2
        # A gate halfway between two neighbouring gaps: half the faces under it, none on it.
        gaps = np.sort(top_two_gap(logits))
        gate = float(gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2
        unclear = top_two_gap(logits) < gate
        assert 0 < unclear.sum() < len(unclear)
        expected = np.where(unclear[:, None], both, logits)
        gated = Predictor(weights, runtime=runtime, tta=True, mirror_gap=gate)
        np.testing.assert_allclose(gated.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(gated.logits(sample_faces, batch_size=3), expected, atol=1e-4)
        np.testing.assert_allclose(np.concatenate([gated.logits(face) for face in sample_faces]), expected, atol=1e-4)

    def test_the_card_sets_mirror_gate_and_runtime(self, weights: Path, tmp_path: Path) -> None:
        gated = with_card(weights, tmp_path, "gated",
                          inference={"flip_tta": True, "second_pass_gap": 0.3, "runtime": "onnx-int8"})
        predictor = Predictor(gated)
        assert (predictor.tta, predictor.mirror_gap, predictor.runtime) == (True, 0.3, "onnx-int8")
        assert Predictor(gated, mirror_gap=float("inf"), runtime="onnx").mirror_gap == float("inf")
        # A card without a gate (or with a null one) mirrors every face; without a runtime: float32.
        unset = Predictor(weights, tta=True)
        assert (unset.mirror_gap, unset.runtime) == (float("inf"), "onnx")
        every = with_card(weights, tmp_path, "every", inference={"flip_tta": True, "second_pass_gap": None})
        assert Predictor(every, runtime="onnx").mirror_gap == float("inf")

    @pytest.mark.parametrize("gate", [0, -1.0, float("nan")])
    def test_a_gate_that_is_not_positive_is_refused(self, weights: Path, gate: float) -> None:
        with pytest.raises(ValueError, match="mirror_gap must be a positive number"):
            Predictor(weights, runtime="onnx", tta=True, mirror_gap=gate)

    @pytest.mark.parametrize("inference", [
        {"flip_tta": True, "tta_views": ["flip", "left"]},
        {"flip_tta": True, "third_pass_views": ["left", "right"], "third_pass_gap": 0.2},
        {"members": [{"file": "other.safetensors", "sha256": "0" * 64}]},
    ])
    def test_cards_asking_for_more_passes_or_models_are_refused(self, weights: Path, tmp_path: Path,
                                                                inference: dict) -> None:
        card = json.loads(card_path(weights).read_text())
        shutil.copy(weights, tmp_path / "old.safetensors")
        card_path(tmp_path / "old.safetensors").write_text(json.dumps({**card, "inference": inference}))
        with pytest.raises(WeightsError, match="asks for inference this version does not serve"):
            Predictor(tmp_path / "old.safetensors")

    def test_the_shape_of_the_bundled_cards_inference_is_served(self, weights: Path, tmp_path: Path) -> None:
        # As bundle_model writes it: the mirror named as the one view, no third pass, no members.
        served = with_card(weights, tmp_path, "served", inference={
            "flip_tta": True, "tta_views": ["flip"], "third_pass_views": [], "members": [], "second_pass_gap": 0.5})
        assert Predictor(served, runtime="onnx").mirror_gap == 0.5

    def test_a_card_naming_another_runtime_is_refused(self, weights: Path, tmp_path: Path) -> None:
        old = with_card(weights, tmp_path, "torch_runtime", inference={"runtime": "torch"})
        with pytest.raises(WeightsError,
                           match=r"names the runtime 'torch'; this version serves \['onnx', 'onnx-int8'\]"):
            Predictor(old)

    def test_top_two_gap(self) -> None:
        logits = np.array([[0.0, 3.0, 1.0], [2.0, 2.0, -1.0], [-5.0, -4.0, -7.0]], dtype=np.float32)
        np.testing.assert_allclose(top_two_gap(logits), [2.0, 0.0, 1.0])

    def test_feature_maps_and_features_are_those_of_the_pytorch_model(self, weights: Path, torch_model,
                                                                      sample_faces: np.ndarray) -> None:
        from fer_core.export import normalise_faces

        predictor = Predictor(weights, runtime="onnx")
        maps = predictor.feature_maps(sample_faces)
        with torch.inference_mode():
            expected = torch_model.forward_features(torch.from_numpy(normalise_faces(sample_faces)))
            pooled = torch_model.forward_head(expected, pre_logits=True).numpy()
        np.testing.assert_allclose(maps, expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(predictor.features(sample_faces), pooled, atol=1e-4)
        assert predictor.features(sample_faces).shape == (len(sample_faces), torch_model.num_features)
        # The classifier the saliency maps use is the model's linear layer.
        np.testing.assert_array_equal(predictor.model.classifier, torch_model.fc.weight.detach().numpy())

    def test_bad_faces(self, weights: Path) -> None:
        predictor = Predictor(weights, runtime="onnx")
        with pytest.raises(ValueError, match="must be uint8"):
            predictor.predict_faces(np.zeros((2, 48, 48), dtype=np.float32))
        with pytest.raises(ValueError, match="must be 48x48"):
            predictor.predict_faces(np.zeros((2, 64, 64), dtype=np.uint8))
        with pytest.raises(ValueError, match="unknown runtime"):
            Predictor(weights, runtime="torch")


class TestBundledOnnx:
    """The ONNX file a card names: written by tools.export_onnx, checked by sha256 on load."""

    def test_the_card_names_each_file_with_its_sha256(self, weights: Path) -> None:
        from fer_core.weights import file_sha256

        entries = json.loads(card_path(weights).read_text())["onnx"]
        assert set(entries) == {"onnx", "onnx-int8"}
        assert [entries[r]["file"] for r in ("onnx", "onnx-int8")] == ["tiny.onnx", "tiny.int8.onnx"]
        for entry in entries.values():
            assert entry["sha256"] == file_sha256(weights.parent / entry["file"])
            assert entry["weights_sha256"] == file_sha256(weights)
            assert entry["outputs"] == ["logits", "features"]

    @pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
    def test_the_file_holds_the_export_made_on_load(self, weights: Path, runtime: str) -> None:
        predictor = Predictor(weights, runtime=runtime)
        assert predictor.onnx_file == weights.with_name("tiny.int8.onnx" if runtime == "onnx-int8" else "tiny.onnx")
        assert predictor.onnx_file.read_bytes() == export_onnx(weights, runtime=runtime)

    def _copy(self, weights: Path, folder: Path) -> Path:
        for file in weights.parent.glob("tiny*"):
            shutil.copy(file, folder / file.name)
        return folder / weights.name

    def test_a_changed_or_missing_file_is_refused(self, weights: Path, tmp_path: Path) -> None:
        copy = self._copy(weights, tmp_path)
        onnx_file = tmp_path / "tiny.int8.onnx"
        onnx_file.write_bytes(onnx_file.read_bytes()[:-4] + bytes(4))
        with pytest.raises(WeightsError,
                           match=r"tiny.int8.onnx is not the file tiny.json names \(its sha256 differs\)"):
            Predictor(copy, runtime="onnx-int8")
        onnx_file.unlink()
        with pytest.raises(WeightsError, match=r"names tiny.int8.onnx, which is missing beside tiny.safetensors: "
                                               r"copy it there, or export it again with `python -m tools.export_onnx"):
            Predictor(copy, runtime="onnx-int8")
        assert Predictor(copy, runtime="onnx").onnx_file == tmp_path / "tiny.onnx"  # the other file still serves

    def test_a_file_exported_from_other_weights_is_refused(self, weights: Path, tmp_path: Path) -> None:
        copy = self._copy(weights, tmp_path)
        torch.manual_seed(1)
        other = save_model(create_model("fer_tiny").eval(), tmp_path / "other.safetensors",
                           {"architecture": "fer_tiny", "labels": LABELS})
        shutil.copy(other, copy)  # new weights under the old card
        with pytest.raises(WeightsError, match="tiny.onnx was exported from other weights than tiny.safetensors"):
            Predictor(copy, runtime="onnx")

    @pytest.mark.parametrize("name", ["../tiny.onnx", "/tmp/tiny.onnx", "sub/tiny.onnx", "..", "", None])
    def test_a_file_outside_the_weights_folder_is_refused(self, weights: Path, tmp_path: Path, name) -> None:
        copy = self._copy(weights, tmp_path)
        card = json.loads(card_path(copy).read_text())
        card["onnx"]["onnx"]["file"] = name
        card_path(copy).write_text(json.dumps(card))
        with pytest.raises(WeightsError, match="an ONNX file must be named by a file name beside it"):
            Predictor(copy, runtime="onnx")

    def test_saving_weights_drops_the_cards_onnx_entry(self, weights: Path, tmp_path: Path) -> None:
        model, card = load_model(weights)
        assert "onnx" in card
        saved = save_model(model, tmp_path / "saved.safetensors", card)
        assert "onnx" not in json.loads(card_path(saved).read_text())
        assert Predictor(saved, runtime="onnx").onnx_file is None

    def test_without_torch_a_file_serves_and_an_export_says_how_to_add_it(self, weights: Path, tmp_path: Path,
                                                                          monkeypatch, sample_faces) -> None:
        bare = with_card(weights, tmp_path, "bare")
        expected = Predictor(weights, runtime="onnx").logits(sample_faces)
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
        np.testing.assert_array_equal(Predictor(weights, runtime="onnx").logits(sample_faces), expected)
        with pytest.raises(TorchMissing, match=r"needs PyTorch.*pip install -r requirements-train.txt") as error:
            Predictor(bare, runtime="onnx")
        assert isinstance(error.value, FERError) and isinstance(error.value, ImportError)
        with pytest.raises(TorchMissing, match="pip install -r requirements-train.txt"):
            load_model(weights)

    def test_the_tool_refuses_an_unknown_card_runtime(self, weights: Path, tmp_path: Path, capsys) -> None:
        odd = with_card(weights, tmp_path, "odd", inference={"runtime": "tensorrt"})
        assert export_main(get_args_parser().parse_args([str(odd)])) == 2
        assert "names the runtime 'tensorrt'" in capsys.readouterr().err


def test_half_precision_storage_halves_the_file_and_loads_as_float32(weights: Path, tmp_path: Path,
                                                                   sample_faces: np.ndarray) -> None:
    model, card = load_model(weights)
    half = save_model(model, tmp_path / "half.safetensors", card, float_dtype=torch.float16)
    assert half.stat().st_size < 0.55 * weights.stat().st_size
    loaded, _ = load_model(half)
    for (name, original), (_, restored) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert restored.dtype == original.dtype, name
        expected = original.half().to(original.dtype) if original.is_floating_point() else original
        assert torch.equal(restored, expected), name
    np.testing.assert_allclose(Predictor(half, runtime="onnx").logits(sample_faces),
                               Predictor(weights, runtime="onnx").logits(sample_faces), atol=0.02)


class TestPhotos:
    def test_every_face_of_a_composed_photo(self, weights: Path) -> None:
        faces = load_faces(SAMPLE_PATH, progress=False).images
        photo, squares = compose_scene([faces[3], faces[60], faces[200]], seed=1, face_size=(120, 180))
        found = Predictor(weights, runtime="onnx").predict_image(photo)
        assert len(found) == 3
        areas = [f.box[2] * f.box[3] for f in found]
        assert areas == sorted(areas, reverse=True)
        for square in squares:
            assert max(box_iou(f.box, square) for f in found) >= 0.3
        for face in found:
            assert face.label in LABELS and face.confidence == max(face.probabilities.values())
            assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert face.face.shape == (48, 48) and 0.6 <= face.detector_score <= 1.0

    def test_a_48x48_face_is_used_whole_when_no_face_is_found(self, weights: Path, sample_faces: np.ndarray) -> None:
        predictor = Predictor(weights, runtime="onnx")
        noise = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
        found = predictor.predict_image(noise)
        assert len(found) == 1 and found[0].box == (0, 0, 48, 48) and found[0].detector_score is None
        np.testing.assert_array_equal(found[0].face, noise)
        direct = predictor.predict_faces(noise)[0]
        assert found[0].probabilities == pytest.approx(dict(zip(LABELS, direct.tolist())), abs=1e-6)

    def test_a_photo_without_faces_gives_nothing(self, weights: Path) -> None:
        gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
        assert Predictor(weights, runtime="onnx").predict_image(gradient) == []

    def test_whole_image_forced(self, weights: Path) -> None:
        gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
        found = Predictor(weights, runtime="onnx").predict_image(gradient, whole_image=True)
        assert len(found) == 1 and found[0].box == (0, 0, 640, 480)
