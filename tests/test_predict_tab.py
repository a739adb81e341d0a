"""The Predict tab's work (photo analysis, face table, click selection) and the ``predict`` API
of the launched app, called through ``gradio_client`` with real and broken images."""

from __future__ import annotations

import html
import io
import json
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_FER, needs_shared, read_grey, serving
from fer_core.config import EXAMPLES_DIR
from fer_core.predict import get_predictor
from fixtures_scenes import encode, exif_jpeg, fer_scene, flat_jpeg, gradient, match_faces, png_header_only
from second_model import COPY_NAME, TUNED_NAME, copy_bundled, copy_model
from ui.predict_tab import (
    DEFAULT_MIN_FACE,
    DEFAULT_SENSITIVITY,
    NO_FACE_MESSAGE,
    WHOLE_IMAGE_AUTO_MESSAGE,
    analyse_photo,
    annotate_frame,
    example_paths,
    face_at,
    faces_table,
    predict_json,
)

#: Scene seeds whose every face YuNet finds at the default settings (16 of the first 20 seeds are such).
SCENE_SEEDS = (0, 1)


def _scene(seed: int):
    return fer_scene(seed, face_size=(110, 170))


@needs_shared
class TestAnalysePhoto:
    @pytest.mark.parametrize("seed", SCENE_SEEDS)
    def test_every_composed_face_is_found_and_boxed(self, seed: int) -> None:
        scene, squares, _ = _scene(seed)
        analysis = analyse_photo(scene)
        found = [p.box for p in analysis.predictions]
        assert len(found) == len(squares)
        assert all(m is not None for m in match_faces(squares, found, min_iou=0.5))
        assert analysis.message.startswith(f"{len(squares)} faces found")
        areas = [w * h for _, _, w, h in found]
        assert areas == sorted(areas, reverse=True)  # largest first

    def test_labels_match_the_predictor_on_the_same_crops(self) -> None:
        scene, _, _ = _scene(SCENE_SEEDS[0])
        analysis = analyse_photo(scene)
        faces = np.stack([p.face for p in analysis.predictions])
        probs = get_predictor().predict_faces(faces)
        assert [p.label for p in analysis.predictions] == [get_predictor().labels[i] for i in probs.argmax(1)]

    def test_no_face_is_said_clearly(self) -> None:
        analysis = analyse_photo(gradient())
        assert analysis.predictions == [] and analysis.message == NO_FACE_MESSAGE

    def test_small_image_without_a_face_is_classified_whole_and_said_so(self) -> None:
        flat = np.full((48, 48), 120, dtype=np.uint8)
        analysis = analyse_photo(flat)
        assert len(analysis.predictions) == 1
        assert analysis.predictions[0].box == (0, 0, 48, 48)
        assert analysis.message == WHOLE_IMAGE_AUTO_MESSAGE
        # With the box ticked, the same image is whole without the automatic-switch message.
        assert analyse_photo(flat, whole_image=True).message == "The whole image was classified as one face."

    def test_min_face_size_and_sensitivity_change_what_is_found(self) -> None:
        scene, squares, _ = _scene(SCENE_SEEDS[0])
        smallest = min(s for _, _, s, _ in squares)
        assert len(analyse_photo(scene, min_face_size=smallest + 60).predictions) < len(squares)
        # Sensitivity is 1 - the detector's score threshold.
        assert all(p.detector_score >= 0.6 for p in analyse_photo(scene).predictions)
        strict = analyse_photo(scene, sensitivity=0.1).predictions
        assert all(p.detector_score >= 0.9 for p in strict)
        assert len(strict) <= len(squares) <= len(analyse_photo(scene, sensitivity=0.7).predictions)
        with pytest.raises(ValueError, match="sensitivity"):
            analyse_photo(scene, sensitivity=1.5)
        with pytest.raises(ValueError, match="minimum face size"):
            analyse_photo(scene, min_face_size=-1)

    def test_saliency_changes_the_picture_only_when_asked(self) -> None:
        scene, _, _ = _scene(SCENE_SEEDS[0])
        plain, explained = analyse_photo(scene), analyse_photo(scene, explain=True)
        assert plain.saliency is None and len(explained.saliency) == len(explained.predictions)
        assert not np.array_equal(plain.picture(0), explained.picture(0))
        assert explained.face_view(0).shape == (288, 288, 3)

    def test_face_table_and_click_selection(self) -> None:
        scene, _, _ = _scene(SCENE_SEEDS[0])
        preds = analyse_photo(scene).predictions
        table = faces_table(preds)
        assert list(table["face"]) == list(range(1, len(preds) + 1))
        assert {"x", "y", "w", "h", "label", "confidence", "angry", "neutral"} <= set(table.columns)
        assert np.allclose(table[["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]].sum(axis=1), 1, atol=1e-3)
        x, y, w, h = preds[1].box
        assert face_at(preds, x + w / 2, y + h / 2) == 1
        assert face_at(preds, 0, 0) is None

    def test_webcam_frame_is_annotated(self) -> None:
        scene, _, _ = _scene(SCENE_SEEDS[0])
        frame = annotate_frame(scene)
        assert frame.shape == scene.shape and not np.array_equal(frame, scene)
        assert np.array_equal(annotate_frame(gradient()), gradient())  # nothing to draw


def test_bundled_examples_have_faces() -> None:
    paths = example_paths()
    assert len(paths) == 4
    counts = {Path(p).name: len(predict_json(p)["faces"]) for p in paths}
    assert counts == {"group_of_three.jpg": 3, "astronaut.jpg": 1, "pair.jpg": 2, "fer2013_face.png": 1}


# ------------------------------------------------------------------------------ the launched app


@pytest.fixture(scope="module")
def launched():
    import app
    from benchmarks.app_bench import api_client

    demo = app.build_demo(app.load_data(None))
    with serving(demo) as url:
        yield demo, api_client(url)  # the client of the README's API example


@pytest.fixture(scope="module")
def client(launched):
    return launched[1]


def test_the_queue_summarises_its_events_every_100_not_after_each(launched) -> None:
    # Gradio's default rebuilds a pandas summary of all logged events after every request.
    demo, _ = launched
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY == 100


def _call(client, path: Path, **kwargs) -> dict:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict", **kwargs)


@needs_shared
class TestPredictApi:
    def test_composed_scene(self, client, tmp_path: Path) -> None:
        scene, squares, _ = _scene(SCENE_SEEDS[1])
        path = tmp_path / "scene.jpg"
        path.write_bytes(encode(Image.fromarray(scene), "JPEG", quality=92))
        result = _call(client, path)
        assert result["model"] == "fer_model" and result["model_version"] == get_predictor().model_name
        assert len(result["faces"]) == len(squares)
        assert all(m is not None for m in match_faces(squares, [f["box"] for f in result["faces"]], min_iou=0.5))
        for face in result["faces"]:
            assert set(face) == {"box", "label", "confidence", "probabilities"}
            assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
            assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        json.dumps(result)  # plain JSON all the way down

    def test_val_faces_classified_whole_match_the_predictor(self, client) -> None:
        paths = [sorted((SHARED_FER / "val" / emotion).glob("*.png"))[0] for emotion in
                 ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")]
        expected = get_predictor().predict_faces(np.stack([read_grey(p) for p in paths]))
        for path, probs in zip(paths, expected):
            result = _call(client, path, whole_image=True)
            assert len(result["faces"]) == 1 and result["faces"][0]["box"] == [0, 0, 48, 48]
            assert result["faces"][0]["label"] == get_predictor().labels[int(probs.argmax())]
            assert result["faces"][0]["confidence"] == pytest.approx(float(probs.max()), abs=1e-5)

    @pytest.mark.parametrize("form", ["exif6", "exif8", "gif-first-frame", "cmyk", "png16", "rgba"])
    def test_every_image_form_finds_the_upright_faces(self, client, tmp_path: Path, form: str) -> None:
        scene, squares, _ = _scene(SCENE_SEEDS[0])
        image = Image.fromarray(scene)
        if form.startswith("exif"):
            data = exif_jpeg(scene, int(form[-1]))
        elif form == "gif-first-frame":
            frames = [image.quantize(256), Image.fromarray(gradient()).quantize(256)]
            buf = io.BytesIO()
            frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
            data = buf.getvalue()
        elif form == "cmyk":
            data = encode(image.convert("CMYK"), "JPEG", quality=92)
        elif form == "png16":
            grey16 = np.asarray(image.convert("L"), dtype=np.uint16) * 257
            data = encode(Image.fromarray(grey16), "PNG")
        else:
            rgba = np.dstack([scene, np.full(scene.shape[:2], 255, np.uint8)])
            rgba[:20, :20, 3] = 0  # a transparent corner
            data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
        path = tmp_path / f"scene.{'gif' if form.startswith('gif') else 'png' if form in ('png16', 'rgba') else 'jpg'}"
        path.write_bytes(data)
        result = _call(client, path)
        assert len(result["faces"]) == len(squares), form
        assert all(m is not None for m in match_faces(squares, [f["box"] for f in result["faces"]], min_iou=0.5))

    def test_bad_inputs_are_clean_errors_and_the_app_keeps_serving(self, client, tmp_path: Path) -> None:
        from gradio_client.exceptions import AppError

        good = tmp_path / "good.jpg"
        good.write_bytes(encode(Image.fromarray(_scene(SCENE_SEEDS[0])[0]), "JPEG", quality=92))
        whole_jpeg = encode(Image.fromarray(gradient()), "JPEG", quality=90)
        cases = {
            "text.jpg": (b"this is not an image\n" * 10, "is not an image in a supported format"),
            "truncated.jpg": (whole_jpeg[: len(whole_jpeg) // 2], "truncated"),
            "empty.jpg": (b"", "empty"),
            "bomb.png": (png_header_only(100_000, 100_000), "pixels"),
        }
        for name, (data, message) in cases.items():
            path = tmp_path / name
            path.write_bytes(data)
            with pytest.raises(AppError, match=message) as info:
                _call(client, path)
            assert "Traceback" not in str(info.value) and str(tmp_path) not in str(info.value)
            assert len(_call(client, good)["faces"]) >= 1, f"the app stopped answering after {name}"

    def test_huge_jpeg_is_decoded_reduced_within_memory(self, client, tmp_path: Path) -> None:
        path = tmp_path / "huge.jpg"
        path.write_bytes(flat_jpeg(20_000, 20_000))
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result = _call(client, path)
        extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
        assert result["faces"] == []
        assert extra_mb < 1024, f"peak memory grew by {extra_mb:.0f} MB"

    def test_frame_endpoint_draws_the_boxes(self, client, tmp_path: Path) -> None:
        from gradio_client import handle_file

        scene, _, _ = _scene(SCENE_SEEDS[0])
        path = tmp_path / "frame.jpg"
        path.write_bytes(encode(Image.fromarray(scene), "JPEG", quality=92))
        out = np.asarray(Image.open(client.predict(handle_file(str(path)), api_name="/annotate_frame")).convert("RGB"))
        assert out.shape == scene.shape
        assert np.abs(out.astype(int) - np.asarray(Image.open(path)).astype(int)).mean() > 1


def test_table_is_empty_with_its_columns_when_no_face() -> None:
    table = faces_table([])
    assert isinstance(table, pd.DataFrame) and len(table) == 0 and "label" in table.columns


def test_the_live_view_finds_every_face_of_the_example_photos() -> None:
    """The webcam path searches a small copy of each frame; faces of camera size must all stay found."""
    from PIL import Image

    from fer_core.config import EXAMPLES_DIR
    from fer_core.faces import detect
    from ui.predict_tab import WEBCAM_DETECT_SIDE

    for path in sorted(EXAMPLES_DIR.glob("*.jpg")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        full = detect(rgb)
        live = detect(rgb, max_side=WEBCAM_DETECT_SIDE)
        assert len(live) == len(full) >= 1, path.name
        for a, b in zip(sorted(full, key=lambda f: f.x), sorted(live, key=lambda f: f.x)):
            assert abs(a.x - b.x) < 0.15 * a.w and abs(a.y - b.y) < 0.15 * a.h, path.name


# ------------------------------------------------------------------------------ models chosen by name


@pytest.fixture()
def two_models(tmp_path: Path, tuned_weights: Path):
    """The Predict tab alone over a catalog of the bundled model, a copy under another name and a fine-tuned one."""
    import gradio as gr

    from fer_core.catalog import ModelCatalog
    from ui.predict_tab import build_predict_tab

    copy_bundled(tmp_path / "models")
    copy_model(tuned_weights, tmp_path / "models")
    catalog = ModelCatalog(folder=tmp_path / "models")
    with gr.Blocks() as demo:
        build_predict_tab(catalog)
    return demo, catalog


def _block(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def _event(demo, **attributes):
    return next(f for f in demo.fns.values() if all(getattr(f, k) == v for k, v in attributes.items()))


class TestModelChoice:
    def test_the_dropdown_lists_every_model_the_default_chosen_and_reads_them_again_on_load(
            self, two_models, tuned_weights: Path, tmp_path: Path) -> None:
        demo, catalog = two_models
        dropdown = _block(demo, "predict-model")
        assert [value for _, value in dropdown.choices] == ["fer_model", COPY_NAME, TUNED_NAME]
        assert dropdown.value == "fer_model"
        load = next(f for f in demo.fns.values() if any(event == "load" for _, event in f.targets)
                    and dropdown in f.outputs)
        catalog.add(copy_model(tuned_weights, tmp_path / "later"), name="trained later")
        catalog.set_default("trained later")
        update = load.fn()
        assert update["choices"] == ["trained later", COPY_NAME, "fer_model", TUNED_NAME]
        assert update["value"] == "trained later"

    def test_the_photo_its_table_and_downloads_name_the_model(self, two_models) -> None:
        demo, catalog = two_models
        photo = _event(demo, api_name="photo")
        path = str(EXAMPLES_DIR / "fer2013_face.png")
        answers = {name: photo.fn(path, 20, 0.4, True, False, name) for name in (COPY_NAME, TUNED_NAME)}
        for name, (_, message, _, _, _, table, csv_file, json_file, _) in answers.items():
            assert message.endswith(f"Model: **{name}**")
            assert list(table["model"]) == [name]
            assert json.loads(Path(json_file["value"]).read_text())["model"] == name
            assert list(pd.read_csv(csv_file["value"])["model"]) == [name]
            expected = catalog.predictor(name).predict_faces(read_grey(Path(path)))[0]
            assert table["confidence"].iloc[0] == pytest.approx(float(expected.max()), abs=1e-4)
        assert answers[COPY_NAME][3] != answers[TUNED_NAME][3]  # the tuned model's probabilities are its own
        message = photo.fn(path, 20, 0.4, True, False, "nonsense<b>")[1]
        assert "no model named 'nonsense<b>'; choose one of" in html.unescape(message) and "<b>" not in message

    def test_the_webcam_uses_the_chosen_model(self, two_models) -> None:
        demo, catalog = two_models
        frame_fn = _event(demo, concurrency_id="webcam")
        scene, _, _ = _scene(SCENE_SEEDS[0])
        for name in (COPY_NAME, TUNED_NAME):
            expected = annotate_frame(scene, predictor=catalog.predictor(name))
            np.testing.assert_array_equal(frame_fn.fn(scene, DEFAULT_MIN_FACE, DEFAULT_SENSITIVITY, name), expected)
