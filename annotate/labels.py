"""What an annotator can answer, and the checks on names and free text before they reach the store.

An answer is one of the seven FER2013 emotions (:data:`fer_core.labels.EMOTIONS`), ``not_a_face``
(the crop shows no face), ``unsure`` (a face whose expression the annotator cannot name) or
``skip`` (no opinion: the face goes back to the others, not to this annotator).
``skip`` is recorded but is not a vote; every other answer is.

Names and free text are stored exactly as given (any Unicode, quotes, ``'; DROP TABLE``): they only
ever reach SQL as bound parameters. The checks here refuse what no person means to type (empty or
blank names, control characters, novels in a name field).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from fer_core.labels import DISPLAY_NAMES, EMOTIONS, NUM_CLASSES, normalise

from .errors import AnnotateError

__all__ = [
    "NOT_A_FACE",
    "UNSURE",
    "SKIP",
    "VOTE_LABELS",
    "LABELS",
    "ANSWER_NAMES",
    "MAX_NAME_LENGTH",
    "MAX_TAG_LENGTH",
    "MAX_NOTE_LENGTH",
    "check_label",
    "check_annotator",
    "check_dataset",
    "check_tag",
    "check_note",
]

NOT_A_FACE: str = "not_a_face"
UNSURE: str = "unsure"
SKIP: str = "skip"

#: Answers that count as an opinion on a face, in the order of the vote-count columns.
VOTE_LABELS: tuple[str, ...] = (*EMOTIONS, NOT_A_FACE, UNSURE)
#: Every answer the store accepts.
LABELS: tuple[str, ...] = (*VOTE_LABELS, SKIP)
#: How each answer reads on screen.
ANSWER_NAMES: dict[str, str] = {**DISPLAY_NAMES, NOT_A_FACE: "Not a face", UNSURE: "Unsure", SKIP: "Skip"}

#: Longest annotator name (characters). The decisions table repeats no names, so this is
#: only a guard against pasting a paragraph into the name box.
MAX_NAME_LENGTH: int = 100
#: Longest data set name, model version or strategy name.
MAX_TAG_LENGTH: int = 200
#: Longest free-text note attached to a decision.
MAX_NOTE_LENGTH: int = 2000

# Spellings of the three extra answers, after the same folding as fer_core.labels.normalise
# (lower case, separators removed).
_EXTRA = {"notaface": NOT_A_FACE, "noface": NOT_A_FACE, "nf": NOT_A_FACE, "unsure": UNSURE, "unknown": UNSURE,
          "skip": SKIP}


def check_label(label: Any) -> str:
    """Return the canonical answer for ``label`` or raise :class:`AnnotateError`.

    Accepts the names of :data:`LABELS` in any case and with any separators (``"Happy"``,
    ``"not a face"``), emotion synonyms (``"happiness"``), and FER2013 ids ``0``..``6``.
    """
    if isinstance(label, bool):
        raise AnnotateError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
    if isinstance(label, int) and 0 <= label < NUM_CLASSES:
        return EMOTIONS[label]
    if isinstance(label, str):
        key = "".join(ch for ch in label.strip().lower() if ch.isalnum())
        if key in _EXTRA:
            return _EXTRA[key]
        emotion = normalise(label)
        if emotion is not None:
            return emotion
    raise AnnotateError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")


def _check_text(value: Any, what: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise AnnotateError(f"{what} must be text, got {type(value).__name__}")
    if not value.strip():
        raise AnnotateError(f"{what} is empty; type a name")
    if len(value) > max_length:
        raise AnnotateError(f"{what} is {len(value)} characters long; at most {max_length} are allowed")
    # Control characters (NUL, newlines, escapes) are never part of a name, and PostgreSQL
    # refuses NUL in text: refuse them here with a message rather than deep in a driver.
    bad = [ch for ch in value if unicodedata.category(ch) == "Cc"]
    if bad:
        raise AnnotateError(f"{what} {value!r} contains control characters ({', '.join(map(repr, bad[:3]))})")
    return value


def check_annotator(name: Any) -> str:
    """Return ``name`` unchanged if it is a usable annotator name, else raise :class:`AnnotateError`."""
    return _check_text(name, "annotator name", MAX_NAME_LENGTH)


def check_dataset(name: Any) -> str:
    """Return ``name`` unchanged if it is a usable data set name, else raise :class:`AnnotateError`."""
    return _check_text(name, "data set name", MAX_TAG_LENGTH)


def check_tag(value: Any, what: str) -> str | None:
    """A short optional text (model version, strategy name): ``None`` stays ``None``."""
    if value is None:
        return None
    return _check_text(value, what, MAX_TAG_LENGTH)


def check_note(value: Any) -> str | None:
    """An optional free-text note: any Unicode, newlines allowed, at most :data:`MAX_NOTE_LENGTH` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise AnnotateError(f"note must be text, got {type(value).__name__}")
    if len(value) > MAX_NOTE_LENGTH:
        raise AnnotateError(f"note is {len(value)} characters long; at most {MAX_NOTE_LENGTH} are allowed")
    if "\x00" in value:
        raise AnnotateError("note contains a NUL character")
    return value or None
