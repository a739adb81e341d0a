"""The Predictor: faces in, calibrated probabilities out; photos in, boxes and labels out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.scenes import box_iou, compose_scene
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.model import create_model
from fer_core.predict import SINGLE_THREAD_BATCH, Predictor, top_two_gap
from fer_core.weights import WeightsError, load_model, save_model

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small randomly initialised model with a calibration temperature in its card."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    return save_model(create_model("fer_tiny").eval(), folder / "tiny.safetensors",
                      {"architecture": "fer_tiny", "labels": LABELS, "calibration": {"temperature": 1.5}})


@pytest.fixture(scope="module")
def sample_faces() -> np.ndarray:
    return load_faces(SAMPLE_PATH, progress=False).images[::10]


class TestFaces:
    @pytest.mark.parametrize("runtime", ["torch", "onnx"])
    def test_probabilities_sum_to_one_and_input_is_untouched(self, weights: Path, sample_faces: np.ndarray, runtime: str) -> None:
        predictor = Predictor(weights, runtime=runtime)
        before = sample_faces.copy()
        probs = predictor.predict_faces(sample_faces)
        assert probs.shape == (len(sample_faces), 7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(sample_faces, before)

    def test_runtimes_agree(self, weights: Path, sample_faces: np.ndarray) -> None:
        torch_logits = Predictor(weights, runtime="torch").logits(sample_faces)
        onnx_logits = Predictor(weights, runtime="onnx").logits(sample_faces)
        np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-3, rtol=1e-3)

    def test_int8_runtime_stays_close_and_is_cached(self, weights: Path, sample_faces: np.ndarray) -> None:
        from fer_core.config import default_cache_dir

        reference = Predictor(weights, runtime="onnx").logits(sample_faces)
        quantised = Predictor(weights, runtime="onnx-int8")
        assert quantised.runtime == "onnx-int8"
        logits = quantised.logits(sample_faces)
        assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.98
        assert list((default_cache_dir() / "models").glob("*-int8-*.onnx"))

    def test_temperature_from_the_card_softens_probabilities(self, weights: Path, sample_faces: np.ndarray) -> None:
        predictor = Predictor(weights, runtime="torch")
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
        predictor = Predictor(weights, runtime="torch", tta=True)
        np.testing.assert_allclose(predictor.logits(sample_faces), predictor.logits(sample_faces[:, :, ::-1].copy()), atol=1e-4)

    @pytest.mark.parametrize("runtime", ["torch", "onnx"])
    def test_flip_tta_averages_the_face_and_its_mirror(self, weights: Path, sample_faces: np.ndarray, runtime: str) -> None:
        # Faces and mirrors go through the model in one call: the halves must not get mixed up.
        plain = Predictor(weights, runtime=runtime, tta=False)
        mirrored = sample_faces[:, :, ::-1].copy()
        expected = (plain.logits(sample_faces) + plain.logits(mirrored)) / 2
        with_tta = Predictor(weights, runtime=runtime, tta=True)
        np.testing.assert_allclose(with_tta.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(with_tta.logits(sample_faces[:1]), expected[:1], atol=1e-4)
        np.testing.assert_allclose(with_tta.logits(sample_faces, batch_size=3), expected, atol=1e-4)

    @pytest.mark.parametrize("runtime", ["torch", "onnx"])
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

    def test_the_card_sets_the_mirror_gate(self, weights: Path, tmp_path: Path) -> None:

        model, card = load_model(weights)
        gated = save_model(model, tmp_path / "gated.safetensors",
                           {**card, "inference": {"flip_tta": True, "flip_tta_gap": 0.3}})
        assert (Predictor(gated, runtime="torch").tta, Predictor(gated, runtime="torch").mirror_gap) == (True, 0.3)
        assert Predictor(gated, runtime="torch", mirror_gap=float("inf")).mirror_gap == float("inf")
        # A card without a gate (or with a null one) mirrors every face, as cards did before gates.
        assert Predictor(weights, runtime="torch", tta=True).mirror_gap == float("inf")
        every = save_model(model, tmp_path / "every.safetensors", {**card, "inference": {"flip_tta": True, "flip_tta_gap": None}})
        assert Predictor(every, runtime="torch").mirror_gap == float("inf")

    @pytest.mark.parametrize("gate", [0, -1.0, float("nan")])
    def test_a_gate_that_is_not_positive_is_refused(self, weights: Path, gate: float) -> None:
        with pytest.raises(ValueError, match="mirror_gap must be a positive number"):
            Predictor(weights, runtime="torch", tta=True, mirror_gap=gate)

    @pytest.mark.parametrize("runtime", ["torch", "onnx"])
    def test_shifted_views_average_the_faces_moved_and_mirrored(self, weights: Path, sample_faces: np.ndarray,
                                                                runtime: str) -> None:
        # The views drawn here in pixels, edges repeated, go through the plain model one by one.
        def moved(faces: np.ndarray, dx: int, dy: int) -> np.ndarray:
            padded = np.pad(faces, ((0, 0), (2, 2), (2, 2)), mode="edge")
            return padded[:, 2 + dy:50 + dy, 2 + dx:50 + dx].copy()

        plain = Predictor(weights, runtime=runtime, tta=False)
        drawn = [sample_faces, moved(sample_faces, 2, 0), moved(sample_faces, -2, 0)[:, :, ::-1].copy(),
                 moved(sample_faces, 0, 2)]
        expected = np.mean([plain.logits(faces) for faces in drawn], axis=0)
        # Views named without tta=True switch it on (the card of these weights has it off).
        views = Predictor(weights, runtime=runtime, tta_views=["left", "right_flip", "up"], mirror_gap=float("inf"))
        assert views.tta_views == ("left", "right_flip", "up")
        np.testing.assert_allclose(views.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(views.logits(sample_faces[:1]), expected[:1], atol=1e-4)
        np.testing.assert_allclose(views.logits(sample_faces, batch_size=3), expected, atol=1e-4)
        # "left" is the face moved left: its column 2 is the view's column 0, its last column repeated.
        assert (drawn[1][:, :, 0] == sample_faces[:, :, 2]).all()
        assert (drawn[1][:, :, -1] == sample_faces[:, :, -1]).all()

    def test_the_card_names_the_views_and_unknown_ones_are_refused(self, weights: Path, tmp_path: Path) -> None:
        model, card = load_model(weights)
        shifted = save_model(model, tmp_path / "views.safetensors",
                             {**card, "inference": {"flip_tta": True, "tta_views": ["flip", "left", "right"]}})
        assert Predictor(shifted, runtime="torch").tta_views == ("flip", "left", "right")
        assert Predictor(shifted, runtime="torch", tta=False).tta_views == ()
        # Cards from before views: the mirror alone.
        assert Predictor(weights, runtime="torch", tta=True).tta_views == ("flip",)
        for views, message in [(["flip", "sideways"], "unknown test-time view"), ("flip", "must be a list"),
                               (["flip", 3], "must be a list"),
                               (["left", "left"], "names a view twice")]:
            with pytest.raises(ValueError, match=message):
                Predictor(weights, runtime="torch", tta=True, tta_views=views)
        for views, message in [(["mirror"], "unknown test-time view"), (None, "must be a list")]:
            broken = save_model(model, tmp_path / "broken.safetensors",
                                {**card, "inference": {"flip_tta": True, "tta_views": views}})
            with pytest.raises(WeightsError, match=f"model card of broken.safetensors is broken: .*{message}"):
                Predictor(broken, runtime="torch")

    @pytest.mark.parametrize("runtime", ["torch", "onnx"])
    def test_third_pass_adds_views_to_the_faces_the_second_leaves_unclear(
            self, weights: Path, sample_faces: np.ndarray, runtime: str) -> None:
        def moved(faces: np.ndarray, dx: int) -> np.ndarray:
            padded = np.pad(faces, ((0, 0), (0, 0), (2, 2)), mode="edge")
            return padded[:, :, 2 + dx:50 + dx].copy()

        plain = Predictor(weights, runtime=runtime, tta=False)
        logits = plain.logits(sample_faces)
        mirror = plain.logits(sample_faces[:, :, ::-1].copy())
        shifts = plain.logits(moved(sample_faces, 2)) + plain.logits(moved(sample_faces, -2))

        def halfway(values: np.ndarray) -> float:  # a gate with half the values under it, none on it
            ordered = np.sort(values)
            return float(ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2

        second_gate = halfway(top_two_gap(logits))
        second = top_two_gap(logits) < second_gate
        after_second = np.where(second[:, None], (logits + mirror) / 2, logits)
        third_gate = halfway(top_two_gap(after_second[second]))
        third = second & (top_two_gap(after_second) < third_gate)
        assert 0 < third.sum() < second.sum() < len(second)
        expected = np.where(third[:, None], (logits + mirror + shifts) / 4, after_second)
        staged = Predictor(weights, runtime=runtime, tta_views=["flip"], third_pass_views=["left", "right"],
                           mirror_gap=second_gate, third_pass_gap=third_gate)
        assert (staged.tta_views, staged.third_pass_views) == (("flip",), ("left", "right"))
        np.testing.assert_allclose(staged.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(staged.logits(sample_faces, batch_size=3), expected, atol=1e-4)
        np.testing.assert_allclose(np.concatenate([staged.logits(face) for face in sample_faces]), expected, atol=1e-4)
        # Every face: every view of both passes, whatever the third gate.
        every = Predictor(weights, runtime=runtime, tta_views=["flip"], third_pass_views=["left", "right"],
                          mirror_gap=float("inf"), third_pass_gap=third_gate)
        np.testing.assert_allclose(every.logits(sample_faces), (logits + mirror + shifts) / 4, atol=1e-4)

    def test_the_card_names_the_third_pass_and_bad_ones_are_refused(self, weights: Path, tmp_path: Path) -> None:
        model, card = load_model(weights)
        staged = save_model(model, tmp_path / "staged.safetensors", {**card, "inference": {
            "flip_tta": True, "second_pass_gap": 0.5, "third_pass_views": ["left", "right"], "third_pass_gap": 0.2}})
        predictor = Predictor(staged, runtime="torch")
        assert (predictor.tta_views, predictor.third_pass_views) == (("flip",), ("left", "right"))
        assert (predictor.mirror_gap, predictor.third_pass_gap) == (0.5, 0.2)
        assert Predictor(staged, runtime="torch", tta=False).third_pass_views == ()
        # Views named in code replace the card's, both passes: the third pass went with the card's.
        assert Predictor(staged, runtime="torch", tta_views=["left"]).third_pass_views == ()
        assert Predictor(staged, runtime="torch", tta_views=["up"], third_pass_views=["left"]).third_pass_views == ("left",)
        # Without a third gate every face of the second pass gets the third; without views, no third pass.
        assert Predictor(weights, runtime="torch", tta=True).third_pass_views == ()
        ungated = save_model(model, tmp_path / "ungated.safetensors",
                             {**card, "inference": {"flip_tta": True, "third_pass_views": ["up"]}})
        assert Predictor(ungated, runtime="torch").third_pass_gap == float("inf")
        with pytest.raises(ValueError, match=r"third_pass_views \['flip'\] repeat views of the second pass"):
            Predictor(weights, runtime="torch", tta=True, third_pass_views=["flip"])
        with pytest.raises(ValueError, match="third_pass_gap must be a positive number"):
            Predictor(staged, runtime="torch", third_pass_gap=0)
        for inference, message in [({"third_pass_views": ["flip"]}, "repeat views of the second pass"),
                                   ({"third_pass_views": "left"}, "third_pass_views must be a list"),
                                   ({"third_pass_views": ["left", "left"]}, "third_pass_views names a view twice")]:
            broken = save_model(model, tmp_path / "broken.safetensors", {**card, "inference": {"flip_tta": True, **inference}})
            with pytest.raises(WeightsError, match=f"model card of broken.safetensors is broken: .*{message}"):
                Predictor(broken, runtime="torch")

    def test_top_two_gap(self) -> None:
        logits = np.array([[0.0, 3.0, 1.0], [2.0, 2.0, -1.0], [-5.0, -4.0, -7.0]], dtype=np.float32)
        np.testing.assert_allclose(top_two_gap(logits), [2.0, 0.0, 1.0])

    def test_features(self, weights: Path, sample_faces: np.ndarray) -> None:
        predictor = Predictor(weights, runtime="torch")
        assert predictor.features(sample_faces).shape == (len(sample_faces), predictor.model.num_features)

    def test_bad_faces(self, weights: Path) -> None:
        predictor = Predictor(weights, runtime="torch")
        with pytest.raises(ValueError, match="must be uint8"):
            predictor.predict_faces(np.zeros((2, 48, 48), dtype=np.float32))
        with pytest.raises(ValueError, match="must be 48x48"):
            predictor.predict_faces(np.zeros((2, 64, 64), dtype=np.uint8))
        with pytest.raises(ValueError, match="unknown runtime"):
            Predictor(weights, runtime="tensorrt")


def _ensemble(folder: Path, *, seeds: tuple[int, ...] = (0, 1, 2), inference: dict | None = None) -> Path:
    """Small random models saved side by side, the first bundling the others as its ensemble members."""
    from fer_core.weights import file_sha256

    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        paths.append(save_model(create_model("fer_tiny").eval(), folder / f"m{seed}.safetensors",
                                {"architecture": "fer_tiny", "labels": LABELS}))
    model, _ = load_model(paths[0])
    members = [{"file": path.name, "sha256": file_sha256(path)} for path in paths[1:]]
    return save_model(model, paths[0], {"architecture": "fer_tiny", "labels": LABELS,
                                        "inference": {"members": members, **(inference or {})}})


class TestEnsemble:
    """A card may bundle other models, averaged with it on the faces its first answer is unclear about."""

    @pytest.mark.parametrize(("runtime", "tta"), [("torch", False), ("torch", True), ("onnx", True)])
    def test_every_face_averages_every_model_and_mirror(self, tmp_path: Path, sample_faces: np.ndarray,
                                                        runtime: str, tta: bool) -> None:
        head = _ensemble(tmp_path)
        mirrored = sample_faces[:, :, ::-1].copy()
        views = []
        for name in ("m0", "m1", "m2"):
            alone = Predictor(tmp_path / f"{name}.safetensors", runtime=runtime, tta=False, ensemble=False)
            views += [alone.logits(sample_faces)] + ([alone.logits(mirrored)] if tta else [])
        expected = np.mean(views, axis=0)
        ensemble = Predictor(head, runtime=runtime, tta=tta, mirror_gap=float("inf"))
        assert len(ensemble.members) == 2 and ensemble.second_pass and "(+2 in ensemble)" in ensemble.model_name
        np.testing.assert_allclose(ensemble.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(ensemble.logits(sample_faces, batch_size=3), expected, atol=1e-4)
        np.testing.assert_allclose(ensemble.logits(sample_faces[:1]), expected[:1], atol=1e-4)
        if runtime == "onnx":
            # The models take turns on the same cores: none of their sessions may keep its workers
            # spinning after a call (they starved the next model's call), while a lone model's may.
            def spinning(runtime_) -> str:
                return runtime_.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

            assert [spinning(r) for r in ensemble._runtimes] == ["0", "0", "0"]
            alone = Predictor(head, runtime="onnx", ensemble=False)
            with pytest.raises(RuntimeError, match="does not have configuration"):  # the default: spinning
                spinning(alone._runtime)

    def test_the_gate_sends_only_unclear_faces_to_the_other_models(self, tmp_path: Path, sample_faces: np.ndarray) -> None:
        head = _ensemble(tmp_path, seeds=(0, 1), inference={"flip_tta": True})
        first = Predictor(head, runtime="onnx", tta=False, ensemble=False)
        logits = first.logits(sample_faces)
        every = Predictor(head, runtime="onnx", mirror_gap=float("inf")).logits(sample_faces)
        gaps = np.sort(top_two_gap(logits))
        gate = float(gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2
        unclear = top_two_gap(logits) < gate
        assert 0 < unclear.sum() < len(unclear)
        expected = np.where(unclear[:, None], every, logits)
        gated = Predictor(head, runtime="onnx", mirror_gap=gate)
        np.testing.assert_allclose(gated.logits(sample_faces), expected, atol=1e-4)
        np.testing.assert_allclose(np.concatenate([gated.logits(face) for face in sample_faces]), expected, atol=1e-4)
        # The card's gate: second_pass_gap, read before the older flip_tta_gap.
        model, card = load_model(head)
        card["inference"].update({"second_pass_gap": gate, "flip_tta_gap": 0.01})
        save_model(model, head, card)
        np.testing.assert_allclose(Predictor(head, runtime="onnx").logits(sample_faces), expected, atol=1e-4)

    def test_ensemble_off_is_the_first_model_alone(self, tmp_path: Path, sample_faces: np.ndarray) -> None:
        head = _ensemble(tmp_path)
        alone = Predictor(head, runtime="torch", ensemble=False)
        assert alone.members == [] and not alone.second_pass
        np.testing.assert_array_equal(alone.logits(sample_faces), Predictor(tmp_path / "m0.safetensors", runtime="torch",
                                                                            ensemble=False).logits(sample_faces))
        # Without members or mirror there is no second pass, whatever the gate.
        np.testing.assert_array_equal(Predictor(head, runtime="torch", ensemble=False, mirror_gap=0.5).logits(sample_faces),
                                      alone.logits(sample_faces))

    def test_a_changed_or_missing_member_is_refused(self, tmp_path: Path) -> None:
        from fer_core.weights import WeightsError

        head = _ensemble(tmp_path)
        member = tmp_path / "m2.safetensors"
        original = member.read_bytes()
        member.write_bytes(original[:-4] + bytes(4))  # same size, other weights
        with pytest.raises(WeightsError, match=r"m2.safetensors is not the file m0.safetensors was bundled with"):
            Predictor(head, runtime="torch")
        member.unlink()
        with pytest.raises(WeightsError, match="bundled with m2.safetensors, which is missing beside it"):
            Predictor(head, runtime="torch")
        # This model alone still loads.
        assert Predictor(head, runtime="torch", ensemble=False).members == []

    @pytest.mark.parametrize("name", ["../m1.safetensors", "/tmp/m1.safetensors", "sub/m1.safetensors", "..", "", None])
    def test_a_member_outside_the_weights_folder_is_refused(self, tmp_path: Path, name: str | None) -> None:
        from fer_core.weights import WeightsError, file_sha256

        head = _ensemble(tmp_path, seeds=(0, 1))
        model, card = load_model(head)
        card["inference"]["members"] = [{"file": name, "sha256": file_sha256(tmp_path / "m1.safetensors")}]
        save_model(model, head, card)
        with pytest.raises(WeightsError, match="a member must be named by a file name beside it"):
            Predictor(head, runtime="torch")

    def test_a_member_with_other_labels_is_refused(self, tmp_path: Path) -> None:
        from fer_core.weights import WeightsError, file_sha256

        head = _ensemble(tmp_path, seeds=(0,))
        torch.manual_seed(1)
        six = save_model(create_model("fer_tiny", num_classes=6).eval(), tmp_path / "six.safetensors",
                         {"architecture": "fer_tiny", "labels": LABELS[:6]})
        model, card = load_model(head)
        card["inference"]["members"] = [{"file": six.name, "sha256": file_sha256(six)}]
        save_model(model, head, card)
        with pytest.raises(WeightsError, match="six.safetensors has labels"):
            Predictor(head, runtime="torch")


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
    np.testing.assert_allclose(Predictor(half, runtime="torch").logits(sample_faces),
                               Predictor(weights, runtime="torch").logits(sample_faces), atol=0.02)


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
        predictor = Predictor(weights, runtime="torch")
        noise = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
        found = predictor.predict_image(noise)
        assert len(found) == 1 and found[0].box == (0, 0, 48, 48) and found[0].detector_score is None
        np.testing.assert_array_equal(found[0].face, noise)
        direct = predictor.predict_faces(noise)[0]
        assert found[0].probabilities == pytest.approx(dict(zip(LABELS, direct.tolist())), abs=1e-6)

    def test_a_photo_without_faces_gives_nothing(self, weights: Path) -> None:
        gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
        assert Predictor(weights, runtime="torch").predict_image(gradient) == []

    def test_whole_image_forced(self, weights: Path) -> None:
        gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
        found = Predictor(weights, runtime="torch").predict_image(gradient, whole_image=True)
        assert len(found) == 1 and found[0].box == (0, 0, 640, 480)
