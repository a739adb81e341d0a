"""The seven emotions and the names found in the wild."""

from __future__ import annotations

import pytest

from fer_core.labels import DISPLAY_NAMES, EMOTION_TO_ID, EMOTIONS, normalise, to_id


class TestEmotions:
    def test_fer2013_ids(self) -> None:
        assert EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        assert [EMOTION_TO_ID[e] for e in EMOTIONS] == list(range(7))

    def test_every_emotion_has_a_display_name(self) -> None:
        assert set(DISPLAY_NAMES) == set(EMOTIONS)
        assert all(name[0].isupper() for name in DISPLAY_NAMES.values())


class TestNormalise:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("angry", "angry"), ("Angry", "angry"), ("anger", "angry"), ("ANGER", "angry"),
            ("disgusted", "disgust"), ("fearful", "fear"), ("happiness", "happy"), ("Happy ", "happy"),
            ("sadness", "sad"), ("surprised", "surprise"), ("Surprise", "surprise"), ("neutral", "neutral"),
            ("0", "angry"), ("6", "neutral"),
        ],
    )
    def test_names_in_the_wild(self, name: str, expected: str) -> None:
        assert normalise(name) == expected
        assert to_id(name) == EMOTIONS.index(expected)

    @pytest.mark.parametrize("name", ["contempt", "Contempt", "unknown", "", "7", "happy-sad", None, 3])
    def test_anything_else_is_none(self, name: object) -> None:
        assert normalise(name) is None  # type: ignore[arg-type]
        assert to_id(name) is None  # type: ignore[arg-type]
