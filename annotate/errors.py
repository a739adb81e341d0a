"""The errors the annotate package raises; each message is for a person, not a log parser."""

from __future__ import annotations

from fer_core._validation import FERError

__all__ = ["AnnotateError", "UnknownFaceError", "StoreBusyError"]


class AnnotateError(FERError):
    """Bad input to the relabelling store or queue: an unknown label, an empty name, a bad filter."""


class UnknownFaceError(AnnotateError):
    """A ``sample_id`` that the store does not hold for the given data set."""


class StoreBusyError(AnnotateError):
    """The database stayed locked past the retry deadline (a stuck writer, a full disk, a dead server).

    Ordinary contention never reaches a caller: busy and locked errors are retried with
    backoff for :data:`annotate.engine.RETRY_DEADLINE_S` seconds first.
    """
