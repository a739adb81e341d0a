"""The relabelling queue: which face an annotator sees next, and how far the work has got.

A :class:`Queue` wraps the candidate faces of one data set (a DataFrame with
``sample_id``, ``emotion`` (FER2013 id 0..6), ``quality_score`` and, optionally, the
model's probabilities) and a :class:`~annotate.store.Store`. It ranks the faces by a named
strategy (:data:`STRATEGIES`), filters them, and leases the first one the annotator may see
(:meth:`Queue.next_face`); :meth:`Queue.submit` records the answer.

Strategies
----------
``likely_label_error``
    Confident learning (Northcutt et al., 2021): the faces cleanlab's
    :func:`cleanlab.filter.find_label_issues` flags as probably mislabelled, ranked by
    self-confidence (the model's probability of the given label), lowest first. When the
    faces hold fewer than two given labels (one emotion sent from the Browse tab), or cleanlab
    cannot rank them, all of them are ranked by self-confidence instead, lowest first
    (:meth:`Queue.ranking_note` says so).
``model_disagrees``
    Faces whose most probable class is not the given label, the most confident
    disagreement (highest top probability) first.
``low_quality``
    Lowest ``quality_score`` first (blank frames, blur, bad exposure: ``not_a_face`` candidates).
``random``
    A seeded shuffle of all faces: an unbiased sample, e.g. to estimate the error rate.

The probabilities should be out-of-sample (cross-validated, or from a model that did not
train on these faces): a model scored on its own training faces agrees with their labels,
noise included, and finds few errors. Ties keep the candidates' row order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from fer_core.labels import EMOTIONS, NUM_CLASSES, normalise

from .errors import AnnotateError
from .labels import check_dataset
from .leasing import check_lease_args, eligible_mask
from .store import Agreement, DecisionRecord, Store, content_hash

__all__ = [
    "Strategy",
    "STRATEGIES",
    "QueuedFace",
    "Progress",
    "Queue",
    "rank_likely_label_error",
    "rank_self_confidence",
    "rank_model_disagrees",
    "rank_low_quality",
    "rank_random",
]


@dataclass(frozen=True)
class Strategy:
    """A named way to order the faces (see the module docstring)."""

    name: str
    title: str
    description: str
    needs_probabilities: bool = False
    needs_quality: bool = False


#: Seconds an agreement figure is shown again before it is computed anew (it reads every vote).
AGREEMENT_MAX_AGE = 15.0

#: The queue strategies, by name, in the order a menu should list them.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("likely_label_error", "Likely label errors",
                 "faces cleanlab flags as probably mislabelled, least self-confident first", needs_probabilities=True),
        Strategy("model_disagrees", "Model disagrees",
                 "faces whose predicted class differs from the label, most confident prediction first",
                 needs_probabilities=True),
        Strategy("low_quality", "Low quality", "lowest quality score first", needs_quality=True),
        Strategy("random", "Random", "a seeded random order of all faces"),
    )
}


# -- the rankings, on plain arrays --------------------------------------------------------------


def rank_likely_label_error(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Row positions cleanlab flags as label issues, ranked by self-confidence (lowest first)."""
    if len(labels) < 2:
        return np.empty(0, dtype=np.int64)
    from cleanlab.filter import (
        find_label_issues,  # heavy import, only when this strategy is used
    )

    try:
        # n_jobs=1: cleanlab's multiprocessing is slower than one core for FER-sized tables and
        # must not fan out inside a web server.
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    except (ValueError, AssertionError, ZeroDivisionError) as exc:
        raise AnnotateError(f"cleanlab cannot rank these {len(labels)} faces for label errors: {exc}") from exc
    return np.asarray(ranked, dtype=np.int64)


def rank_self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """All row positions by the model's probability of the given label, lowest first (ties keep row order)."""
    confidence = probs[np.arange(len(labels)), labels]
    return np.argsort(confidence, kind="stable").astype(np.int64)


#: Why the ``likely_label_error`` queue fell back to :func:`rank_self_confidence` (see :meth:`Queue.ranking_note`).
SELF_CONFIDENCE_NOTE = ("{why}, so these {n} faces are ranked by the model's probability of their given label, "
                        "lowest first")


def rank_model_disagrees(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Row positions whose top class differs from the label, highest top probability first."""
    predicted = probs.argmax(axis=1)
    rows = np.flatnonzero(predicted != labels)
    confidence = probs[rows, predicted[rows]]
    return rows[np.argsort(-confidence, kind="stable")]


def rank_low_quality(quality: np.ndarray) -> np.ndarray:
    """Row positions with a quality score, lowest score first (faces without one are left out)."""
    rows = np.flatnonzero(np.isfinite(quality))
    return rows[np.argsort(quality[rows], kind="stable")]


def rank_random(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


# -- what the tab gets back -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedFace:
    """A face put in front of an annotator, with what the tab shows next to it.

    ``row`` is the face's position in the candidates DataFrame (and in ``images``), so the
    tab can draw it; it is ``None`` only for an undone face that is no longer among the
    candidates. ``probabilities`` maps each emotion to the model's probability (``None``
    without a model); ``label_quality`` is cleanlab's self-confidence score.
    """

    sample_id: str
    dataset: str
    row: int | None
    original_label: str | None
    quality_score: float | None
    probabilities: dict[str, float] | None
    model_label: str | None
    label_quality: float | None
    strategy: str
    rank: int  #: position in the strategy's filtered order (0 = first; -1 for a face given back by undo)
    opinions: int  #: annotators who had voted on this face before
    lease_expires_at: datetime | None
    undone_label: str | None = None  #: the answer just undone (from :meth:`Queue.undo`)


@dataclass(frozen=True)
class Progress:
    """Where a queue stands for one annotator (see :meth:`Queue.progress`)."""

    total: int  #: faces in this queue (with second opinion: the faces that have at least one vote)
    done: int  #: faces with a vote by anyone (with second opinion: with ``opinions_needed`` votes)
    remaining: int  #: faces this annotator may still be given (leases ignored)
    leased: int  #: faces of this queue held right now by other annotators
    annotator_today: int  #: this annotator's answers today (UTC), ``skip`` and undone ones not counted
    agreement: Agreement  #: over the whole data set
    answered: int = 0  #: faces of this queue this annotator answered (not ``skip``, not undone)
    skipped: int = 0  #: faces of this queue this annotator only skipped (not undone)


# -- the queue ------------------------------------------------------------------------------------------


class Queue:
    """Candidate faces of one data set, ranked and leased to annotators.

    Parameters
    ----------
    store : Store
        Where faces, decisions and leases live.
    candidates : pandas.DataFrame
        One row per face: ``sample_id`` (unique), ``emotion`` (FER2013 id 0..6), and
        ``quality_score`` for the ``low_quality`` strategy and quality filter. Model
        probabilities come from seven columns named after :data:`fer_core.labels.EMOTIONS`
        or from ``probabilities``; a row with a missing probability has none.
    dataset : str
        The data set's name in the store (decisions are kept per ``(dataset, sample_id)``).
    probabilities : array (N, 7), optional
        The model's class probabilities, rows aligned with ``candidates`` (out-of-sample where available).
    images : array (N, 48, 48) uint8, optional
        The faces' pixels; their sha256 is stored so that decisions stay tied to the picture.
    seed : int, default=0
        Seed of the ``random`` strategy (the same order for every annotator; leases keep them apart).

    Creating a Queue registers the candidates in the store (fast when they are known already)
    and raises :class:`AnnotateError` if the store holds different faces under the same ids.
    """

    def __init__(
        self,
        store: Store,
        candidates: pd.DataFrame,
        *,
        dataset: str,
        probabilities: np.ndarray | None = None,
        images: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(candidates, pd.DataFrame):
            raise AnnotateError(f"candidates must be a pandas DataFrame, got {type(candidates).__name__}")
        missing = [c for c in ("sample_id", "emotion") if c not in candidates.columns]
        if missing:
            raise AnnotateError(f"candidates lack the column(s) {missing}; they need sample_id and emotion (0..6)")
        self.store = store
        self.dataset = check_dataset(dataset)
        self.seed = int(seed)
        self.candidates = candidates.reset_index(drop=True)
        self.sample_ids: list[str] = [str(s) for s in self.candidates["sample_id"]]
        self.labels = _labels(self.candidates["emotion"])
        self.quality = (
            pd.to_numeric(self.candidates["quality_score"], errors="coerce").to_numpy(dtype=np.float64)
            if "quality_score" in self.candidates.columns else None
        )
        self.probabilities = _probabilities(self.candidates, probabilities)
        hashes = None
        if images is not None:
            images = np.asarray(images)
            if images.ndim != 3 or len(images) != len(self.candidates):
                raise AnnotateError(
                    f"images must be (N, H, W) with N = {len(self.candidates)} rows, got {images.shape}"
                )
            hashes = [content_hash(image) for image in images]
        self.face_ids = store.register_faces(self.dataset, self.sample_ids, self.labels, hashes)
        self._row_of = {sid: i for i, sid in enumerate(self.sample_ids)}
        self._orders: dict[str, np.ndarray] = {}
        self._notes: dict[str, str] = {}
        self._label_quality: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def has_probabilities(self) -> bool:
        """True when some faces have model probabilities."""
        return self.probabilities is not None

    def strategies(self) -> list[str]:
        """Names of the strategies usable with these candidates (e.g. no probability strategies without a model)."""
        return [s.name for s in STRATEGIES.values()
                if (self.probabilities is not None or not s.needs_probabilities)
                and (self.quality is not None or not s.needs_quality)]

    # -- ranking and filters ------------------------------------------------------------

    def _strategy(self, name: str) -> Strategy:
        strategy = STRATEGIES.get(name) if isinstance(name, str) else None
        if strategy is None:
            raise AnnotateError(f"unknown queue strategy {name!r}; use one of {', '.join(STRATEGIES)}")
        if strategy.needs_probabilities and self.probabilities is None:
            raise AnnotateError(f"strategy {name!r} needs model probabilities; none were given with the candidates")
        if strategy.needs_quality and self.quality is None:
            raise AnnotateError(f"strategy {name!r} needs a quality_score column in the candidates")
        return strategy

    def _ranked(self, name: str) -> np.ndarray:
        """All candidate rows in the strategy's order (cached: the candidates do not change)."""
        if name not in self._orders:
            if name == "random":
                order = rank_random(len(self), self.seed)
            elif name == "low_quality":
                order = rank_low_quality(self.quality)
            elif name == "likely_label_error":
                order = self._rank_label_errors()
            else:
                rows = np.flatnonzero(~np.isnan(self.probabilities).any(axis=1))
                order = rows[rank_model_disagrees(self.labels[rows], self.probabilities[rows])]
            self._orders[name] = order
        return self._orders[name]

    def _rank_label_errors(self) -> np.ndarray:
        """cleanlab's ranking; by self-confidence when the faces hold fewer than two labels or cleanlab fails."""
        rows = np.flatnonzero(~np.isnan(self.probabilities).any(axis=1))
        labels, probs = self.labels[rows], self.probabilities[rows]
        why = "cleanlab needs faces of at least two given labels to find label errors"
        if len(np.unique(labels)) >= 2:
            try:
                return rows[rank_likely_label_error(labels, probs)]
            except AnnotateError:
                why = "cleanlab cannot rank these faces for label errors"
        self._notes["likely_label_error"] = SELF_CONFIDENCE_NOTE.format(why=why, n=f"{len(rows):,}")
        return rows[rank_self_confidence(labels, probs)]

    def ranking_note(self, strategy: str) -> str | None:
        """How ``strategy`` ranks these faces when it differs from its description (e.g. a fallback), else ``None``."""
        self._ranked(self._strategy(strategy).name)
        return self._notes.get(strategy)

    def order(self, strategy: str, *, emotions: Any = None,
              quality_range: tuple[float, float] | None = None) -> np.ndarray:
        """Candidate row positions in ``strategy``'s order, after the filters.

        ``emotions``: an emotion name or id, or several (original label); ``None`` or empty
        keeps all. ``quality_range``: ``(low, high)``, inclusive, on ``quality_score``.
        """
        self._strategy(strategy)
        order = self._ranked(strategy)
        keep = np.ones(len(self), dtype=bool)
        ids = _emotion_ids(emotions)
        if ids:
            keep &= np.isin(self.labels, ids)
        if quality_range is not None:
            if self.quality is None:
                raise AnnotateError("a quality range needs a quality_score column in the candidates")
            low, high = _check_range(quality_range)
            with np.errstate(invalid="ignore"):
                keep &= (self.quality >= low) & (self.quality <= high)
        return order[keep[order]]

    def label_quality(self) -> np.ndarray | None:
        """cleanlab's self-confidence label quality per candidate (NaN without probabilities), or ``None``."""
        if self.probabilities is None:
            return None
        if self._label_quality is None:
            from cleanlab.rank import get_label_quality_scores

            scores = np.full(len(self), np.nan)
            rows = np.flatnonzero(~np.isnan(self.probabilities).any(axis=1))
            if len(rows):
                scores[rows] = get_label_quality_scores(
                    self.labels[rows], self.probabilities[rows], method="self_confidence"
                )
            self._label_quality = scores
        return self._label_quality

    def _describe(self, row: int | None, sample_id: str, strategy: str, rank: int, opinions: int,
                  expires: datetime | None, undone_label: str | None = None) -> QueuedFace:
        probabilities = model_label = label_quality = quality = original = None
        if row is not None:
            original = EMOTIONS[int(self.labels[row])]
            if self.quality is not None and np.isfinite(self.quality[row]):
                quality = float(self.quality[row])
            if self.probabilities is not None and not np.isnan(self.probabilities[row]).any():
                p = self.probabilities[row]
                probabilities = {name: float(v) for name, v in zip(EMOTIONS, p)}
                model_label = EMOTIONS[int(p.argmax())]
                label_quality = float(self.label_quality()[row])
        return QueuedFace(sample_id, self.dataset, row, original, quality, probabilities, model_label, label_quality,
                          strategy, rank, opinions, expires, undone_label)

    # -- the annotator's actions -------------------------------------------------------------------

    def next_face(
        self,
        annotator: str,
        strategy: str = "likely_label_error",
        *,
        emotions: Any = None,
        quality_range: tuple[float, float] | None = None,
        second_opinion: bool = False,
        opinions_needed: int = 3,
        lease_minutes: float = 10.0,
    ) -> QueuedFace | None:
        """Lease the next face to ``annotator`` and describe it; ``None`` when this queue has nothing left for them.

        The face is the first of :meth:`order` that no one else holds, that ``annotator``
        has not answered, and that has no vote yet, or, with ``second_opinion``, has at least
        one and fewer than ``opinions_needed`` votes. The lease lasts ``lease_minutes``;
        it ends when they submit, when they ask for another face, or when it expires (the
        face then returns to the queue). Asking again without answering gives the same face.
        """
        check_lease_args(second_opinion, opinions_needed, lease_minutes)
        rows = self.order(strategy, emotions=emotions, quality_range=quality_range)
        grant = self.store.lease_next(annotator, self.dataset, self.face_ids[rows], second_opinion=bool(second_opinion),
                                      opinions_needed=int(opinions_needed), lease_minutes=float(lease_minutes))
        if grant is None:
            return None
        row = int(rows[grant.position])
        return self._describe(row, grant.sample_id, strategy, grant.position, grant.opinions, grant.expires_at)

    def submit(
        self,
        annotator: str,
        sample_id: str,
        label: Any,
        model_version: str | None = None,
        strategy: str | None = None,
        *,
        note: str | None = None,
        require_lease: bool = False,
        created_at: datetime | None = None,
    ) -> DecisionRecord:
        """Record ``annotator``'s answer on ``sample_id`` and release their lease; returns after the commit.

        ``label``: an emotion, ``not_a_face``, ``unsure`` or ``skip`` (see :mod:`annotate.labels`).
        ``model_version`` and ``strategy``: what the annotator was shown. ``note``: free text.
        ``require_lease``: refuse (:class:`AnnotateError`, nothing recorded) unless ``annotator``
        holds the face's lease (:meth:`next_face` or :meth:`undo` gave it to them, and no one
        else has taken it since). ``created_at``: the answer's time, which makes sending it again
        after a lost connection add nothing twice (see :meth:`Store.record_decision`).
        """
        return self.store.record_decision(annotator, self.dataset, sample_id, label, model_version=model_version,
                                          strategy=strategy, note=note, require_lease=require_lease,
                                          created_at=created_at)

    def undo(self, annotator: str, *, decision_id: int | None = None, lease_minutes: float = 10.0) -> QueuedFace | None:
        """Undo ``annotator``'s latest answer in this data set and put that face back in front of them.

        Returns the face (``undone_label`` = the answer undone, leased to them again unless
        someone else holds it), or ``None`` when there is nothing left to undo. With
        ``decision_id`` (from :meth:`submit`'s record) it undoes that answer only, and raises
        :class:`AnnotateError` unless it is a live answer of ``annotator`` in this data set.
        """
        undone = self.store.undo_last(annotator, dataset=self.dataset, decision_id=decision_id)
        if undone is None:
            return None
        expires = self.store.lease_face(annotator, self.dataset, undone.sample_id, lease_minutes=lease_minutes)
        votes = self.store.queue_state(annotator, self.dataset).votes
        face_id = self.face_ids[self._row_of[undone.sample_id]] if undone.sample_id in self._row_of else None
        opinions = votes.get(int(face_id), 0) if face_id is not None else 0
        return self._describe(self._row_of.get(undone.sample_id), undone.sample_id, undone.strategy or "", -1, opinions,
                              expires, undone.label)

    def release(self, annotator: str) -> int:
        """Give back the face(s) ``annotator`` holds; returns how many."""
        return self.store.release(annotator)

    def progress(
        self,
        annotator: str,
        strategy: str,
        *,
        emotions: Any = None,
        quality_range: tuple[float, float] | None = None,
        second_opinion: bool = False,
        opinions_needed: int = 3,
    ) -> Progress:
        """Counters for ``annotator`` working this queue with these filters (see :class:`Progress`).

        ``done`` counts everyone's votes; ``answered`` and ``skipped`` are this annotator's own.
        ``total - done - remaining`` are faces this annotator skipped or answered and that
        still wait for others.
        """
        check_lease_args(second_opinion, opinions_needed, 10.0)
        rows = self.order(strategy, emotions=emotions, quality_range=quality_range)
        face_ids = self.face_ids[rows]
        state = self.store.queue_state(annotator, self.dataset)
        votes = np.array([state.votes.get(int(f), 0) for f in face_ids], dtype=np.int64)
        if second_opinion:
            total, done = int((votes >= 1).sum()), int((votes >= opinions_needed).sum())
        else:
            total, done = len(face_ids), int((votes >= 1).sum())
        eligible = eligible_mask(face_ids, state, bool(second_opinion), int(opinions_needed), ignore_leases=True)
        remaining = int(eligible.sum())
        leased = int(np.isin(face_ids, _ids(state.leased)).sum())
        answered = int(np.isin(face_ids, _ids(state.my_votes)).sum())
        skipped = int(np.isin(face_ids, _ids(state.mine - state.my_votes)).sum())
        return Progress(total, done, remaining, leased, self.store.count_today(annotator, dataset=self.dataset),
                        self.store.agreement(self.dataset, max_age=AGREEMENT_MAX_AGE), answered, skipped)


# -- input checks ------------------------------------------------------------------------------------------


def _ids(face_ids: frozenset[int]) -> np.ndarray:
    return np.fromiter(face_ids, dtype=np.int64, count=len(face_ids))


def _labels(column: pd.Series) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any() or not np.all(np.equal(np.mod(values, 1), 0)):
        raise AnnotateError("the emotion column must hold FER2013 label ids 0..6 for every face")
    labels = values.to_numpy(dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        unknown = sorted(set(labels.tolist()) - set(range(NUM_CLASSES)))
        raise AnnotateError(f"emotion ids must be in 0..{NUM_CLASSES - 1}, got {unknown}")
    return labels


def _probabilities(candidates: pd.DataFrame, given: np.ndarray | None) -> np.ndarray | None:
    """(N, 7) float64 probabilities, rows summing to 1, NaN rows where a face has none; ``None`` when no model."""
    if given is not None:
        probs = np.asarray(given, dtype=np.float64)
        if probs.shape != (len(candidates), NUM_CLASSES):
            raise AnnotateError(f"probabilities must have shape ({len(candidates)}, {NUM_CLASSES}), got {probs.shape}")
    elif all(name in candidates.columns for name in EMOTIONS):
        probs = candidates[list(EMOTIONS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    else:
        return None
    probs = probs.copy()
    missing = np.isnan(probs).any(axis=1)
    if (probs[~missing] < 0).any():
        raise AnnotateError("model probabilities must not be negative")
    sums = probs.sum(axis=1)
    if (sums[~missing] <= 0).any():
        raise AnnotateError("each face's model probabilities must not all be zero")
    probs[~missing] /= sums[~missing, None]  # float32 softmax rows are off by ~1e-7; cleanlab wants exact sums
    probs[missing] = np.nan
    return None if missing.all() else probs


def _emotion_ids(emotions: Any) -> list[int]:
    if emotions is None:
        return []
    items: Iterable[Any] = [emotions] if isinstance(emotions, (str, int, np.integer)) else emotions
    ids = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < NUM_CLASSES:
            ids.append(int(item))
            continue
        name = normalise(item) if isinstance(item, str) else None
        if name is None:
            raise AnnotateError(
                f"unknown emotion {item!r} in the filter; use names from {', '.join(EMOTIONS)} or ids 0..6"
            )
        ids.append(EMOTIONS.index(name))
    return ids


def _check_range(quality_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in quality_range)
    except (TypeError, ValueError):
        raise AnnotateError(f"quality_range must be (low, high), got {quality_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise AnnotateError(f"quality_range must be two numbers with low <= high, got {quality_range!r}")
    return low, high
