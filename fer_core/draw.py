"""Drawing predictions on photos: a box per face in its emotion's colour, with label and confidence.

Used by the app (upload and webcam) and by anyone who wants the same picture from code:

    >>> from fer_core.draw import draw_predictions
    >>> picture = draw_predictions(rgb, predictor.predict_image(rgb))
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fer_core.explain import blend_heatmap
from fer_core.faces import crop_square
from fer_core.labels import DISPLAY_NAMES
from fer_core.predict import FacePrediction

__all__ = ["EMOTION_COLOURS", "draw_predictions", "fit_for_display", "overlay_saliency"]

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
    a resized copy (see :func:`fit_for_display`). The ``selected`` face gets a thicker box.
    """
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    base = max(1, round(max(height, width) / 400))
    font_scale = max(0.4, base * 0.45)
    for index, prediction in enumerate(predictions):
        colour = EMOTION_COLOURS.get(prediction.label, _FALLBACK_COLOUR)
        x, y, w, h = (round(v * scale) for v in prediction.box)
        thickness = base * (3 if index == selected else 1) + (1 if index == selected else 0)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thickness)
        text = _label_text(prediction, index + 1 if numbered else None)
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, base)
        # The label sits above the box, or inside its top edge when the box touches the top.
        top = y - th - baseline - 2 * base if y - th - baseline - 2 * base >= 0 else y
        left = min(max(0, x), max(0, width - tw - 2 * base))
        cv2.rectangle(out, (left, top), (left + tw + 2 * base, top + th + baseline + 2 * base), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(out, text, (left + base, top + th + base), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    text_colour, base, cv2.LINE_AA)
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

