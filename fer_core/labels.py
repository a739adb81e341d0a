"""The seven FER2013 emotions: ids, names, display names and synonyms found in the wild.

FER2013 label ids: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
"""

from __future__ import annotations

__all__ = [
    "EMOTIONS",
    "NUM_CLASSES",
    "DISPLAY_NAMES",
    "EMOTION_TO_ID",
    "SYNONYMS",
    "normalise",
    "to_id",
]

#: Canonical names, indexed by FER2013 label id.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(EMOTIONS)

DISPLAY_NAMES: dict[str, str] = {
    "angry": "Angry",
    "disgust": "Disgust",
    "fear": "Fear",
    "happy": "Happy",
    "sad": "Sad",
    "surprise": "Surprise",
    "neutral": "Neutral",
}

EMOTION_TO_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

#: Names seen in published copies of FER2013, FER+, AffectNet, RAF-DB, CK+ and
#: their folder layouts, mapped to the canonical seven. Keys are lower case
#: with separators removed (see ``_key``).
SYNONYMS: dict[str, str] = {
    "angry": "angry",
    "anger": "angry",
    "mad": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "disgusting": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
    "neutrality": "neutral",
    "calm": "neutral",
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch.isalnum())


def normalise(name: str) -> str | None:
    """Map an emotion name found in the wild to one of :data:`EMOTIONS`.

    Case, surrounding blanks and separators are ignored (``"Angry"``,
    ``"anger"``, ``"SADNESS"``, ``"surprised"``). A digit string ``"0"``..``"6"``
    is read as a FER2013 id. Anything outside the seven (``"contempt"``,
    ``"unknown"``) returns ``None``.
    """
    if not isinstance(name, str):
        return None
    key = _key(name)
    if key.isdigit() and int(key) < NUM_CLASSES:
        return EMOTIONS[int(key)]
    return SYNONYMS.get(key)


def to_id(name: str) -> int | None:
    """FER2013 id of an emotion name found in the wild, or ``None``."""
    emotion = normalise(name)
    return None if emotion is None else EMOTION_TO_ID[emotion]
