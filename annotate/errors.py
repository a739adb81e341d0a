"""The errors the annotate package raises; each message is for a person, not a log parser."""

from __future__ import annotations

from fer_core._validation import FERError

__all__ = ["AnnotateError", "UnknownFaceError", "StoreBusyError", "StoreUnavailableError"]


class AnnotateError(FERError):
    """Bad input to the relabelling store or queue: an unknown label, an empty name, a bad filter."""


class UnknownFaceError(AnnotateError):
    """A ``sample_id`` that the store does not hold for the given data set."""


class StoreBusyError(AnnotateError):
    """The database stayed locked past the retry deadline (a stuck writer, a full disk, a dead server).

    Ordinary contention never reaches a caller: busy and locked errors are retried with
    backoff for :data:`annotate.engine.RETRY_DEADLINE_S` seconds first.
    """


class StoreUnavailableError(StoreBusyError):
    """The database server could not be reached for :data:`annotate.engine.RECONNECT_DEADLINE_S` seconds
    (down, restarting).

    Nothing half-written stays behind: the transaction that met the lost connection was rolled
    back by the server, or committed whole. Try again once the server is back.
    """
