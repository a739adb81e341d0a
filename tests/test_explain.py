"""Saliency (CAM of the ONNX model's last feature maps, equal to Grad-CAM) and the drawing of
predictions on photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import needs_shared, read_grey, real_face_paths
from fer_core.draw import EMOTION_COLOURS, draw_predictions, fit_for_display, overlay_saliency
from fer_core.explain import class_activation_maps, grad_cam, heatmap_overlay
from fer_core.model import create_model
from fer_core.predict import FacePrediction, Predictor
from fer_core.weights import load_model


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The app's predictor: the bundled model as served (int8 ONNX, no PyTorch)."""
    return Predictor()


@pytest.fixture(scope="module")
def float_predictor() -> Predictor:
    """The bundled model in float32 ONNX (exported on load with PyTorch)."""
    return Predictor(runtime="onnx")


@pytest.fixture(scope="module")
def torch_model() -> torch.nn.Module:
    return load_model()[0]


class TestSaliency:
    def test_maps_are_48x48_in_unit_range(self, predictor: Predictor, val_faces) -> None:
        faces, _, _ = val_faces
        maps = grad_cam(predictor.model, faces[:8])
        assert maps.shape == (8, 48, 48) and maps.dtype == np.float32
        assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
        # Each map is scaled by its own peak.
        assert np.allclose(maps.reshape(8, -1).max(1), 1.0, atol=1e-5)

    def test_salient_pixels_matter_more_than_the_rest(self, predictor: Predictor, val_faces) -> None:
        """Occluding the quarter of the face the map marks hottest lowers the predicted class's
        probability more than occluding its coldest quarter (a deletion test, Petsiuk et al. 2018)."""
        faces, _, _ = val_faces
        probs = predictor.predict_faces(faces)
        top = probs.argmax(1)
        maps = grad_cam(predictor.model, faces, top)

        def occluded(hottest: bool) -> np.ndarray:
            out = faces.copy()
            for i in range(len(faces)):
                order = np.argsort(-maps[i].ravel() if hottest else maps[i].ravel())[: 48 * 48 // 4]
                flat = out[i].ravel()
                flat[order] = int(faces[i].mean())
            after = predictor.predict_faces(out)
            return probs[np.arange(len(faces)), top] - after[np.arange(len(faces)), top]

        assert occluded(hottest=True).mean() > occluded(hottest=False).mean() + 0.03

    def test_target_class_changes_the_map(self, predictor: Predictor, val_faces) -> None:
        faces, _, _ = val_faces
        happy = grad_cam(predictor.model, faces[:4], [3, 3, 3, 3])
        angry = grad_cam(predictor.model, faces[:4], [0, 0, 0, 0])
        assert not np.allclose(happy, angry)

    def test_the_default_target_is_the_plain_passs_top_class(self, predictor: Predictor, val_faces) -> None:
        faces, _, _ = val_faces
        plain = Predictor(tta=False).logits(faces[:8]).argmax(1)
        np.testing.assert_array_equal(grad_cam(predictor.model, faces[:8]), grad_cam(predictor.model, faces[:8], plain))

    @needs_shared
    @pytest.mark.parametrize("split", ["train", "val"])
    def test_onnx_cam_is_the_grad_cam_of_the_pytorch_model(self, float_predictor: Predictor, predictor: Predictor,
                                                           torch_model: torch.nn.Module, split: str) -> None:
        """On real faces, for the top class and for every other: the CAM of the float32 ONNX model's
        feature maps and classifier weights equals Grad-CAM computed by backpropagation; the int8
        model the app serves gives nearly the same maps."""
        faces = np.stack([read_grey(path) for path, _ in real_face_paths(split, 4)])
        top = float_predictor.predict_faces(faces).argmax(1)
        reference = grad_cam(torch_model, faces, top)
        np.testing.assert_allclose(grad_cam(float_predictor.model, faces, top), reference, atol=1e-4)
        other = (top + 1 + np.arange(len(faces)) % 6) % 7  # another class for each face
        np.testing.assert_allclose(grad_cam(float_predictor.model, faces, other), grad_cam(torch_model, faces, other),
                                   atol=1e-4)
        served = grad_cam(predictor.model, faces, top)
        assert np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(served, reference)]) > 0.99
        assert np.abs(served - reference).max() < 0.1

    def test_cam_by_hand(self) -> None:
        # Two channels on a 2x2 grid; class 0 weighs channel 0 up and channel 1 down.
        maps = np.array([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]], dtype=np.float32)
        classifier = np.array([[1.0, -1.0], [0.0, 1.0]], dtype=np.float32)
        cam = class_activation_maps(maps, classifier, np.array([0]))
        assert cam.shape == (1, 48, 48) and cam[0, 0, 0] == pytest.approx(1.0) and cam[0, -1, -1] == 0.0
        assert class_activation_maps(maps, classifier, np.array([1]))[0, -1, -1] == pytest.approx(1.0)
        # A map no region pushes up is all zero, not NaN.
        assert (class_activation_maps(-maps, np.abs(classifier), np.array([1])) == 0).all()
        with pytest.raises(ValueError, match="must share C"):
            class_activation_maps(maps, classifier[:, :1], np.array([0]))

    def test_pytorch_model_is_left_as_it_was(self) -> None:
        model = create_model("fer_tiny").train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grad_cam(model, np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        # BatchNorm statistics are untouched: the map is computed in eval mode.
        assert all(torch.equal(before[k], after[k]) for k in before)

    @pytest.mark.parametrize("source", ["onnx", "torch"])
    def test_bad_targets_and_sizes_are_refused(self, source: str, predictor: Predictor) -> None:
        model = predictor.model if source == "onnx" else create_model("fer_tiny")
        faces = np.zeros((2, 48, 48), dtype=np.uint8)
        with pytest.raises(ValueError, match="one class index"):
            grad_cam(model, faces, [0, 9])
        with pytest.raises(ValueError, match="one class index"):
            grad_cam(model, faces, [0])
        with pytest.raises(ValueError, match="48x48"):
            grad_cam(model, np.zeros((2, 32, 32), dtype=np.uint8))
        assert grad_cam(model, np.zeros((0, 48, 48), dtype=np.uint8)).shape == (0, 48, 48)

    def test_overlay_colours_the_hot_region(self) -> None:
        face = np.full((48, 48), 128, dtype=np.uint8)
        cam = np.zeros((48, 48), dtype=np.float32)
        cam[:24] = 1.0
        picture = heatmap_overlay(face, cam)
        assert picture.shape == (48, 48, 3)
        hot, cold = picture[5, 5].astype(int), picture[40, 40].astype(int)
        assert hot[0] > hot[2]  # jet's hot end is red
        assert np.abs(cold - 128).max() < np.abs(hot - 128).max()


def _prediction(box, label="happy", confidence=0.9, score=0.95) -> FacePrediction:
    probs = {name: 0.0 for name in EMOTION_COLOURS}
    probs[label] = confidence
    return FacePrediction(box=box, probabilities=probs, label=label, confidence=confidence, detector_score=score)


class TestDraw:
    def test_boxes_take_their_emotion_colour(self) -> None:
        image = np.zeros((300, 400, 3), dtype=np.uint8)
        out = draw_predictions(image, [_prediction((50, 100, 80, 80), "happy"), _prediction((250, 100, 80, 80), "sad")])
        assert tuple(out[140, 50]) == EMOTION_COLOURS["happy"]  # left edge of the first box
        assert tuple(out[140, 250]) == EMOTION_COLOURS["sad"]
        assert not image.any()  # the input is not modified
        assert tuple(out[250, 200]) == (0, 0, 0)  # away from boxes and labels

    def test_scale_maps_boxes_onto_a_resized_copy(self) -> None:
        image = np.zeros((2000, 3000, 3), dtype=np.uint8)
        display, scale = fit_for_display(image)
        assert max(display.shape[:2]) == 1280 and scale == pytest.approx(1280 / 3000)
        out = draw_predictions(display, [_prediction((1500, 1000, 300, 300))], scale=scale)
        x, y = round(1500 * scale), round(1100 * scale)
        assert tuple(out[y, x]) == EMOTION_COLOURS["happy"]

    def test_small_images_are_enlarged_crisply(self) -> None:
        face = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        display, scale = fit_for_display(face)
        assert scale == 8.0 and display.shape == (384, 384, 3)
        assert np.array_equal(display[::8, ::8], face)

    def test_saliency_is_blended_only_inside_the_face_square(self) -> None:
        image = np.full((300, 400, 3), 100, dtype=np.uint8)
        prediction = _prediction((150, 100, 80, 80))
        out = overlay_saliency(image, [prediction], [np.ones((48, 48), dtype=np.float32)])
        assert not np.array_equal(out[140, 190], image[140, 190])
        assert np.array_equal(out[10, 10], image[10, 10])
