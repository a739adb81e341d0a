"""The weights shipped in the repository: they load, and reproduce the accuracy written in their card."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, SHARED_FER, needs_shared
from fer_core.predict import Predictor
from fer_core.weights import DEFAULT_WEIGHTS, card_path, member_paths
from tools.bundle_model import check_sample


class TestBundledWeights:
    def test_small_safetensors_with_a_complete_card(self) -> None:
        assert DEFAULT_WEIGHTS.suffix == ".safetensors"
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
        # Every file the default predictor loads (the ensemble's members too) within 20 MB.
        files = [DEFAULT_WEIGHTS, *member_paths(DEFAULT_WEIGHTS, card)]
        assert sum(f.stat().st_size for f in files) < 20_000_000
        assert card["labels"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        for key in ("architecture", "input", "training", "val_metrics", "calibration", "code_version"):
            assert key in card
        assert card["training"]["command"].startswith("python -m fer_core.train")
        assert 0 < card["calibration"]["temperature"] < 10

    @needs_shared
    def test_accuracy_on_the_fixed_val_sample_matches_the_card(self) -> None:
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
        check = card["checks"]["val_sample"]
        sample = check_sample(SHARED_FER / "val")
        assert len(sample) == check["faces"]
        predictor = Predictor(runtime=check["runtime"], tta=check["flip_tta"])
        accuracy = float((predictor.predict_faces(sample.images).argmax(1) == sample.labels).mean())
        # Another CPU may round a borderline face the other way: one face of slack.
        assert accuracy == pytest.approx(check["accuracy"], abs=1.01 / len(sample))
        # Every class is recognised at least sometimes, disgust included.
        recall = [(predictor.predict_faces(sample.images[sample.labels == k]).argmax(1) == k).mean() for k in range(7)]
        assert min(recall) > 0


def test_the_second_pass_gate_is_the_smallest_that_keeps_the_accuracy() -> None:
    import math

    import numpy as np

    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.predict import top_two_gap
    from tools.bundle_model import SECOND_PASS_GAPS, SECOND_PASS_TOLERANCE, choose_second_pass_gap

    # The bundled model on the bundled sample (real faces, most of them recognised): the second
    # pass (mirror, ensemble members) corrects some of its answers, so the gate has something to keep.
    faces = load_faces(SAMPLE_PATH, progress=False)
    chosen = choose_second_pass_gap(DEFAULT_WEIGHTS, faces, "onnx")

    logits = Predictor(DEFAULT_WEIGHTS, runtime="onnx", tta=False, ensemble=False).logits(faces.images)
    both = Predictor(DEFAULT_WEIGHTS, runtime="onnx", mirror_gap=math.inf, third_pass_views=[]).logits(faces.images)
    every_face = (both.argmax(1) == faces.labels).mean()

    def accuracy(gap: float) -> float:
        return float((np.where((top_two_gap(logits) < gap)[:, None], both, logits).argmax(1) == faces.labels).mean())

    kept = [float(gap) for gap in SECOND_PASS_GAPS if accuracy(gap) >= every_face - SECOND_PASS_TOLERANCE]
    assert kept[0] > SECOND_PASS_GAPS[0], "the smallest gate already keeps the accuracy: nothing is tested"
    assert chosen["second_pass_gap"] == kept[0]
    report = chosen["second_pass_gap_val"]
    assert report["accuracy"] == pytest.approx(accuracy(kept[0]))
    assert report["accuracy_every_face_second_pass"] == pytest.approx(every_face)
    assert report["second_pass_share"] == pytest.approx(float(np.mean(top_two_gap(logits) < kept[0])))


def test_the_third_pass_gate_is_the_smallest_that_keeps_the_accuracy(tmp_path) -> None:
    import numpy as np

    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.predict import top_two_gap
    from fer_core.weights import load_model, save_model
    from tools.bundle_model import SECOND_PASS_GAPS, SECOND_PASS_TOLERANCE, choose_third_pass_gap

    # The bundled model with a third pass of two shifted mirrors, on the bundled sample.
    model, card = load_model(DEFAULT_WEIGHTS)
    inference = {"flip_tta": True, "tta_views": ["flip"], "second_pass_gap": 1.0,
                 "third_pass_views": ["left_flip", "right_flip"]}
    staged = save_model(model, tmp_path / "staged.safetensors", {**card, "inference": inference})
    faces = load_faces(SAMPLE_PATH, progress=False)
    chosen = choose_third_pass_gap(staged, faces, "onnx")

    # The same choice from views drawn here in pixels, each through the plain model.
    def moved(images: np.ndarray, dx: int) -> np.ndarray:
        return np.pad(images, ((0, 0), (0, 0), (2, 2)), mode="edge")[:, :, 2 + dx:50 + dx].copy()

    plain = Predictor(staged, runtime="onnx", tta=False)
    logits, mirror = plain.logits(faces.images), plain.logits(faces.images[:, :, ::-1].copy())
    shifted_mirrors = [moved(faces.images, dx)[:, :, ::-1].copy() for dx in (2, -2)]
    every_view = (logits + mirror + sum(plain.logits(images) for images in shifted_mirrors)) / 4
    second = top_two_gap(logits) < 1.0
    after_second = np.where(second[:, None], (logits + mirror) / 2, logits)

    def accuracy(third: np.ndarray) -> float:
        return float((np.where(third[:, None], every_view, after_second).argmax(1) == faces.labels).mean())

    reference = accuracy(second)
    kept = [float(gap) for gap in SECOND_PASS_GAPS
            if accuracy(second & (top_two_gap(after_second) < gap)) >= reference - SECOND_PASS_TOLERANCE]
    assert accuracy(second) != accuracy(np.zeros_like(second)), "the third pass changes nothing: nothing is tested"
    assert kept[0] > SECOND_PASS_GAPS[0]
    assert chosen["third_pass_gap"] == pytest.approx(kept[0])
    report = chosen["third_pass_gap_val"]
    assert report["accuracy_every_face_of_the_second_pass"] == pytest.approx(reference, abs=1e-9)
    assert report["third_pass_share"] == pytest.approx(float(np.mean(second & (top_two_gap(after_second) < kept[0]))))


def test_a_third_pass_that_does_not_pay_on_val_is_left_out(tmp_path) -> None:
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.weights import load_model, save_model
    from tools.bundle_model import choose_third_pass_gap

    # On the bundled sample (training faces), the model's answers about the unshifted faces are
    # better than about the shifted ones: averaging those in loses accuracy.
    model, card = load_model(DEFAULT_WEIGHTS)
    inference = {"flip_tta": True, "tta_views": ["flip"], "second_pass_gap": 1.0, "third_pass_views": ["left", "right"]}
    staged = save_model(model, tmp_path / "staged.safetensors", {**card, "inference": inference})
    faces = load_faces(SAMPLE_PATH, progress=False)
    chosen = choose_third_pass_gap(staged, faces, "onnx")
    assert chosen["third_pass_views"] == []
    report = chosen["third_pass_dropped_val"]
    served = Predictor(staged, runtime="onnx", third_pass_views=[]).predict_faces(faces.images).argmax(1)
    assert report["accuracy_without_third_pass"] == pytest.approx(float((served == faces.labels).mean()))
    assert report["accuracy_every_face_of_the_second_pass"] < report["accuracy_without_third_pass"]


@pytest.mark.parametrize("extra, message", [
    (["--third-pass-views", "left,flip"], "--third-pass-views repeats views of the second pass: ['flip']"),
    (["--tta-views", "left", "--third-pass-views", "left"], "--third-pass-views repeats views of the second pass: ['left']"),
    (["--third-pass-views", "left,sideways"], "unknown test-time view(s) ['sideways']"),
    (["--third-pass-views", "left", "--tta", "off"], "--third-pass-views needs test-time augmentation")])
def test_bad_views_are_refused_before_the_bundled_files_are_touched(tmp_path, extra: list[str], message: str) -> None:
    import shutil
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(card_path(DEFAULT_WEIGHTS), run / "model.json")
    before = {path: path.stat().st_mtime_ns for path in DEFAULT_WEIGHTS.parent.iterdir()}
    done = subprocess.run([sys.executable, "-m", "tools.bundle_model", str(run), "--val", str(tmp_path), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert {path: path.stat().st_mtime_ns for path in DEFAULT_WEIGHTS.parent.iterdir()} == before
