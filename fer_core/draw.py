"""Drawing predictions on photos: a box per face in its emotion's colour, with label and confidence.

Used by the app (upload and webcam) and by anyone who wants the same picture from code:

    >>> from fer_core.draw import draw_predictions
    >>> picture = draw_predictions(rgb, predictor.predict_image(rgb))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fer_core.explain import blend_heatmap
from fer_core.faces import crop_square
from fer_core.labels import DISPLAY_NAMES
from fer_core.predict import FacePrediction

__all__ = ["EMOTION_COLOURS", "PlacedLabel", "draw_predictions", "fit_for_display", "overlay_saliency", "place_labels"]

#: One colour per emotion (RGB), readable on photos and distinct for common colour blindness
#: (Okabe-Ito palette, with grey for neutral).
EMOTION_COLOURS: dict[str, tuple[int, int, int]] = {
    "angry": (213, 94, 0),
    "disgust": (0, 158, 115),
    "fear": (204, 121, 167),
    "happy": (240, 228, 66),
    "sad": (0, 114, 178),
    "surprise": (230, 159, 0),
    "neutral": (190, 190, 190),
}
_FALLBACK_COLOUR = (86, 180, 233)

#: A label's text height as a fraction of its face box's height, and its bounds in pixels: large
#: enough to read on a small face, not so large that it covers a close-up.
LABEL_FACE_FRACTION = 0.2
LABEL_MIN_PX = 12
LABEL_MAX_PX = 40
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_PX = cv2.getTextSize("0", _FONT, 1.0, 1)[0][1]  # text height of _FONT at scale 1


def fit_for_display(rgb: np.ndarray, max_side: int = 1280, min_side: int = 384) -> tuple[np.ndarray, float]:
    """Resize ``rgb`` for showing with boxes; returns the image and the factor applied to it.

    A longer side above ``max_side`` is shrunk to it (area interpolation). A small image (such as
    a 48x48 face crop) is enlarged by a whole factor with nearest-neighbour scaling, so its pixels
    stay crisp and the labels drawn on it stay readable.
    """
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale
    if longest < min_side:
        factor = -(-min_side // longest)
        return cv2.resize(rgb, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST), float(factor)
    return rgb, 1.0


def _label_text(prediction: FacePrediction, number: int | None) -> str:
    name = DISPLAY_NAMES.get(prediction.label, prediction.label)
    prefix = f"{number} " if number is not None else ""
    return f"{prefix}{name} {prediction.confidence:.0%}"


#: (left, top, right, bottom) in pixels of the drawn image; right and bottom are exclusive.
Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class PlacedLabel:
    """Where one face's label goes and how large its text is."""

    text: str
    rect: Rect  # the filled background, text included
    font_scale: float
    thickness: int
    text_height: int  # pixels, from the top of capitals to the baseline
    padding: int


def _label_size(text: str, face_height: int, image_width: int) -> tuple[float, int, int, int, int, int]:
    """Font scale, thickness, text height, padding, width and height of a label for a face ``face_height`` tall.

    The text is :data:`LABEL_FACE_FRACTION` of the face's height, within :data:`LABEL_MIN_PX` and
    :data:`LABEL_MAX_PX`, and smaller when it would be wider than the image.
    """
    target = min(max(face_height * LABEL_FACE_FRACTION, LABEL_MIN_PX), LABEL_MAX_PX)
    while True:
        font_scale = target / _FONT_PX
        thickness = max(1, round(target / 14))
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
        padding = max(2, round(th / 4))
        width = tw + 2 * padding
        if width <= image_width or target <= LABEL_MIN_PX:
            return font_scale, thickness, th, padding, width, th + baseline + 2 * padding
        target = max(LABEL_MIN_PX, target * image_width / width - 0.5)


def _overlaps(rects: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Overlap area of every candidate rect (n, 4) with every other rect (m, 4): an (n, m) array."""
    if len(others) == 0:
        return np.zeros((len(rects), 0))
    w = np.minimum(rects[:, None, 2], others[None, :, 2]) - np.maximum(rects[:, None, 0], others[None, :, 0])
    h = np.minimum(rects[:, None, 3], others[None, :, 3]) - np.maximum(rects[:, None, 1], others[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _best_spot(xs: np.ndarray, ys: np.ndarray, size: tuple[int, int], preferred: tuple[int, int],
               placed: np.ndarray, faces: np.ndarray) -> tuple[int, int] | None:
    """The free top-left corner among ``xs`` x ``ys`` nearest to ``preferred``, or None when all collide.

    Free: not overlapping a label already ``placed``. Covering another face costs extra, so a
    label sits beside a neighbour's face rather than on it when both are as near.
    """
    w, h = size
    cx, cy = (a.ravel() for a in np.meshgrid(np.unique(xs), np.unique(ys)))
    rects = np.stack([cx, cy, cx + w, cy + h], axis=1)
    free = ~(_overlaps(rects, placed) > 0).any(axis=1)
    if not free.any():
        return None
    cost = np.abs(cx - preferred[0]) + np.abs(cy - preferred[1]) + 2 * _overlaps(rects, faces).sum(axis=1) / w
    best = int(np.argmin(np.where(free, cost, np.inf)))
    return int(cx[best]), int(cy[best])


def place_labels(
    predictions: Sequence[FacePrediction],
    image_shape: tuple[int, ...],
    scale: float = 1.0,
    *,
    numbered: bool = True,
) -> list[PlacedLabel]:
    """Where :func:`draw_predictions` puts each face's label on an image of ``image_shape``.

    A label's text height follows its face's box (see :func:`_label_size`). Labels are placed in
    order, each above its box, or inside its top edge or below it when there is no room above,
    shifted to the nearest free spot when it would overlap a label already placed. Every label
    stays inside the image; two labels overlap only when the image has no free spot left for one.
    """
    height, width = image_shape[:2]
    boxes = [tuple(round(v * scale) for v in p.box) for p in predictions]
    face_rects = np.array([(x, y, x + w, y + h) for x, y, w, h in boxes], dtype=np.int64).reshape(-1, 4)
    placed: list[PlacedLabel] = []
    for index, (prediction, (x, y, bw, bh)) in enumerate(zip(predictions, boxes)):
        text = _label_text(prediction, index + 1 if numbered else None)
        font_scale, thickness, th, padding, w, h = _label_size(text, bh, width)
        taken = np.array([p.rect for p in placed], dtype=np.int64).reshape(-1, 4)
        others = np.delete(face_rects, index, axis=0)
        max_x, max_y = max(0, width - w), max(0, height - h)
        preferred = (min(max(x, 0), max_x), y - h)
        xs = np.clip(np.array([x, x + bw - w, *taken[:, 2], *(taken[:, 0] - w)]), 0, max_x)
        ys = np.clip(np.array([y - h, y, y + bh, *(taken[:, 1] - h), *taken[:, 3]]), 0, max_y)
        spot = _best_spot(xs, ys, (w, h), preferred, taken, others)
        if spot is None:  # crowded: try every position on a grid
            step = max(1, h // 2)
            grid_x = np.append(np.arange(0, max_x + 1, step), max_x)
            grid_y = np.append(np.arange(0, max_y + 1, step), max_y)
            spot = _best_spot(grid_x, grid_y, (w, h), preferred, taken, others)
        left, top = spot if spot is not None else (preferred[0], min(max(preferred[1], 0), max_y))
        placed.append(PlacedLabel(text, (left, top, left + w, top + h), font_scale, thickness, th, padding))
    return placed


def draw_predictions(
    rgb: np.ndarray,
    predictions: Sequence[FacePrediction],
    *,
    selected: int | None = None,
    scale: float = 1.0,
    numbered: bool = True,
) -> np.ndarray:
    """A copy of ``rgb`` with every face boxed and labelled (``"1 Happy 92%"``).

    ``scale`` maps the predictions' boxes (in the original image) onto ``rgb`` when ``rgb`` is
    a resized copy (see :func:`fit_for_display`). The ``selected`` face gets a thicker box. The
    labels are sized from their faces and placed so they do not overlap (see :func:`place_labels`).
    """
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    base = max(1, round(max(height, width) / 400))
    for index, prediction in enumerate(predictions):
        colour = EMOTION_COLOURS.get(prediction.label, _FALLBACK_COLOUR)
        x, y, w, h = (round(v * scale) for v in prediction.box)
        thickness = base * (3 if index == selected else 1) + (1 if index == selected else 0)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thickness)
    # Labels after every box, so no box line crosses a label.
    for prediction, label in zip(predictions, place_labels(predictions, out.shape, scale, numbered=numbered)):
        colour = EMOTION_COLOURS.get(prediction.label, _FALLBACK_COLOUR)
        left, top, right, bottom = label.rect
        cv2.rectangle(out, (left, top), (right - 1, bottom - 1), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(out, label.text, (left + label.padding, top + label.padding + label.text_height), _FONT,
                    label.font_scale, text_colour, label.thickness, cv2.LINE_AA)
    return out


def overlay_saliency(
    rgb: np.ndarray, predictions: Sequence[FacePrediction], maps: Sequence[np.ndarray], *, scale: float = 1.0
) -> np.ndarray:
    """Blend each face's saliency map (48x48, [0, 1]) over the square the model saw of it."""
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    for prediction, cam in zip(predictions, maps):
        if prediction.detector_score is None:  # the whole image was the face: centre square
            bx, by, bw, bh = prediction.box
            side = min(bw, bh)
            square = (bx + (bw - side) // 2, by + (bh - side) // 2, side, side)
        else:
            square = crop_square(prediction.box)
        x, y, side, _ = (round(v * scale) for v in square)
        x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
        if x0 >= x1 or y0 >= y1:
            continue
        full = cv2.resize(np.asarray(cam, dtype=np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
        part = full[y0 - y : y1 - y, x0 - x : x1 - x]
        out[y0:y1, x0:x1] = blend_heatmap(out[y0:y1, x0:x1], part)
    return out

