"""annotate: the relabelling store (SQLAlchemy over SQLite by default) and the queue that picks the next face.

The store (:mod:`annotate.store`) keeps annotators, faces, append-only decisions and leases in
one database (:func:`open_store`, default :func:`default_db_url`); the queue
(:mod:`annotate.queue`) ranks a data set's faces by a strategy and leases them to annotators;
:mod:`annotate.export` writes the corrections. The app's other tabs do not depend on this
package.
"""

from __future__ import annotations

from .engine import default_db_url
from .errors import AnnotateError, StoreBusyError, StoreUnavailableError, UnknownFaceError
from .export import corrections, export_corrections, export_ferplus, ferplus_votes
from .labels import LABELS, NOT_A_FACE, SKIP, UNSURE, VOTE_LABELS
from .queue import STRATEGIES, Progress, Queue, QueuedFace, Strategy
from .store import (
    VOTE_COLUMNS,
    Agreement,
    DecisionRecord,
    Store,
    content_hash,
    open_store,
)

__all__ = [
    "open_store",
    "default_db_url",
    "Store",
    "Queue",
    "QueuedFace",
    "Progress",
    "Agreement",
    "DecisionRecord",
    "Strategy",
    "STRATEGIES",
    "LABELS",
    "VOTE_LABELS",
    "VOTE_COLUMNS",
    "NOT_A_FACE",
    "UNSURE",
    "SKIP",
    "content_hash",
    "corrections",
    "ferplus_votes",
    "export_corrections",
    "export_ferplus",
    "AnnotateError",
    "UnknownFaceError",
    "StoreBusyError",
    "StoreUnavailableError",
]
