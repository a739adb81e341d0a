"""Labels of faces drawn on photos: sized from their face, inside the image, never over each other."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.draw import (
    EMOTION_COLOURS,
    LABEL_MAX_PX,
    LABEL_MIN_PX,
    PlacedLabel,
    draw_predictions,
    place_labels,
)
from fer_core.predict import FacePrediction


def _face(box, label="happy", confidence=0.92) -> FacePrediction:
    probs = {name: 0.0 for name in EMOTION_COLOURS}
    probs[label] = confidence
    return FacePrediction(box=box, probabilities=probs, label=label, confidence=confidence, detector_score=0.9)


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_layout(labels: list[PlacedLabel], shape: tuple[int, int]) -> None:
    height, width = shape
    for i, label in enumerate(labels):
        left, top, right, bottom = label.rect
        assert 0 <= left < right <= width and 0 <= top < bottom <= height, f"label {i + 1} leaves the image"
        for j in range(i):
            assert not _intersect(label.rect, labels[j].rect), f"labels {j + 1} and {i + 1} overlap"


#: Scenes: (image height, width) and face boxes (x, y, w, h); side by side, touching, small and large.
SCENES = {
    "two small faces touching": ((300, 400), [(100, 120, 40, 40), (140, 120, 40, 40)]),
    "three small faces in a row": ((240, 320), [(20, 100, 36, 36), (60, 100, 36, 36), (100, 104, 36, 36)]),
    "large face beside small ones": ((600, 800), [(100, 200, 300, 300), (400, 200, 60, 60), (460, 210, 60, 60)]),
    "faces at the top edge": ((300, 400), [(0, 0, 120, 120), (120, 0, 120, 120), (240, 2, 120, 120)]),
    "faces at the bottom right corner": ((300, 400), [(300, 200, 100, 100), (200, 200, 100, 100)]),
    "one face filling the image": ((384, 384), [(0, 0, 384, 384)]),
    "a crowd in a small photo": ((200, 260), [(10 + 50 * i, 60 + 40 * (i % 2), 40, 40) for i in range(5)]),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_labels_stay_inside_and_do_not_overlap(name: str) -> None:
    shape, boxes = SCENES[name]
    labels = place_labels([_face(b) for b in boxes], shape)
    assert [label.text.split()[0] for label in labels] == [str(i + 1) for i in range(len(boxes))]
    _check_layout(labels, shape)


def test_labels_stay_next_to_their_face() -> None:
    """Each label touches or nearly touches its own box, so it reads as that face's."""
    shape, boxes = SCENES["three small faces in a row"]
    for label, (x, y, w, h) in zip(place_labels([_face(b) for b in boxes], shape), boxes):
        left, top, right, bottom = label.rect
        gap_x = max(0, left - (x + w), x - right)
        gap_y = max(0, top - (y + h), y - bottom)
        assert gap_x + gap_y <= 2 * (bottom - top), (label.rect, (x, y, w, h))


def test_a_label_sits_above_its_face_when_there_is_room() -> None:
    (label,) = place_labels([_face((100, 120, 80, 80))], (300, 400))
    assert label.rect[3] == 120 and label.rect[0] == 100
    (label,) = place_labels([_face((100, 0, 80, 80))], (300, 400))  # no room above: inside the top edge
    assert label.rect[1] == 0 and label.rect[3] <= 80


def test_text_height_follows_the_face_not_the_image() -> None:
    sizes = [40, 80, 160, 320]
    for shape in ((600, 800), (1200, 1600)):
        heights = [place_labels([_face((10, 200, s, s))], shape)[0].text_height for s in sizes]
        assert heights == sorted(heights) and heights[0] < heights[-1], heights
    small_in_small = place_labels([_face((10, 100, 60, 60))], (300, 400))[0].text_height
    small_in_large = place_labels([_face((10, 100, 60, 60))], (1200, 1600))[0].text_height
    assert small_in_small == small_in_large


def test_text_height_stays_readable_and_bounded() -> None:
    tiny = place_labels([_face((50, 50, 10, 10))], (300, 400))[0]
    huge = place_labels([_face((0, 0, 1200, 1200))], (1280, 1280))[0]
    assert LABEL_MIN_PX - 3 <= tiny.text_height <= LABEL_MIN_PX + 3
    assert huge.text_height <= LABEL_MAX_PX + 3
    # A label never grows wider than its image: the text shrinks instead.
    narrow = place_labels([_face((0, 0, 120, 120), confidence=1.0)], (120, 120))[0]
    assert narrow.rect[2] - narrow.rect[0] <= 120


def test_scale_maps_boxes_before_placing() -> None:
    boxes = [(1000, 1000, 400, 400), (1400, 1000, 400, 400)]
    labels = place_labels([_face(b) for b in boxes], (640, 960), scale=0.32)
    _check_layout(labels, (640, 960))
    assert labels[0].rect[3] == round(1000 * 0.32)  # above the first (scaled) box


def test_drawn_labels_keep_every_number_visible() -> None:
    """Side by side, each label is drawn where :func:`place_labels` put it, in its face's colour."""
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    faces = [_face((100, 120, 40, 40), "happy"), _face((140, 120, 40, 40), "sad"), _face((180, 120, 40, 40), "angry")]
    out = draw_predictions(image, faces)
    for face, label in zip(faces, place_labels(faces, image.shape)):
        left, top, right, bottom = label.rect
        patch = out[top:bottom, left:right].reshape(-1, 3)
        colour = np.array(EMOTION_COLOURS[face.label])
        assert (patch == colour).all(axis=1).mean() > 0.5  # the background, in the face's colour
        assert not (patch == colour).all()  # with text on it
        assert tuple(out[bottom - 1, left]) == EMOTION_COLOURS[face.label]
