"""The Predict tab: a photo (upload, drag and drop, paste) or the webcam in, every face out.

The work is done by plain functions (:func:`analyse_photo`, :func:`predict_json`,
:func:`annotate_frame`) that the tab's events and the ``predict`` API endpoint call, so they
are tested without a browser. Gradio is imported only inside :func:`build_predict_tab`.

The model is chosen by name from a :class:`~fer_core.catalog.ModelCatalog` (the tab's dropdown,
the API's ``model`` parameter; default: the catalog's default model), and every answer names it.
"""

import base64
import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fer_core._validation import FERError, ImageError
from fer_core.catalog import ModelCatalog
from fer_core.config import EXAMPLES_DIR
from fer_core.draw import draw_predictions, fit_for_display, overlay_saliency
from fer_core.explain import grad_cam, heatmap_overlay
from fer_core.faces import DEFAULT_SCORE_THRESHOLDS
from fer_core.images import DEFAULT_MAX_BYTES, load_image
from fer_core.labels import DISPLAY_NAMES
from fer_core.predict import FacePrediction, Predictor, get_predictor
from ui.limits import HEAVY, TempFiles, UploadRefused, trusted_upload

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "PhotoAnalysis",
    "analyse_photo",
    "predict_json",
    "annotate_frame",
    "faces_table",
    "build_predict_tab",
    "DEFAULT_SENSITIVITY",
    "DEFAULT_MIN_FACE",
]

#: Detector sensitivity shown to people: 1 - the detector's score threshold (YuNet's 0.6 -> 0.4).
DEFAULT_SENSITIVITY: float = round(1.0 - DEFAULT_SCORE_THRESHOLDS["yunet"], 2)
#: Smallest face side kept, in pixels of the photo as given.
DEFAULT_MIN_FACE: int = 20
#: Enlargement of the model's 48x48 input in the "selected face" view.
FACE_VIEW_SCALE: int = 6

NO_FACE_MESSAGE = (
    "**No face found.** Try a smaller minimum face size or a higher detector sensitivity, "
    "or tick *The whole image is one face* if the picture is already a cropped face."
)
WHOLE_IMAGE_AUTO_MESSAGE = (
    "**No face was detected in this small image**, which is shaped like a face crop (such as a "
    "48x48 FER2013 face), so **the whole image was classified as one face**."
)


@dataclass
class PhotoAnalysis:
    """Everything the tab shows about one photo.

    The session keeps it between events without the photo (:meth:`kept`): a few kB a face, not
    megabytes a visitor; the photo is read again from its upload when a face is picked.
    """

    display: np.ndarray | None  # the photo resized for showing (RGB uint8); None in the kept copy
    scale: float  # display pixels per photo pixel
    predictions: list[FacePrediction]
    message: str
    model: str  # the name of the model that answered (a catalog name)
    saliency: list[np.ndarray] | None = field(default=None, repr=False)
    model_version: str = ""  # its architecture and code version (``Predictor.model_name``)

    def kept(self) -> "PhotoAnalysis":
        """A copy without the photo, for the session."""
        return dataclasses.replace(self, display=None)

    def with_photo(self, source: Any) -> "PhotoAnalysis":
        """A copy whose photo is read again from ``source`` (as :func:`analyse_photo` showed it)."""
        display, _ = fit_for_display(load_image(source))
        return dataclasses.replace(self, display=display)

    def picture(self, selected: int | None = 0) -> np.ndarray:
        """The photo with every face boxed (the ``selected`` one thicker), saliency blended if computed."""
        if self.display is None:
            raise ValueError("this copy has no photo: use with_photo() first")
        base = self.display
        if self.saliency is not None:
            base = overlay_saliency(base, self.predictions, self.saliency, scale=self.scale)
        return draw_predictions(base, self.predictions, selected=selected, scale=self.scale)

    def face_view(self, index: int) -> np.ndarray | None:
        """The selected face as the model saw it (48x48, enlarged crisp), with its saliency if computed."""
        if not 0 <= index < len(self.predictions) or self.predictions[index].face is None:
            return None
        face = self.predictions[index].face
        if self.saliency is not None:
            picture = heatmap_overlay(face, self.saliency[index])
        else:
            picture = np.repeat(face[..., None], 3, axis=2)
        return np.kron(picture, np.ones((FACE_VIEW_SCALE, FACE_VIEW_SCALE, 1), dtype=np.uint8))


def _threshold(sensitivity: float) -> float:
    if not 0.0 < float(sensitivity) < 1.0:
        raise FERError(f"detector sensitivity must lie between 0 and 1, got {sensitivity}")
    return round(1.0 - float(sensitivity), 4)


def _check_min_face(min_face_size: float) -> int:
    if not 0 <= float(min_face_size) <= 10_000:
        raise FERError(f"minimum face size must be between 0 and 10000 pixels, got {min_face_size}")
    return int(min_face_size)


def _describe(predictions: list[FacePrediction], whole_image: bool) -> str:
    if not predictions:
        return NO_FACE_MESSAGE
    if predictions[0].detector_score is None:
        return "The whole image was classified as one face." if whole_image else WHOLE_IMAGE_AUTO_MESSAGE
    n = len(predictions)
    faces = "1 face found." if n == 1 else f"{n} faces found, numbered from the largest."
    return faces + " Click a box or pick a face below to see its seven probabilities."


def analyse_photo(
    source: Any,
    *,
    min_face_size: float = DEFAULT_MIN_FACE,
    sensitivity: float = DEFAULT_SENSITIVITY,
    whole_image: bool = False,
    explain: bool = False,
    predictor: Predictor | None = None,
    model: str | None = None,
) -> PhotoAnalysis:
    """Find and classify every face of a photo (anything :func:`fer_core.images.load_image` reads).

    ``whole_image=False`` still takes the whole image as the face when nothing is detected in a
    small image shaped like a face crop (said so in the message). ``explain`` adds Grad-CAM maps.
    ``model``: the name the answer gives ``predictor`` (default: its ``model_name``).

    Raises
    ------
    FERError
        The image cannot be read (its message is for a person), or a setting is out of range.
    """
    predictor = predictor or get_predictor()
    threshold, min_size = _threshold(sensitivity), _check_min_face(min_face_size)
    rgb = load_image(source)
    predictions = predictor.predict_image(
        rgb, score_threshold=threshold, min_face_size=min_size, whole_image=True if whole_image else None
    )
    display, scale = fit_for_display(rgb)
    analysis = PhotoAnalysis(display, scale, predictions, _describe(predictions, whole_image),
                             model or predictor.model_name, model_version=predictor.model_name)
    if explain and predictions:
        faces = np.stack([p.face for p in predictions])
        labels = [predictor.labels.index(p.label) for p in predictions]
        with predictor._lock:  # the predictor is shared by the app's threads
            analysis.saliency = list(grad_cam(predictor.model, faces, labels))
    return analysis


def predict_json(source: Any, *, predictor: Predictor | None = None, model: str | None = None,
                 **settings: Any) -> dict[str, Any]:
    """The ``predict`` API answer: ``{"faces": [{"box", "label", "confidence", "probabilities"}], "model",
    "model_version"}``; ``model`` names the model that answered (see :func:`analyse_photo`)."""
    analysis = analyse_photo(source, predictor=predictor, model=model, **settings)
    return {
        "faces": [
            {"box": list(p.box), "label": p.label, "confidence": round(p.confidence, 6),
             "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()}}
            for p in analysis.predictions
        ],
        "model": analysis.model,
        "model_version": analysis.model_version,
    }


#: Longest side of the copy of a webcam frame searched for faces; the Photo tab searches the full image.
#: 400 px: 5 ms a 640x480 frame instead of 11, and the live view (``python -m benchmarks.webcam``)
#: shows 17-20 frames/s on a 2-core machine where searching the full frame shows 14-15. It keeps
#: every face of the example photos, and 32 of the 37 small, blurry faces of the seeded test scenes
#: (upscaled 48 px FER2013 crops; 35 at full size, 28 at 320 px): the Photo tab is for those.
WEBCAM_DETECT_SIDE = 400
#: Largest frame the live view and ``annotate_frame`` take: a 4K camera's (3840 x 2160).
FRAME_MAX_PIXELS = 3840 * 2160
#: Live views served at once (each holds its place while the camera is on).
WEBCAM_STREAMS = 4


def annotate_frame(
    frame: Any,
    *,
    min_face_size: float = DEFAULT_MIN_FACE,
    sensitivity: float = DEFAULT_SENSITIVITY,
    predictor: Predictor | None = None,
) -> np.ndarray:
    """One webcam frame with its faces boxed and labelled (no saliency: it must keep up with the camera).

    Faces are searched for in a copy at most :data:`WEBCAM_DETECT_SIDE` pixels long (for a
    640x480 frame 5 ms instead of 11), and classified from the full frame.
    """
    predictor = predictor or get_predictor()
    rgb = load_image(frame, max_pixels=FRAME_MAX_PIXELS)
    predictions = predictor.predict_image(
        rgb, score_threshold=_threshold(sensitivity), min_face_size=_check_min_face(min_face_size), whole_image=False,
        detect_max_side=WEBCAM_DETECT_SIDE,
    )
    display, scale = fit_for_display(rgb, max_side=960, min_side=1)
    return draw_predictions(display, predictions, scale=scale)


def faces_table(predictions: list[FacePrediction], model: str | None = None) -> pd.DataFrame:
    """One row per face: number, box, top label, confidence, every probability, detector score, and
    the ``model`` that answered (a column only when named)."""
    named = {"model": model} if model is not None else {}
    rows = []
    for number, p in enumerate(predictions, start=1):
        x, y, w, h = p.box
        rows.append({"face": number, "label": p.label, "confidence": round(p.confidence, 4),
                     "x": x, "y": y, "w": w, "h": h,
                     **{name: round(v, 4) for name, v in p.probabilities.items()},
                     "detector_score": None if p.detector_score is None else round(p.detector_score, 4), **named})
    columns = ["face", "label", "confidence", "x", "y", "w", "h", *named]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def face_at(predictions: list[FacePrediction], x: float, y: float) -> int | None:
    """The face whose box holds the photo point ``(x, y)``; the smallest one where boxes overlap."""
    inside = [(p.box[2] * p.box[3], i) for i, p in enumerate(predictions)
              if p.box[0] <= x < p.box[0] + p.box[2] and p.box[1] <= y < p.box[1] + p.box[3]]
    return min(inside)[1] if inside else None


def _probabilities(prediction: FacePrediction) -> dict[str, float]:
    return {DISPLAY_NAMES.get(k, k): v for k, v in prediction.probabilities.items()}


#: The downloads of the Photo tab (table as CSV, results as JSON): one folder per distinct result,
#: deleted 15 minutes after it was last written (Gradio serves its own copy of each).
DOWNLOADS = TempFiles("predictions", ttl_s=900)


def _write_exports(analysis: PhotoAnalysis, table: pd.DataFrame) -> tuple[str, str]:
    """The face table as CSV and the API's JSON, in :data:`DOWNLOADS` (the same result reuses its files)."""
    payload = {"faces": [{"box": list(p.box), "label": p.label, "confidence": p.confidence,
                          "probabilities": p.probabilities} for p in analysis.predictions], "model": analysis.model,
               "model_version": analysis.model_version}
    text = json.dumps(payload, indent=2)
    csv_text = table.to_csv(index=False)
    with DOWNLOADS.claim(DOWNLOADS.key(text, csv_text)) as (folder, existed):
        csv_path, json_path = folder / "faces.csv", folder / "faces.json"
        if not (existed and csv_path.is_file() and json_path.is_file()):
            csv_path.write_text(csv_text)
            json_path.write_text(text)
    return str(csv_path), str(json_path)


# ------------------------------------------------------------------------------ Gradio


def _undecoded_upload(payload: Any) -> str | bytes | None:
    """The upload as a path (or the bytes of a data URL), not yet decoded."""
    import gradio as gr

    if payload is None:
        return None
    url = payload.url or ""
    if payload.path is not None and not url.startswith("data:"):
        try:
            return trusted_upload(payload.path)
        except UploadRefused as err:
            raise gr.Error(str(err), title="Cannot read this image", print_exception=False) from None
    if url.startswith("data:") and "," in url:
        encoded = url.split(",", 1)[1]
        if len(encoded) * 3 // 4 > DEFAULT_MAX_BYTES:
            raise gr.Error(f"the image is larger than {DEFAULT_MAX_BYTES // 1_000_000} MB", print_exception=False)
        try:
            return base64.b64decode(encoded, validate=False)
        except ValueError:
            raise gr.Error("the image data could not be decoded", print_exception=False) from None
    raise gr.Error("send the image as a file (for example with gradio_client.handle_file)", print_exception=False)


def image_input(**kwargs: Any) -> "gr.Image":
    """A ``gr.Image`` whose handler receives the upload undecoded, for :func:`fer_core.images.load_image`.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a renamed text file,
    a truncated JPEG or a decompression bomb would fail inside Gradio with a bare "Error".
    Passing the file on lets :mod:`fer_core.images` refuse it with a clear message. (The
    override is set on the instance: a subclass would make Gradio write a ``.pyi`` stub
    beside this module at import.)
    """
    import gradio as gr

    component = gr.Image(**kwargs)
    component.preprocess = _undecoded_upload  # type: ignore[method-assign]
    return component


def _public_message(err: Exception, source: Any = None) -> str:
    """The error's message with the server's upload folder left out (only the file's name stays)."""
    message = str(err)
    if isinstance(source, str):
        message = message.replace(repr(source), repr(Path(source).name))
    return message


def _error_title(err: Exception) -> str:
    return "Cannot read this image" if isinstance(err, ImageError) else "Cannot do this"


def _as_gradio_error(err: Exception, source: Any = None) -> Exception:
    """A ``gr.Error`` for the person: the server's upload folder is left out of the message."""
    import gradio as gr

    return gr.Error(_public_message(err, source), title=_error_title(err), print_exception=False)


def example_paths() -> list[str]:
    """The bundled example photos, in a fixed order."""
    order = ["group_of_three.jpg", "astronaut.jpg", "pair.jpg", "fer2013_face.png"]
    return [str(EXAMPLES_DIR / name) for name in order if (EXAMPLES_DIR / name).is_file()]


def _choose(catalog: ModelCatalog, name: str | None) -> tuple[str, Predictor]:
    """The model called ``name`` (``None`` or ``""``: the catalog's default): its name and predictor.

    Raises :class:`~fer_core.catalog.UnknownModel` (a ``FERError``) listing the names there are.
    """
    entry = catalog.entry(name or None)
    return entry.name, catalog.predictor(entry.name)


def build_predict_tab(catalog: ModelCatalog | None = None) -> None:
    """The Predict tab's components and events; call inside ``gr.Blocks`` (and a ``gr.Tab``).

    ``catalog``: the models its photos, webcam frames and API calls choose from by name (default:
    the bundled ones); the model dropdown starts on the catalog's default, and its choices are read
    again on every page load (models may be added while the app runs).
    """
    import gradio as gr

    catalog = catalog if catalog is not None else ModelCatalog()
    empty_table = faces_table([])
    # Load the default model and the detector now, so the first visitor does not wait for them.
    annotate_frame(np.zeros((240, 320, 3), dtype=np.uint8), predictor=catalog.predictor())
    ui = _predict_layout(empty_table, catalog)
    # Predictions only (a few kB a face, not the photo), forgotten an hour after the last photo.
    analysis_state = gr.State(None, time_to_live=3600)
    on = _photo_handlers(empty_table, catalog)
    photo, min_face, sensitivity, whole_image, explain, model = (ui[k] for k in (
        "photo", "min_face", "sensitivity", "whole_image", "explain", "model"))
    photo_outputs = [ui[k] for k in ("annotated", "message", "face_pick", "probabilities", "face_view", "table",
                                     "csv_file", "json_file")] + [analysis_state]
    gr.on(
        triggers=[photo.change, min_face.release, sensitivity.release, whole_image.input, explain.input, model.input],
        fn=on["photo"], inputs=[photo, min_face, sensitivity, whole_image, explain, model], outputs=photo_outputs,
        api_name="photo", api_visibility="private", show_progress="minimal", concurrency_id=HEAVY,
    )
    pick_outputs = [ui["annotated"], ui["probabilities"], ui["face_view"]]
    ui["face_pick"].input(on["pick"], [ui["face_pick"], photo, analysis_state], pick_outputs,
                          api_visibility="private", show_progress="hidden", concurrency_id=HEAVY)
    ui["annotated"].select(on["click"], [analysis_state], [ui["face_pick"]], api_visibility="private",
                           show_progress="hidden") \
        .then(on["pick"], [ui["face_pick"], photo, analysis_state], pick_outputs, api_visibility="private",
              show_progress="hidden", concurrency_id=HEAVY)
    # A stream holds its place for as long as the camera is on: its own limit, so that live views
    # never keep photos and API calls waiting; its frames are small (FRAME_MAX_PIXELS).
    ui["webcam"].stream(on["frame"], [ui["webcam"], min_face, sensitivity, model], [ui["webcam_out"]],
                        stream_every=0.02, time_limit=300, concurrency_limit=WEBCAM_STREAMS, concurrency_id="webcam",
                        api_visibility="private", show_progress="hidden")
    # Models added while the app runs appear at the next page load; the default may have changed too.
    gr.on(None, lambda: gr.update(choices=catalog.names(), value=catalog.default), None, [model],
          api_visibility="private", show_progress="hidden", queue=False)

    _build_api(catalog)


def _predict_layout(empty_table: pd.DataFrame, catalog: ModelCatalog) -> dict[str, Any]:
    """The Predict tab's model, settings, Photo and Webcam tabs; returns the components by name."""
    import gradio as gr

    model = gr.Dropdown(catalog.names(), value=catalog.default, label="Model", elem_id="predict-model",
                        info="Which model answers: photos, the webcam and the downloads say which one did")
    # Settings fold away: on a phone they would otherwise fill the first screen before the photo.
    with gr.Accordion("Settings: face size, sensitivity, whole image, explanation", open=False):
        with gr.Row():
            min_face = gr.Slider(8, 400, value=DEFAULT_MIN_FACE, step=1, label="Minimum face size (pixels)",
                                 info="Smaller faces are ignored")
            sensitivity = gr.Slider(0.05, 0.7, value=DEFAULT_SENSITIVITY, step=0.05, label="Detector sensitivity",
                                    info="Higher finds more faces, and more false ones")
            whole_image = gr.Checkbox(False, label="The whole image is one face",
                                      info="For pictures that are already a cropped face")
            explain = gr.Checkbox(False, label="Show what drove each prediction",
                                  info="Grad-CAM saliency: red areas pushed most towards the label")
    with gr.Tabs():
        with gr.Tab("Photo"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    photo = image_input(label="Photo: upload, drop or paste", sources=["upload", "clipboard"],
                                        elem_id="predict-photo", type="filepath", height=420)
                    gr.Examples(example_paths(), inputs=[photo], label="Examples (real faces): click one")
                with gr.Column(scale=6):
                    message = gr.Markdown("Upload a photo, paste one, or click an example.")
                    annotated = gr.Image(label="Faces found (click a face)", interactive=False, format="jpeg",
                                         height=420, elem_id="predict-annotated")
            with gr.Row(equal_height=False):
                face_pick = gr.Dropdown(choices=[], label="Face", interactive=True, scale=2)
                face_view = gr.Image(label="What the model saw (48x48)", interactive=False, height=300,
                                     scale=2, format="png")
                probabilities = gr.Label(label="Emotion probabilities", num_top_classes=7, scale=3)
            table = gr.Dataframe(value=empty_table, label="Every face", interactive=False)
            with gr.Row():
                csv_file = gr.DownloadButton("Download table (CSV)", value=None, interactive=False)
                json_file = gr.DownloadButton("Download results (JSON)", value=None, interactive=False)
        with gr.Tab("Webcam"):
            gr.Markdown("Turn on the camera: every frame comes back with its faces boxed and labelled.")
            with gr.Row():
                webcam = image_input(label="Camera", sources=["webcam"], streaming=True, type="filepath",
                                     elem_id="webcam-in")
                webcam_out = gr.Image(label="Faces, live", interactive=False, format="jpeg", streaming=True,
                                      elem_id="webcam-out")
    return {"model": model, "min_face": min_face, "sensitivity": sensitivity, "whole_image": whole_image,
            "explain": explain, "photo": photo, "message": message, "annotated": annotated, "face_pick": face_pick,
            "face_view": face_view, "probabilities": probabilities, "table": table, "csv_file": csv_file,
            "json_file": json_file, "webcam": webcam, "webcam_out": webcam_out}


def _photo_handlers(empty_table: pd.DataFrame, catalog: ModelCatalog) -> dict[str, Any]:
    """The Predict tab's event functions: a photo, a face picked or clicked, a webcam frame."""
    import gradio as gr

    def cleared(text: str):
        return (None, text, gr.update(choices=[], value=None), None, None, empty_table,
                gr.update(value=None, interactive=False), gr.update(value=None, interactive=False), None)

    def on_photo(image, min_size, sens, whole, show_saliency, model_name=None):
        if image is None:
            return cleared("Upload a photo, paste one, or click an example.")
        try:
            name, predictor = _choose(catalog, model_name)
            analysis = analyse_photo(image, predictor=predictor, model=name, min_face_size=min_size,
                                     sensitivity=sens, whole_image=whole, explain=show_saliency)
        except FERError as err:  # said once, in the message box, not as a red badge on every panel
            return cleared(f"**{_error_title(err)}.** {html.escape(_public_message(err, image))}")
        preds = analysis.predictions
        choices = [(f"{i + 1}: {DISPLAY_NAMES.get(p.label, p.label)} {p.confidence:.0%}", i)
                   for i, p in enumerate(preds)]
        frame = faces_table(preds, model=analysis.model)
        csv_path, json_path = _write_exports(analysis, frame)
        return (
            analysis.picture(0 if preds else None),
            f"{analysis.message}\n\nModel: **{html.escape(analysis.model)}**",
            gr.update(choices=choices, value=0 if preds else None),
            _probabilities(preds[0]) if preds else None,
            analysis.face_view(0) if preds else None,
            frame,
            gr.update(value=csv_path, interactive=bool(preds)),
            gr.update(value=json_path, interactive=bool(preds)),
            analysis.kept(),
        )

    def on_pick(index, image, analysis: PhotoAnalysis | None):
        if analysis is None or index is None or not 0 <= int(index) < len(analysis.predictions):
            return gr.skip(), gr.skip(), gr.skip()
        index = int(index)
        try:
            picture = analysis.with_photo(image).picture(index) if image is not None else gr.skip()
        except FERError:  # the upload was cleaned away meanwhile: the rest still shows
            picture = gr.skip()
        return picture, _probabilities(analysis.predictions[index]), analysis.face_view(index)

    def on_click(analysis: PhotoAnalysis | None, evt: gr.SelectData):
        if analysis is None or not evt.index:
            return gr.skip()
        x, y = evt.index[0] / analysis.scale, evt.index[1] / analysis.scale
        index = face_at(analysis.predictions, x, y)
        return gr.skip() if index is None else index

    def on_frame(frame, min_size, sens, model_name=None):
        if frame is None:
            return None
        try:
            return annotate_frame(frame, predictor=_choose(catalog, model_name)[1], min_face_size=min_size,
                                  sensitivity=sens)
        except FERError as err:
            raise _as_gradio_error(err, frame) from None

    return {"photo": on_photo, "pick": on_pick, "click": on_click, "frame": on_frame}


def _api_upload(payload: Any) -> str | bytes:
    """An image sent to a ``gr.api`` endpoint (a file dict, unprocessed): checked as a ``gr.Image`` upload is."""
    import gradio as gr
    from gradio.data_classes import ImageData
    from pydantic import ValidationError

    if payload is None:
        raise gr.Error("no image was sent", print_exception=False)
    try:
        image = ImageData.model_validate(payload)
    except ValidationError:
        raise gr.Error("send the image as a file (for example with gradio_client.handle_file)",
                       print_exception=False) from None
    return _undecoded_upload(image)


def _api_model(model: Any) -> str | None:
    """The ``model`` parameter of an API call: a name, or nothing for the default model."""
    import gradio as gr

    if model is None or model == "":
        return None
    if not isinstance(model, str):
        raise gr.Error(f"model must be a model's name (text), got {type(model).__name__}", print_exception=False)
    return model


def _build_api(catalog: ModelCatalog) -> None:
    """The API-only endpoints ``predict`` and ``annotate_frame``."""
    import gradio as gr
    from gradio.data_classes import ImageData

    def predict(image: ImageData | None, whole_image: bool = False, model: str | None = None) -> dict[str, Any]:
        """Every face of one image: box [x, y, w, h], top label, confidence and the seven probabilities.

        ``whole_image=True`` classifies the whole image as one face (for face crops). ``model``: the
        name of the model to ask (default: the app's default model); the answer's ``model`` names
        the one that answered.
        """
        try:
            name, predictor = _choose(catalog, _api_model(model))
        except FERError as err:  # an unknown name: the message lists the names there are
            raise gr.Error(html.escape(str(err), quote=False), title="Cannot do this", print_exception=False) from None
        source = _api_upload(image)
        try:
            return predict_json(source, predictor=predictor, model=name, whole_image=bool(whole_image))
        except FERError as err:
            raise _as_gradio_error(err, source) from None

    gr.api(predict, api_name="predict", concurrency_id=HEAVY)

    # annotate_frame answers with an image: a hidden gr.Image encodes it and registers the file for
    # delete_cache, which a gr.api endpoint (raw output) would leave to this code.
    with gr.Row(visible=False):
        api_image = image_input(type="filepath", label="image")
        api_frame_out = gr.Image(label="annotated frame", format="jpeg")
        frame_button = gr.Button("annotate_frame")

    def frame(image) -> np.ndarray:
        """One camera frame with its faces boxed and labelled (the webcam path, callable for benchmarks)."""
        if image is None:
            raise gr.Error("no image was sent", print_exception=False)
        try:
            return annotate_frame(image, predictor=catalog.predictor())
        except FERError as err:
            raise _as_gradio_error(err, image) from None

    frame_button.click(frame, [api_image], [api_frame_out], api_name="annotate_frame", concurrency_id=HEAVY)
