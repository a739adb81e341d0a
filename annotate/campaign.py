"""A relabel campaign played by simulated annotators who answer from recorded crowd votes.

The faces come from the app's own :class:`~annotate.queue.Queue` (the strategy the Relabel tab
offers), the answers go through the real store with leases (:meth:`Queue.next_face`, then
:meth:`Queue.submit` with ``require_lease``), exactly as the tab does. Only the person is
simulated: for each face they answer from its FER+ votes (:class:`VoteAnswers`).

Answer modes (``mode``):

``majority``
    One annotator answers the face's most voted label (a tie is broken at random, seeded):
    what a careful annotator with the crowd's judgement would say.
``one``
    One annotator answers one vote drawn at random (in proportion to the votes): a single,
    fallible person.
``k``
    ``k`` annotators each answer one vote, drawn without replacement: the face resolves to
    their plurality, as a team's second opinions would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AnnotateError
from .labels import VOTE_LABELS
from .queue import Queue
from .store import Store

__all__ = ["ANSWER_MODES", "VoteAnswers", "CampaignResult", "run_campaign"]

#: How a simulated annotator answers (see the module docstring).
ANSWER_MODES: tuple[str, ...] = ("majority", "one", "k")


class VoteAnswers:
    """Answers drawn from vote counts.

    ``counts`` is (N, len(VOTE_LABELS)) int, row-aligned with the queue's candidates; rows
    without votes (a face the vote table does not cover) make :meth:`answers` raise.
    """

    def __init__(self, counts: np.ndarray, mode: str = "majority", *, k: int = 3, seed: int = 0) -> None:
        if mode not in ANSWER_MODES:
            raise AnnotateError(f"unknown answer mode {mode!r}; use one of {', '.join(ANSWER_MODES)}")
        if mode == "k" and not 1 <= int(k) <= 10:
            raise AnnotateError(f"k must be between 1 and 10 annotators per face, got {k}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.mode = mode
        self.k = int(k) if mode == "k" else 1
        self.rng = np.random.default_rng(seed)

    def answers(self, row: int) -> list[str]:
        """The labels the simulated annotator(s) give face ``row``: one per annotator."""
        votes = self.counts[row]
        total = int(votes.sum())
        if total == 0:
            raise AnnotateError(f"face {row} has no recorded votes to answer from")
        if self.mode == "majority":
            top = np.flatnonzero(votes == votes.max())
            return [VOTE_LABELS[int(self.rng.choice(top))]]
        pool = np.repeat(np.arange(len(VOTE_LABELS)), votes)
        drawn = self.rng.choice(pool, size=min(self.k, total), replace=False)
        return [VOTE_LABELS[int(i)] for i in drawn]


@dataclass(frozen=True)
class CampaignResult:
    """What a campaign did: faces shown, answers given, and whether the queue ran dry first."""

    strategy: str
    faces_seen: int
    answers: int
    exhausted: bool  #: the queue had no face left before the budget was spent
    sample_ids: list[str]  #: the faces in the order they were shown


def run_campaign(queue: Queue, answers: VoteAnswers, *, strategy: str, budget: int | None,
                 annotator_prefix: str = "sim", progress: bool = True) -> CampaignResult:
    """Show up to ``budget`` faces (``None``: all the queue offers) in ``strategy``'s order and record the answers.

    The first simulated annotator leases each face through :meth:`Queue.next_face`; with
    ``k`` answers per face the others lease it in turn (:meth:`Store.lease_face`). Every
    answer is submitted with ``require_lease``, as the Relabel tab submits.
    """
    from tqdm.auto import tqdm

    if budget is not None and budget < 0:
        raise AnnotateError(f"the budget is a number of faces, 0 or more; got {budget}")
    store: Store = queue.store
    names = [f"{annotator_prefix}-{j}" for j in range(1, answers.k + 1)]
    shown: list[str] = []
    n_answers = 0
    total = budget if budget is not None else len(queue)
    exhausted = False
    with tqdm(total=total, desc=f"campaign {strategy}", unit="face", disable=not progress) as bar:
        while budget is None or len(shown) < budget:
            face = queue.next_face(names[0], strategy)
            if face is None:
                exhausted = True
                break
            labels = answers.answers(face.row)
            for name, label in zip(names, labels):
                if name != names[0]:
                    store.lease_face(name, queue.dataset, face.sample_id)
                queue.submit(name, face.sample_id, label, strategy=strategy, require_lease=True)
                n_answers += 1
            shown.append(face.sample_id)
            bar.update(1)
    return CampaignResult(strategy, len(shown), n_answers, exhausted, shown)
