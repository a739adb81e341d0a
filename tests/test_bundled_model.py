"""The weights shipped in the repository and their ONNX file: they load, serve what the weights
export to, and reproduce the accuracy written in their card."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import SHARED_FER, needs_shared
from fer_core.predict import Predictor
from fer_core.weights import DEFAULT_WEIGHTS, bundled_onnx, card_path, file_sha256


class TestBundledWeights:
    def test_small_safetensors_with_a_complete_card(self) -> None:
        assert DEFAULT_WEIGHTS.suffix == ".safetensors"
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
        # The weights and the ONNX file the app serves (for the card's runtime) within 20 MB.
        onnx_file = bundled_onnx(DEFAULT_WEIGHTS, card, card["inference"]["runtime"])
        assert onnx_file is not None and onnx_file.parent == DEFAULT_WEIGHTS.parent
        assert sum(f.stat().st_size for f in (DEFAULT_WEIGHTS, onnx_file)) < 20_000_000
        assert card["labels"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        for key in ("architecture", "input", "training", "val_metrics", "calibration", "code_version"):
            assert key in card
        assert card["training"]["command"].startswith("python -m fer_core.train")
        assert 0 < card["calibration"]["temperature"] < 10

    @pytest.mark.slow
    def test_the_onnx_file_serves_what_the_weights_export_to(self, tmp_path) -> None:
        """The app's default predictor runs the bundled ONNX file, checked by sha256; its answers on
        the bundled sample are those of exporting (and quantising) the weights on load, as the
        app did before the file was bundled: bit for bit, with the gated mirror as served."""
        from fer_core.config import SAMPLE_PATH
        from fer_core.datasets import load_faces

        served = Predictor()
        card = served.card
        entry = card["onnx"][served.runtime]
        assert served.onnx_file == DEFAULT_WEIGHTS.with_name(entry["file"])
        assert entry["sha256"] == file_sha256(served.onnx_file)
        assert entry["weights_sha256"] == file_sha256(DEFAULT_WEIGHTS)
        shutil.copy(DEFAULT_WEIGHTS, tmp_path / "fer_model.safetensors")
        card_path(tmp_path / "fer_model.safetensors").write_text(
            json.dumps({key: value for key, value in card.items() if key != "onnx"}))
        exported = Predictor(tmp_path / "fer_model.safetensors")
        assert exported.onnx_file is None and exported.runtime == served.runtime
        faces = load_faces(SAMPLE_PATH, progress=False).images
        np.testing.assert_array_equal(served.logits(faces), exported.logits(faces))
        np.testing.assert_array_equal(np.concatenate([served.logits(f) for f in faces[:40]]),
                                      np.concatenate([exported.logits(f) for f in faces[:40]]))

    @needs_shared
    def test_accuracy_on_the_fixed_val_sample_matches_the_card(self) -> None:
        from tools.bundle_model import check_sample

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


@pytest.mark.slow
def test_the_second_pass_gate_is_the_smallest_that_keeps_the_accuracy() -> None:
    import math

    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.predict import top_two_gap
    from tools.bundle_model import SECOND_PASS_GAPS, SECOND_PASS_TOLERANCE, choose_second_pass_gap

    # The bundled model on the bundled sample (real faces, most of them recognised): the second
    # pass (the mirror) corrects some of its answers, so the gate has something to keep.
    faces = load_faces(SAMPLE_PATH, progress=False)
    chosen = choose_second_pass_gap(DEFAULT_WEIGHTS, faces, "onnx")

    logits = Predictor(DEFAULT_WEIGHTS, runtime="onnx", tta=False).logits(faces.images)
    both = Predictor(DEFAULT_WEIGHTS, runtime="onnx", mirror_gap=math.inf).logits(faces.images)
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
