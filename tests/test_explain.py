"""Grad-CAM saliency and the drawing of predictions on photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.draw import EMOTION_COLOURS, draw_predictions, fit_for_display, overlay_saliency
from fer_core.explain import grad_cam, heatmap_overlay
from fer_core.model import create_model
from fer_core.predict import FacePrediction, Predictor


@pytest.fixture(scope="module")
def torch_predictor() -> Predictor:
    return Predictor(runtime="torch")


class TestGradCam:
    def test_maps_are_48x48_in_unit_range(self, torch_predictor: Predictor, val_faces) -> None:
        faces, _, _ = val_faces
        maps = grad_cam(torch_predictor.model, faces[:8])
        assert maps.shape == (8, 48, 48) and maps.dtype == np.float32
        assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
        # Each map is scaled by its own peak.
        assert np.allclose(maps.reshape(8, -1).max(1), 1.0, atol=1e-5)

    def test_salient_pixels_matter_more_than_the_rest(self, torch_predictor: Predictor, val_faces) -> None:
        """Occluding the quarter of the face the map marks hottest lowers the predicted class's
        probability more than occluding its coldest quarter (a deletion test, Petsiuk et al. 2018)."""
        faces, _, _ = val_faces
        probs = torch_predictor.predict_faces(faces)
        top = probs.argmax(1)
        maps = grad_cam(torch_predictor.model, faces, top)

        def occluded(hottest: bool) -> np.ndarray:
            out = faces.copy()
            for i in range(len(faces)):
                order = np.argsort(-maps[i].ravel() if hottest else maps[i].ravel())[: 48 * 48 // 4]
                flat = out[i].ravel()
                flat[order] = int(faces[i].mean())
            after = torch_predictor.predict_faces(out)
            return probs[np.arange(len(faces)), top] - after[np.arange(len(faces)), top]

        assert occluded(hottest=True).mean() > occluded(hottest=False).mean() + 0.03

    def test_target_class_changes_the_map(self, torch_predictor: Predictor, val_faces) -> None:
        faces, _, _ = val_faces
        happy = grad_cam(torch_predictor.model, faces[:4], [3, 3, 3, 3])
        angry = grad_cam(torch_predictor.model, faces[:4], [0, 0, 0, 0])
        assert not np.allclose(happy, angry)

    def test_model_is_left_as_it_was(self) -> None:
        model = create_model("fer_tiny").train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grad_cam(model, np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        # BatchNorm statistics are untouched: the map is computed in eval mode.
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_bad_targets_and_sizes_are_refused(self) -> None:
        model = create_model("fer_tiny")
        faces = np.zeros((2, 48, 48), dtype=np.uint8)
        with pytest.raises(ValueError, match="one class index"):
            grad_cam(model, faces, [0, 9])
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
