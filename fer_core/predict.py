"""Inference: a :class:`Predictor` that loads the weights once and classifies faces or whole photos.

    >>> from fer_core.predict import get_predictor
    >>> faces = get_predictor().predict_image("photo.jpg")
    >>> faces[0].label, faces[0].confidence, faces[0].box

Probabilities are calibrated with the temperature stored in the model card
(fitted on val, see :mod:`fer_core.calibration`).
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_core._io import atomic_write_bytes
from fer_core._validation import FERError, check_face_batch
from fer_core.calibration import softmax
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD, TTA_SHIFT, TTA_VIEWS

__all__ = ["FacePrediction", "Predictor", "get_predictor", "top_two_gap", "RUNTIMES"]

#: Inference runtimes: eager PyTorch; the same weights exported to ONNX Runtime (faster on CPU);
#: or that export quantised to int8 (faster again; used by default only where the model card
#: records that it kept the val accuracy).
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class FacePrediction:
    """One face of a photo: where it is and what the model thinks of it."""

    box: tuple[int, int, int, int]  # x, y, w, h in the upright image
    probabilities: dict[str, float]  # every class of the model, calibrated, summing to 1
    label: str
    confidence: float
    detector_score: float | None = None  # None when the whole image was taken as the face
    face: np.ndarray | None = field(default=None, repr=False, compare=False)  # the 48x48 input

    def as_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "label": self.label, "confidence": self.confidence,
                "probabilities": dict(self.probabilities), "detector_score": self.detector_score}


def top_two_gap(logits: np.ndarray) -> np.ndarray:
    """Per row of (N, K) logits, the highest minus the second highest (N,): how clear the answer is."""
    top_two = np.partition(logits, -2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def _normalise(faces: np.ndarray) -> np.ndarray:
    return ((faces.astype(np.float32) / 255.0 - INPUT_MEAN) / INPUT_STD)[:, None]


def view_of(x: np.ndarray, name: str) -> np.ndarray:
    """A test-time view (:data:`~fer_core.constants.TTA_VIEWS`) of normalised faces (N, 1, 48, 48):
    shifted by edge padding and cropping, then mirrored if the view says so."""
    dx, dy, mirrored = TTA_VIEWS[name]
    if dx or dy:
        padded = np.pad(x, ((0, 0), (0, 0), (TTA_SHIFT, TTA_SHIFT), (TTA_SHIFT, TTA_SHIFT)), mode="edge")
        x = padded[..., TTA_SHIFT + dy:TTA_SHIFT + dy + IMAGE_SIZE, TTA_SHIFT + dx:TTA_SHIFT + dx + IMAGE_SIZE]
    return x[..., ::-1] if mirrored else x


def check_tta_views(views: Any, name: str = "tta_views") -> tuple[str, ...]:
    """``views`` as a tuple of known view names; a clear FERError (a ValueError) for anything else."""
    if not isinstance(views, (list, tuple)) or not all(isinstance(view, str) for view in views):
        raise FERError(f"{name} must be a list of view names, got {views!r}")
    unknown = [view for view in views if view not in TTA_VIEWS]
    if unknown:
        raise FERError(f"unknown test-time view(s) {unknown}; choose from {list(TTA_VIEWS)}")
    if len(set(views)) != len(views):
        raise FERError(f"{name} names a view twice: {list(views)}")
    return tuple(views)


def parse_tta_views(text: str | None, *, tta_off: bool = False, option: str = "--tta-views") -> tuple[str, ...] | None:
    """A command line's ``--tta-views`` (or another ``option``: comma-separated view names), checked;
    None where it is not given."""
    if text is None:
        return None
    if tta_off:
        raise FERError(f"{option} needs test-time augmentation: leave out --tta off")
    return check_tta_views(text.split(","), option)


class _TorchRuntime:
    name = "torch"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, x: np.ndarray, *, part_of: int | None = None) -> np.ndarray:
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        return self.model(tensor).float().numpy()


def _export_onnx(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # The TorchScript-based exporter handles this plain CNN without the extra
        # onnxscript dependency the newer exporter needs; its deprecation notice is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), buffer, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return buffer.getvalue()


def _quantize_int8(onnx_model: bytes) -> bytes:
    """Static int8 quantisation (QDQ, per-channel weights), calibrated on the bundled sample of real faces."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces

    faces = _normalise(load_faces(SAMPLE_PATH, progress=False).images)

    class SampleFaces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": faces[i:i + 50]} for i in range(0, len(faces), 50)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        src, pre, out = (Path(folder) / name for name in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_model)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), SampleFaces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


#: Batches up to this many images run on one thread (see :meth:`_OnnxRuntime.__call__`): the faces
#: of a photo or a webcam frame (eight, or four with their mirrors where every face is mirrored:
#: both go through the model in one call).
SINGLE_THREAD_BATCH = 8


class _OnnxRuntime:
    """The model exported to ONNX (in memory) and run by ONNX Runtime, which fuses conv+BN+ReLU."""

    def __init__(self, model: torch.nn.Module, threads: int | None, *, int8: bool = False,
                 weights_digest: str = "", spin: bool = True) -> None:
        import onnxruntime as ort

        self.name = "onnx-int8" if int8 else "onnx"
        self._spin = spin
        data = _export_onnx(model)
        if int8:
            data = _cached(f"{weights_digest}-int8-ort{ort.__version__}.onnx", lambda: _quantize_int8(data))
        self._data, self._threads = data, threads or os.cpu_count() or 1
        self.session = self._session(self._threads)
        self._single: Any = None

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not self._spin:
            # After a call, ONNX Runtime's workers spin waiting for the next one. With several models
            # taking turns on the same cores, one session's spinning workers starve the next session:
            # a pair of models ran 908 faces/s at batch 16 spinning, 2,505 without.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self._data, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray, *, part_of: int | None = None) -> np.ndarray:
        """Logits of ``x``; ``part_of``: the size of the batch ``x`` was picked from, which then decides
        the threads (the gated mirror's few faces of a large batch run where the batch ran, on two
        threads: on one they took twice as long, and longer again right after a two-thread call)."""
        session = self.session
        if (part_of or len(x)) <= SINGLE_THREAD_BATCH and self._threads > 1:
            # The few faces of a photo or a webcam frame: one thread. A second one gains little on
            # so small a batch, and its workers spin between calls, taking the CPU from the face
            # detector, Gradio and the other requests (the live view ran 15 -> 21 frames/s without them).
            if self._single is None:
                self._single = self._session(1)
            session = self._single
        return session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _cached(name: str, make: Any) -> bytes:
    """Bytes kept in the cache folder under ``name`` (quantising takes seconds; loading, milliseconds)."""
    from fer_core.config import default_cache_dir

    path = default_cache_dir() / "models" / name
    if path.is_file():
        return path.read_bytes()
    data = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError:
        pass  # a cache that cannot be written only costs start-up time
    return data


def _gate(value: Any, name: str) -> float:
    """A gate on the top-two logit gap: a positive number, or math.inf (every face) where ``value`` is None."""
    gate = math.inf if value is None else float(value)
    if not gate > 0:  # also refuses NaN
        raise ValueError(f"{name} must be a positive number of logits, got {value!r}")
    return gate


class Predictor:
    """Classify 48x48 faces, or find and classify every face of a photo.

    Parameters
    ----------
    weights : path, optional
        A ``.safetensors`` file with its ``.json`` model card; default the bundled weights.
    device : {"cpu", "cuda"}, default="cpu"
    runtime : {"auto", "torch", "onnx", "onnx-int8"}, default="auto"
        ``auto`` takes the runtime the model card names (``inference.runtime``, chosen when the
        model was bundled), else ``onnx``, on the CPU when ONNX Runtime is installed; PyTorch otherwise.
    tta : bool, optional
        Average with other views of the face (``tta_views``); default from the model card (on only
        where it paid on val).
    tta_views : list of str, optional
        The views averaged where ``tta`` is on, names of :data:`~fer_core.constants.TTA_VIEWS`
        (``flip``, the face shifted 2 pixels ``left``, ``right_flip``, ...); default from the model
        card (``inference.tta_views``, chosen on val when the model was bundled; else ``["flip"]``).
    mirror_gap : float, optional
        The gate of the second pass (the mirror, and the ensemble's other models): only the
        faces whose two highest logits (of the plain pass) lie closer than this get it; a
        second opinion almost never changes a clear answer, so most faces need one pass.
        Default from the model card (``inference.second_pass_gap``, or ``flip_tta_gap`` in
        cards written before ensembles; chosen on val when the model was bundled; absent
        there: every face); ``math.inf`` gives every face the second pass, and the third.
    third_pass_views : list of str, optional
        Views averaged in a third pass, where ``tta`` is on: only on the faces of the second pass
        whose averaged logits still lie within ``third_pass_gap``. Default from the model card
        (``inference.third_pass_views``; none where absent, or where ``tta_views`` are named here).
        They must differ from ``tta_views``.
    third_pass_gap : float, optional
        The gate of the third pass, on the top two logits averaged over the plain pass and the
        second. Default from the model card (``inference.third_pass_gap``, chosen on val when
        the model was bundled; absent there: every face of the second pass).
    ensemble : bool, optional
        Average with the other models the card bundles (``inference.members``: files beside
        the weights, checked by sha256) on the faces the gate picks; default on where the
        card has them. ``False``: this model alone.
    threads : int, optional
        CPU threads for inference.
    """

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu", runtime: str = "auto",
                 tta: bool | None = None, mirror_gap: float | None = None, ensemble: bool | None = None,
                 threads: int | None = None, tta_views: list[str] | tuple[str, ...] | None = None,
                 third_pass_views: list[str] | tuple[str, ...] | None = None,
                 third_pass_gap: float | None = None) -> None:
        from fer_core.weights import DEFAULT_WEIGHTS, WeightsError, load_model, member_paths

        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.model, self.card = load_model(path, device=device)
        self.labels: list[str] = list(self.card["labels"])
        inference = self.card.get("inference", {})
        self.temperature: float = float(self.card.get("calibration", {}).get("temperature", 1.0))
        if tta is None:  # views named here switch TTA on; otherwise the card says
            tta = bool(tta_views) if tta_views is not None else bool(inference.get("flip_tta", False))
        try:
            card_views = check_tta_views(inference.get("tta_views", ["flip"]))
            card_third = check_tta_views(inference.get("third_pass_views", []), "third_pass_views")
        except ValueError as error:
            raise WeightsError(f"the model card of {path.name} is broken: {error}") from None
        views = card_views if tta_views is None else check_tta_views(tta_views)
        if third_pass_views is not None:
            third = check_tta_views(third_pass_views, "third_pass_views")
        else:  # the card's third pass goes with the card's views, not with views named here
            third = card_third if tta_views is None else ()
        if set(views) & set(third):  # a view is averaged once
            error = f"third_pass_views {list(third)} repeat views of the second pass {list(views)}"
            if tta_views is None and third_pass_views is None:
                raise WeightsError(f"the model card of {path.name} is broken: {error}")
            raise FERError(error)
        #: The views of the face averaged in the second pass, beside its plain pass; none without TTA.
        self.tta_views: tuple[str, ...] = views if tta else ()
        self.tta: bool = bool(self.tta_views)
        #: The views added in the third pass, on the faces the second leaves unclear; none without TTA.
        self.third_pass_views: tuple[str, ...] = third if self.tta else ()
        if mirror_gap is None:
            mirror_gap = inference.get("second_pass_gap", inference.get("flip_tta_gap"))
        self.mirror_gap: float = _gate(mirror_gap, "mirror_gap")
        if third_pass_gap is None:
            third_pass_gap = inference.get("third_pass_gap")
        self.third_pass_gap: float = _gate(third_pass_gap, "third_pass_gap")
        paths = [path] + (member_paths(path, self.card) if ensemble is not False else [])
        #: Every weights file this predictor runs: its own, then its ensemble members'.
        self.weights_files: list[Path] = paths
        self.members: list[torch.nn.Module] = []
        for member in paths[1:]:
            model, card = load_model(member, device=device)
            if list(card["labels"]) != self.labels:
                raise WeightsError(f"{member.name} has labels {card['labels']}, not those of {path.name}: {self.labels}")
            self.members.append(model)
        self.model_name: str = f"{self.card['architecture']}@{self.card.get('code_version', 'unknown')}"
        if self.members:
            self.model_name += f" (+{len(self.members)} in ensemble)"
        if runtime == "auto":
            preferred = inference.get("runtime", "onnx")
            runtime = preferred if device == "cpu" and _has_onnxruntime() else "torch"
        # One runtime per model: this one first (the plain pass every face gets), then the members.
        self._runtimes: list[Any] = [self._make_runtime(model, file, runtime, threads, spin=len(paths) == 1)
                                     for model, file in zip([self.model, *self.members], paths)]
        self._runtime = self._runtimes[0]
        self.runtime: str = self._runtime.name
        self._lock = threading.Lock()

    @staticmethod
    def _make_runtime(model: torch.nn.Module, weights: Path, runtime: str, threads: int | None, *, spin: bool) -> Any:
        from fer_core.weights import file_sha256

        if runtime.startswith("onnx"):
            int8 = runtime == "onnx-int8"
            # Only the int8 model is cached on disk, under the digest of the weights it came from.
            digest = file_sha256(weights)[:16] if int8 else ""
            return _OnnxRuntime(model, threads, int8=int8, weights_digest=digest, spin=spin)
        return _TorchRuntime(model)

    @property
    def second_pass(self) -> bool:
        """Whether unclear faces get a second look: their mirror (or the card's other test-time views),
        the ensemble's other models, or both."""
        return self.tta or bool(self.members)

    # ------------------------------------------------------------ faces

    def logits(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Uncalibrated logits (N, K) of uint8 faces (N, 48, 48) (or one face (48, 48))."""
        faces = check_face_batch(faces, name="faces")
        if faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"faces must be 48x48, got {faces.shape[1:]}; use fer_core.faces.to_model_input")
        out = []
        for start in range(0, len(faces), batch_size):
            x = _normalise(faces[start:start + batch_size])
            with self._lock:  # ONNX Runtime sessions and torch modules are shared by the app's threads
                if self.second_pass and self.mirror_gap == math.inf:
                    total, views = self._views(x, self.tta_views + self.third_pass_views,
                                               part_of=len(x), plain_passes="every model")
                    logits = total / views
                else:
                    logits = np.array(self._runtime(x), dtype=np.float32)
                    if self.second_pass:
                        self._gated_passes(x, logits)
            out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def _gated_passes(self, x: np.ndarray, logits: np.ndarray) -> None:
        """Average into ``logits`` (the plain pass of ``x``, changed in place) the second pass on the
        faces it leaves unclear, then the third pass on those the second leaves unclear."""
        unsure = np.flatnonzero(top_two_gap(logits) < self.mirror_gap)
        if not unsure.size:
            return
        total, views = self._views(x[unsure], self.tta_views, part_of=len(x), plain_passes="members")
        total += logits[unsure]
        views += 1
        averaged = total / views
        if self.third_pass_views:
            still = np.flatnonzero(top_two_gap(averaged) < self.third_pass_gap)
            if still.size:
                more, more_views = self._views(x[unsure[still]], self.third_pass_views, part_of=len(x),
                                               plain_passes="none")
                averaged[still] = (total[still] + more) / (views + more_views)
        logits[unsure] = averaged

    def _views(self, x: np.ndarray, tta_views: tuple[str, ...], *, part_of: int,
               plain_passes: str) -> tuple[np.ndarray, int]:
        """The summed logits of views of ``x``: each model's plain pass (``plain_passes``: "every model",
        "members" (all but this model) or "none"), and each model's ``tta_views``; and how many views
        that is."""
        total, views = np.zeros((len(x), len(self.labels)), dtype=np.float32), 0
        for index, runtime in enumerate(self._runtimes):
            with_plain = plain_passes == "every model" or (plain_passes == "members" and index > 0)
            inputs = [x] if with_plain else []
            inputs += [view_of(x, view) for view in tta_views]
            if not inputs:
                continue
            # A model's views of a face go through it in one call: at batch 1 one run, not several.
            out = runtime(np.concatenate(inputs), part_of=part_of * len(inputs))
            total += out.reshape(len(inputs), len(x), -1).sum(0)
            views += len(inputs)
        return total, views

    def predict_faces(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Calibrated probabilities (N, K) of uint8 faces (N, 48, 48); rows sum to 1."""
        return softmax(self.logits(faces, batch_size=batch_size), self.temperature)

    @torch.inference_mode()
    def features(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Penultimate-layer features (N, F): the pooled output of the last stage."""
        faces = check_face_batch(faces, name="faces")
        out = []
        for start in range(0, len(faces), batch_size):
            x = torch.from_numpy(_normalise(faces[start:start + batch_size]))
            out.append(self.model.forward_head(self.model.forward_features(x), pre_logits=True).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.num_features), dtype=np.float32)

    # ------------------------------------------------------------ photos

    def predict_image(self, image: Any, *, backend: str = "yunet", score_threshold: float | None = None,
                      min_face_size: int = 20, whole_image: bool | None = None,
                      detect_max_side: int | None = None) -> list[FacePrediction]:
        """Every face of a photo, largest first, with its box and calibrated probabilities.

        ``detect_max_side`` searches for faces in a copy at most that many pixels long (see
        :func:`fer_core.faces.detect`'s ``max_side``); the faces are cut from the full image.
        ``whole_image=True`` takes the whole image as one face (FER2013-style crops);
        ``None`` does so only when no face is found in an image that looks like a face crop.
        """
        from fer_core.faces import detect, is_face_crop, prepare_faces, whole_image_as_face
        from fer_core.images import load_image

        rgb = load_image(image)
        boxes = [] if whole_image else detect(rgb, backend=backend, score_threshold=score_threshold,
                                               min_face_size=min_face_size, max_side=detect_max_side)
        if boxes:
            faces = prepare_faces(rgb, boxes)
            places = [(b.x, b.y, b.w, b.h) for b in boxes]
            scores: list[float | None] = [float(b.score) for b in boxes]
        elif whole_image or (whole_image is None and is_face_crop(rgb)):
            faces = whole_image_as_face(rgb)[None]
            places, scores = [(0, 0, rgb.shape[1], rgb.shape[0])], [None]
        else:
            return []
        probs = self.predict_faces(faces)
        results = []
        for face, place, score, p in zip(faces, places, scores, probs):
            top = int(p.argmax())
            results.append(FacePrediction(
                box=tuple(int(v) for v in place), probabilities={name: float(v) for name, v in zip(self.labels, p)},
                label=self.labels[top], confidence=float(p[top]), detector_score=score, face=face))
        return results


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


@functools.lru_cache(maxsize=4)
def get_predictor(weights: str | None = None, runtime: str = "auto") -> Predictor:
    """The predictor for ``weights`` (default: the bundled ones), built once per process."""
    return Predictor(weights, runtime=runtime)
