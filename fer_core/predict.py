"""Inference: a :class:`Predictor` that loads the model once and classifies faces or whole photos.

    >>> from fer_core.predict import get_predictor
    >>> faces = get_predictor().predict_image("photo.jpg")
    >>> faces[0].label, faces[0].confidence, faces[0].box

The model runs in ONNX Runtime, from the ONNX file the model card names (bundled beside the
weights, see :mod:`fer_core.export`), with no PyTorch. Weights whose card names none are
exported when loaded, which needs PyTorch (``requirements-train.txt``).
Probabilities are calibrated with the temperature stored in the model card
(fitted on val, see :mod:`fer_core.calibration`).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_core._validation import FERError, check_face_batch
from fer_core.calibration import softmax
from fer_core.constants import IMAGE_SIZE
from fer_core.export import ONNX_RUNTIMES, normalise_faces

__all__ = ["FacePrediction", "OnnxModel", "Predictor", "get_predictor", "top_two_gap", "RUNTIMES"]

#: Inference runtimes: ``auto`` (the one the model card names, chosen when the model was bundled),
#: the model in float32 (``onnx``), or quantised to int8 (``onnx-int8``), both in ONNX Runtime.
RUNTIMES = ("auto", *ONNX_RUNTIMES)


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


#: Batches up to this many images run on one thread (see :meth:`OnnxModel.__call__`): the faces
#: of a photo or a webcam frame (eight, or four with their mirrors where every face is mirrored:
#: both go through the model in one call).
SINGLE_THREAD_BATCH = 8


class OnnxModel:
    """A FER model in ONNX Runtime: normalised faces ``x`` (N, 1, 48, 48) in; ``logits`` (N, K) and
    the last feature maps (N, C, h, w) out (see :mod:`fer_core.export`). ONNX Runtime fuses conv+BN+ReLU.

    Parameters
    ----------
    data : bytes
        The ONNX graph.
    classifier : (K, C) array
        The weights of the linear classifier over the pooled feature maps (for saliency).
    runtime : {"onnx", "onnx-int8"}
    threads : int, optional
        CPU threads of a batch larger than :data:`SINGLE_THREAD_BATCH`; default every core.
    """

    def __init__(self, data: bytes, *, classifier: np.ndarray, runtime: str, threads: int | None = None) -> None:
        self.name = runtime
        self.classifier = np.asarray(classifier, dtype=np.float32)
        self._data, self._threads = data, threads or os.cpu_count() or 1
        self.session = self._session(self._threads)
        outputs = [output.name for output in self.session.get_outputs()]
        if outputs[:2] != ["logits", "features"]:
            raise FERError(f"the ONNX model must output 'logits' and 'features', it outputs {outputs}")
        self._single: Any = None

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(self._data, options, providers=["CPUExecutionProvider"])

    def _run(self, x: np.ndarray, output: str, part_of: int | None) -> np.ndarray:
        session = self.session
        if (part_of or len(x)) <= SINGLE_THREAD_BATCH and self._threads > 1:
            # The few faces of a photo or a webcam frame: one thread. A second one gains little on
            # so small a batch, and its workers spin between calls, taking the CPU from the face
            # detector, Gradio and the other requests (the live view ran 15 -> 21 frames/s without them).
            if self._single is None:
                self._single = self._session(1)
            session = self._single
        return session.run([output], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: np.ndarray, *, part_of: int | None = None) -> np.ndarray:
        """Logits of ``x``; ``part_of``: the size of the batch ``x`` was picked from, which then decides
        the threads (the gated mirror's few faces of a large batch run where the batch ran, on two
        threads: on one they took twice as long, and longer again right after a two-thread call)."""
        return self._run(x, "logits", part_of)

    def feature_maps(self, x: np.ndarray) -> np.ndarray:
        """The last feature maps (N, C, h, w) of ``x``, before global average pooling."""
        return self._run(x, "features", None)


def _gate(value: Any, name: str) -> float:
    """A gate on the top-two logit gap: a positive number, or math.inf (every face) where ``value`` is None."""
    gate = math.inf if value is None else float(value)
    if not gate > 0:  # also refuses NaN
        raise ValueError(f"{name} must be a positive number of logits, got {value!r}")
    return gate


def _check_inference(inference: Any, card_name: str) -> dict[str, Any]:
    """The card's ``inference`` block, refusing what this Predictor does not serve: test-time views
    other than the mirror, a third pass, ensemble members (cards bundled by earlier versions)."""
    from fer_core.weights import WeightsError

    if not isinstance(inference, dict):
        raise WeightsError(f"{card_name}: 'inference' must be an object, got {inference!r}")
    unsupported = {key: inference[key] for key, served in
                   (("tta_views", ["flip"]), ("third_pass_views", []), ("members", []))
                   if inference.get(key) not in (None, served)}
    if unsupported:
        raise WeightsError(f"{card_name} asks for inference this version does not serve: {unsupported} "
                           f"(the second pass is the mirror alone, of one model)")
    return inference


class Predictor:
    """Classify 48x48 faces, or find and classify every face of a photo.

    Parameters
    ----------
    weights : path, optional
        A ``.safetensors`` file with its ``.json`` model card; default the bundled weights. The model
        runs from the ONNX file the card names for the runtime (checked by sha256, no PyTorch needed);
        where it names none, the weights are exported to ONNX on load, which needs PyTorch.
    runtime : {"auto", "onnx", "onnx-int8"}, default="auto"
        ``auto`` takes the runtime the model card names (``inference.runtime``, chosen on val when
        the model was bundled), else ``onnx`` (float32).
    tta : bool, optional
        Average the logits with those of the mirrored face, on the faces ``mirror_gap`` lets
        through; default from the model card (``inference.flip_tta``: on only where it paid on val).
    mirror_gap : float, optional
        The gate of that second pass: only the faces whose two highest logits (of the plain pass)
        lie closer than this get it; a second opinion almost never changes a clear answer, so most
        faces need one pass. Default from the model card (``inference.second_pass_gap``, chosen on
        val when the model was bundled; absent there: every face); ``math.inf``: every face.
    threads : int, optional
        CPU threads for inference.
    """

    def __init__(self, weights: str | Path | None = None, *, runtime: str = "auto", tta: bool | None = None,
                 mirror_gap: float | None = None, threads: int | None = None) -> None:
        from fer_core.weights import DEFAULT_WEIGHTS, WeightsError, bundled_onnx, card_path, read_card, read_tensor

        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.card: dict[str, Any] = read_card(path)
        self.labels: list[str] = list(self.card["labels"])
        inference = _check_inference(self.card.get("inference", {}), card_path(path).name)
        self.temperature: float = float(self.card.get("calibration", {}).get("temperature", 1.0))
        #: Whether unclear faces get a second pass, the mirror.
        self.tta: bool = bool(inference.get("flip_tta", False)) if tta is None else bool(tta)
        if mirror_gap is None:
            mirror_gap = inference.get("second_pass_gap")
        self.mirror_gap: float = _gate(mirror_gap, "mirror_gap")
        if runtime == "auto":
            runtime = inference.get("runtime", "onnx")
            if runtime not in ONNX_RUNTIMES:
                raise WeightsError(f"{card_path(path).name} names the runtime {runtime!r}; "
                                   f"this version serves {list(ONNX_RUNTIMES)}")
        #: The weights this predictor serves, and the ONNX file it runs (None: exported when loaded).
        self.weights: Path = path
        self.onnx_file: Path | None = bundled_onnx(path, self.card, runtime)
        if self.onnx_file is not None:
            data = self.onnx_file.read_bytes()
        else:
            from fer_core.export import export_onnx

            data = export_onnx(path, runtime=runtime)
        self.model = OnnxModel(data, classifier=read_tensor(path, "fc.weight"), runtime=runtime, threads=threads)
        self.runtime: str = runtime
        self.model_name: str = f"{self.card['architecture']}@{self.card.get('code_version', 'unknown')}"
        self._lock = threading.Lock()  # one model for the app's threads

    # ------------------------------------------------------------ faces

    def _batches(self, faces: np.ndarray, batch_size: int) -> list[np.ndarray]:
        faces = check_face_batch(faces, name="faces")
        if faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"faces must be 48x48, got {faces.shape[1:]}; use fer_core.faces.to_model_input")
        return [normalise_faces(faces[start:start + batch_size]) for start in range(0, len(faces), batch_size)]

    def logits(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Uncalibrated logits (N, K) of uint8 faces (N, 48, 48) (or one face (48, 48))."""
        out = []
        for x in self._batches(faces, batch_size):
            with self._lock:
                if self.tta and self.mirror_gap == math.inf:
                    # A face and its mirror go through the model in one call: at batch 1 one run, not two.
                    both = self.model(np.concatenate([x, x[..., ::-1]]), part_of=2 * len(x))
                    logits = (both[:len(x)] + both[len(x):]) / 2
                else:
                    logits = np.array(self.model(x), dtype=np.float32)
                    if self.tta:
                        self._gated_mirror(x, logits)
            out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def _gated_mirror(self, x: np.ndarray, logits: np.ndarray) -> None:
        """Average into ``logits`` (the plain pass of ``x``, changed in place) the mirror's logits of the
        faces it leaves unclear (top two logits closer than :attr:`mirror_gap`)."""
        unsure = np.flatnonzero(top_two_gap(logits) < self.mirror_gap)
        if unsure.size:
            mirrored = self.model(x[unsure][..., ::-1], part_of=len(x))
            logits[unsure] = (mirrored + logits[unsure]) / 2

    def predict_faces(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Calibrated probabilities (N, K) of uint8 faces (N, 48, 48); rows sum to 1."""
        return softmax(self.logits(faces, batch_size=batch_size), self.temperature)

    def feature_maps(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """The last feature maps (N, C, h, w) of uint8 faces (N, 48, 48), plain pass (no mirror)."""
        out = []
        for x in self._batches(faces, batch_size):
            with self._lock:
                out.append(self.model.feature_maps(x))
        if out:
            return np.concatenate(out)
        return np.zeros((0, self.model.classifier.shape[1], 0, 0), dtype=np.float32)

    def features(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Penultimate-layer features (N, C): the last feature maps, average-pooled."""
        maps = self.feature_maps(faces, batch_size=batch_size)
        return maps.mean(axis=(2, 3)) if len(maps) else np.zeros((0, maps.shape[1]), dtype=np.float32)

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


@functools.lru_cache(maxsize=4)
def get_predictor(weights: str | None = None, runtime: str = "auto") -> Predictor:
    """The predictor for ``weights`` (default: the bundled ones), built once per process."""
    return Predictor(weights, runtime=runtime)
