"""Which face of a queue's order an annotator gets next: the counters a lease is decided on, and the scan.

:class:`~annotate.store.Store` reads one slice of the order's counters at a time
(:class:`QueueState`) and :func:`scan` finds the first face the annotator may be given, so a
lease costs what the faces ahead of it cost. :class:`~annotate.queue.Queue` uses the same
rules (:func:`eligible_mask`) for its progress counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, select

from .errors import AnnotateError
from .models import Lease

__all__ = [
    "LeaseGrant",
    "QueueState",
    "check_lease_args",
    "check_holds_lease",
    "eligible_mask",
    "first_eligible",
    "first_not_done",
    "scan",
    "SCAN_FIRST",
    "SCAN_MOST",
]


@dataclass(frozen=True)
class LeaseGrant:
    """A face leased to an annotator by :meth:`Store.lease_next`."""

    face_id: int
    sample_id: str
    position: int  #: index of the face in the order that was given
    opinions: int  #: annotators who have voted on it so far
    expires_at: datetime


@dataclass(frozen=True)
class QueueState:
    """Per-face counters of one data set, seen by one annotator (see :meth:`Store.queue_state`)."""

    votes: dict[int, int]  #: face id -> number of annotators with a vote on it (faces without votes absent)
    mine: frozenset[int]  #: face ids this annotator answered (``skip`` included) and did not undo
    leased: frozenset[int]  #: face ids under a live lease held by someone else
    my_votes: frozenset[int] = frozenset()  #: the faces of ``mine`` with an answer other than ``skip``


def check_lease_args(second_opinion: bool, opinions_needed: int, lease_minutes: float) -> None:
    """Refuse (:class:`AnnotateError`) an ``opinions_needed`` under 2 or a lease length that is not a positive number."""
    if isinstance(opinions_needed, bool) or not isinstance(opinions_needed, (int, np.integer)) or opinions_needed < 2:
        raise AnnotateError(f"opinions_needed must be an integer of at least 2, got {opinions_needed!r}")
    if not isinstance(lease_minutes, (int, float)) or not np.isfinite(lease_minutes) or lease_minutes <= 0:
        raise AnnotateError(f"lease_minutes must be a positive number, got {lease_minutes!r}")


def check_holds_lease(conn: Connection, face_id: int, aid: int, sample_id: str, now: datetime) -> None:
    """Raise :class:`AnnotateError` unless annotator ``aid`` holds the lease row of ``face_id``.

    Their own row counts even when it has run out, as long as no one else has taken the face
    since (taking it replaces the row); a missing row or another person's row refuses.
    """
    holder = conn.execute(select(Lease.annotator_id, Lease.expires_at).where(Lease.face_id == face_id)).first()
    if holder is not None and holder.annotator_id == aid:
        return
    if holder is not None and holder.expires_at > now:
        raise AnnotateError(f"face {sample_id!r} is now leased to another annotator (your lease on it ran out "
                            "or it was never yours); nothing was recorded: press Start for your next face")
    raise AnnotateError(f"you do not hold face {sample_id!r} (it was not given to you, or your lease on it ran "
                        "out); nothing was recorded: press Start for your next face")


def eligible_mask(order: np.ndarray, state: QueueState, second_opinion: bool, opinions_needed: int,
                  *, ignore_leases: bool = False) -> np.ndarray:
    """Which faces of ``order`` the annotator may be given."""
    votes = np.array([state.votes.get(int(f), 0) for f in order], dtype=np.int64)
    wanted = (votes >= 1) & (votes < opinions_needed) if second_opinion else votes == 0
    blocked = set(state.mine) if ignore_leases else set(state.mine) | set(state.leased)
    if blocked:
        wanted &= ~np.isin(order, np.fromiter(blocked, dtype=np.int64, count=len(blocked)))
    return wanted


def first_eligible(order: np.ndarray, state: QueueState, second_opinion: bool, opinions_needed: int) -> int | None:
    """Position of the first face of ``order`` the annotator may be given now, or None."""
    hits = np.flatnonzero(eligible_mask(order, state, second_opinion, opinions_needed))
    return int(hits[0]) if len(hits) else None


def first_not_done(order: np.ndarray, state: QueueState, second_opinion: bool, opinions_needed: int) -> int | None:
    """Position of the first face of ``order`` the annotator may still be given some day, unless an answer is undone.

    Done for good: answered by the annotator, or holding every vote the mode takes (one without
    second opinions, ``opinions_needed`` with them). A face leased by someone else, or without
    a vote yet in second-opinion mode, may come back: it is not done.
    """
    votes = np.array([state.votes.get(int(f), 0) for f in order], dtype=np.int64)
    done = votes >= (opinions_needed if second_opinion else 1)
    if state.mine:
        done |= np.isin(order, np.fromiter(state.mine, dtype=np.int64, count=len(state.mine)))
    hits = np.flatnonzero(~done)
    return int(hits[0]) if len(hits) else None


#: Faces of a queue's order read at a time when looking for the next one to lease (then doubled).
SCAN_FIRST = 256
SCAN_MOST = 8192


def scan(order: np.ndarray, state_of: Callable[[np.ndarray], QueueState], second_opinion: bool,
         opinions_needed: int, *, start: int = 0) -> tuple[int | None, QueueState | None, int]:
    """Position of the first eligible face of ``order`` at or after ``start``, the counters of its slice, and
    how many of the order's leading faces are done for good (:func:`first_not_done`).

    The faces before ``start`` must be done for good. The order is read in slices (256 faces, then
    twice as many each time), so a lease costs what the faces ahead of it cost, not what every
    vote of the data set costs.
    """
    size, state, done = SCAN_FIRST, None, None
    while start < len(order):
        ids = order[start:start + size]
        state = state_of(ids)
        if done is None:
            not_done = first_not_done(ids, state, second_opinion, opinions_needed)
            done = None if not_done is None else start + not_done
        position = first_eligible(ids, state, second_opinion, opinions_needed)
        if position is not None:
            return start + position, state, done
        start, size = start + len(ids), min(size * 2, SCAN_MOST)
    return None, state, len(order) if done is None else done
