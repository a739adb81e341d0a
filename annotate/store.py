"""The relabelling store: who said what about which face, and the labels that follow from it.

Open one with :func:`open_store` (it creates or upgrades the schema). All writes go through
short transactions that are committed before the method returns: when
:meth:`Store.record_decision` returns, the decision is on disk. Busy/locked errors are
retried (:func:`annotate.engine.retry`), never shown to the annotator.

Votes and the resolved label
----------------------------
An annotator's *vote* on a face is their latest (highest id) answer on it that has not been
undone and is not ``skip``. The *resolved label* of a face is the label with the most votes
(a plurality, counting ``not_a_face`` and ``unsure`` like the emotions); a tie between the
top labels leaves the face unresolved (``None``). ``unsure`` is a vote like the others, but a
face whose plurality is ``unsure`` keeps its original label (``judged_unsure`` says so).
Undoing an answer appends a reversal row; nothing is deleted, so the full history stays in
:meth:`Store.decisions`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from fer_core.images import pixels_sha256
from fer_core.labels import EMOTIONS, NUM_CLASSES

from .engine import create_store_engine, default_db_url, integrity_check, retry, writer
from .errors import AnnotateError, UnknownFaceError
from .labels import (
    SKIP,
    UNSURE,
    VOTE_LABELS,
    check_annotator,
    check_dataset,
    check_label,
    check_note,
    check_tag,
)
from .leasing import LeaseGrant, QueueState, check_holds_lease, check_lease_args, scan
from .migrate import current_revision, upgrade
from .models import Annotator, Decision, Face, Lease

__all__ = [
    "Store",
    "DecisionRecord",
    "LeaseGrant",
    "QueueState",
    "Agreement",
    "open_store",
    "content_hash",
    "utc_now",
    "VOTE_COLUMNS",
]

#: Vote-count columns of :meth:`Store.resolved_labels`, in the order of :data:`annotate.labels.VOTE_LABELS`.
VOTE_COLUMNS: tuple[str, ...] = tuple(f"votes_{label}" for label in VOTE_LABELS)

# How many times a transaction is re-run after a unique-constraint race (another process
# created the same annotator or face, or leased the same face, between our read and write).
# Only reachable on databases without BEGIN IMMEDIATE; SQLite serialises writers.
_CONFLICT_RETRIES = 5
# Rows per INSERT when registering many faces (keeps statements well under SQLite's variable limit).
_CHUNK = 2000
#: Orders whose done faces a Store remembers (annotators x strategies x modes); the oldest is forgotten first.
_DONE_PREFIXES_KEPT = 1024

T = TypeVar("T")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the store's default clock)."""
    return datetime.now(UTC)


def content_hash(image: np.ndarray) -> str:
    """sha256 (hex) of a face's pixels as C-ordered uint8 bytes: identifies the picture, not the file."""
    pixels = np.ascontiguousarray(image)
    if pixels.dtype != np.uint8:
        raise AnnotateError(f"face pixels must be uint8 grey levels, got dtype {pixels.dtype}")
    return pixels_sha256(pixels)


@dataclass(frozen=True)
class DecisionRecord:
    """One row of the decisions table, as returned by :meth:`Store.record_decision` and :meth:`Store.undo_last`."""

    id: int
    annotator: str
    dataset: str
    sample_id: str
    label: str | None
    created_at: datetime
    model_version: str | None = None
    strategy: str | None = None
    note: str | None = None
    reverses_id: int | None = None


@dataclass(frozen=True)
class Agreement:
    """How much annotators agree, over the faces with at least two votes.

    ``agreement`` is the mean over those faces of the share of annotator pairs that gave the
    same answer (Fleiss' per-subject agreement ``P_i``); ``unanimous`` the share of those
    faces where everyone agreed. ``kappa`` is Fleiss' kappa from statsmodels; it needs the
    same number of raters on every face, so it uses ``kappa_raters`` votes per face (the
    earliest ones) on the ``kappa_faces`` faces that have that many, with ``kappa_raters``
    chosen to use the most votes. It is ``None`` with fewer than two such faces, or when
    every vote is the same label (chance agreement is then 1 and kappa is undefined).
    """

    faces: int
    agreement: float | None
    unanimous: float | None
    kappa: float | None
    kappa_faces: int
    kappa_raters: int


class Store:
    """The annotation database: faces, annotators, append-only decisions and leases.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        From :func:`annotate.engine.create_store_engine`; the schema must be at head
        (:func:`open_store` does both).
    now : callable, optional
        The clock, returning an aware datetime (naive values are taken as UTC). Tests pass a
        fake clock to expire leases without sleeping. Default :func:`utc_now`.

    A Store is safe to share between threads (one per process is enough); each process of
    a multi-process deployment opens its own.
    """

    def __init__(self, engine: Engine, *, now: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._clock = now or utc_now
        self._annotator_ids: dict[str, int] = {}
        self._agreements: dict[str | None, tuple[float, Agreement]] = {}  # dataset -> (when, figure)
        self._lock = threading.Lock()
        #: (annotator, data set, mode, order) -> (undos seen, length of the order's leading faces that are done):
        #: see :meth:`lease_next`.
        self._done_prefixes: dict[tuple[int, str, bool, int, bytes], tuple[int, int]] = {}
        #: Busy/locked errors retried so far by this Store (contention figure for the bench).
        self.retries = 0

    # -- plumbing -----------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's clock, as aware UTC."""
        value = self._clock()
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def _count_retry(self, _exc: BaseException) -> None:
        with self._lock:
            self.retries += 1

    def _read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return retry(run, on_retry=self._count_retry)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction, committed before this returns; busy errors and races retried."""

        def run() -> T:
            with self._writer.begin() as conn:
                return fn(conn)

        for attempt in range(_CONFLICT_RETRIES):
            try:
                return retry(run, on_retry=self._count_retry)
            except IntegrityError:
                # A concurrent writer won a unique-key race (PostgreSQL only; SQLite writers are
                # serialised); the re-run reads its row. A real constraint error repeats and is raised.
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        """The database URL (password hidden)."""
        return self.engine.url.render_as_string(hide_password=True)

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        return current_revision(self.engine)

    def integrity_check(self) -> str | None:
        """``"ok"`` when SQLite's integrity check passes; ``None`` on other databases."""
        return retry(lambda: integrity_check(self.engine))

    def close(self) -> None:
        """Close the pooled connections (the Store can still be used; it reconnects)."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- annotators and faces -------------------------------------------------------------

    def _annotator_id(self, name: str, *, create: bool) -> int | None:
        """The id of annotator ``name`` (checked), created on first use when ``create``."""
        name = check_annotator(name)
        cached = self._annotator_ids.get(name)
        if cached is not None:
            return cached
        query = select(Annotator.id).where(Annotator.name == name)
        found = self._read(lambda conn: conn.scalar(query))
        if found is None and create:
            def add(conn: Connection) -> int:
                existing = conn.scalar(query)
                if existing is not None:
                    return existing
                result = conn.execute(insert(Annotator).values(name=name, created_at=self.now()))
                return int(result.inserted_primary_key[0])

            found = self._write(add)
        if found is not None:
            # Only committed ids are cached: annotators are never deleted, so they stay valid.
            self._annotator_ids[name] = found
        return found

    def annotators(self) -> list[str]:
        """Names of all annotators, in the order they first appeared."""
        return self._read(lambda conn: list(conn.scalars(select(Annotator.name).order_by(Annotator.id))))

    def register_faces(
        self,
        dataset: str,
        sample_ids: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        hashes: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Make the store know these faces; return their face ids (int64, in the given order).

        Faces already known are checked, not changed: a different original label, or
        different pixels (``hashes``, see :func:`content_hash`), for the same
        ``(dataset, sample_id)`` means another copy of the data under the same name, and
        raises :class:`AnnotateError` rather than mixing decisions about different pictures.
        A known face registered earlier without pixels gets its hash filled in.
        """
        dataset = check_dataset(dataset)
        ids = [str(s) for s in sample_ids]
        labels = np.asarray(labels)
        if len(labels) != len(ids) or (hashes is not None and len(hashes) != len(ids)):
            raise AnnotateError(f"register_faces: {len(ids)} sample ids but {len(labels)} labels"
                                + ("" if hashes is None else f" and {len(hashes)} hashes"))
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[:5].tolist()
            raise AnnotateError(f"sample_id must be unique within a data set; repeated: {dup}")
        integer = np.issubdtype(labels.dtype, np.integer)
        if len(labels) and (not integer or labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise AnnotateError(f"original labels must be FER2013 ids 0..{NUM_CLASSES - 1}")
        labels = labels.astype(np.int64)
        hash_list: list[str | None] = [None] * len(ids) if hashes is None else list(hashes)

        known_query = select(Face.sample_id, Face.id, Face.original_label, Face.content_sha256).where(
            Face.dataset == dataset
        )

        def plan(known: dict[str, tuple[int, int, str | None]]) -> tuple[list[int], list[int]]:
            missing, fill = [], []
            conflicts = []
            for i, sid in enumerate(ids):
                row = known.get(sid)
                if row is None:
                    missing.append(i)
                    continue
                _, label, stored = row
                if label != labels[i] or (stored is not None and hash_list[i] is not None and stored != hash_list[i]):
                    conflicts.append(sid)
                elif stored is None and hash_list[i] is not None:
                    fill.append(i)
            if conflicts:
                raise AnnotateError(
                    f"{len(conflicts)} faces of data set {dataset!r} differ from the ones the store holds under the "
                    f"same sample_id (label or pixels), e.g. {conflicts[:5]}; open this copy under another data set "
                    "name"
                )
            return missing, fill

        def read_known(conn: Connection) -> dict[str, tuple[int, int, str | None]]:
            return {sid: (fid, label, sha) for sid, fid, label, sha in conn.execute(known_query)}

        known = self._read(read_known)
        missing, fill = plan(known)
        if missing or fill:
            def add(conn: Connection) -> dict[str, tuple[int, int, str | None]]:
                current = read_known(conn)
                todo, fill_now = plan(current)
                now = self.now()
                rows = [{"dataset": dataset, "sample_id": ids[i], "content_sha256": hash_list[i],
                         "original_label": int(labels[i]), "created_at": now} for i in todo]
                for start in range(0, len(rows), _CHUNK):
                    conn.execute(insert(Face), rows[start:start + _CHUNK])
                if fill_now:
                    conn.execute(
                        update(Face).where(Face.id == bindparam("fid")).values(content_sha256=bindparam("sha")),
                        [{"fid": current[ids[i]][0], "sha": hash_list[i]} for i in fill_now],
                    )
                return read_known(conn)

            known = self._write(add)
        return np.array([known[sid][0] for sid in ids], dtype=np.int64)

    def _face(self, conn: Connection, dataset: str, sample_id: str) -> int:
        face_id = conn.scalar(select(Face.id).where(Face.dataset == dataset, Face.sample_id == sample_id))
        if face_id is None:
            raise UnknownFaceError(
                f"unknown face: no sample_id {sample_id!r} in data set {dataset!r} of the annotation store"
            )
        return face_id

    # -- decisions --------------------------------------------------------------------------

    def record_decision(
        self,
        annotator: str,
        dataset: str,
        sample_id: str,
        label: Any,
        *,
        model_version: str | None = None,
        strategy: str | None = None,
        note: str | None = None,
        require_lease: bool = False,
        created_at: datetime | None = None,
    ) -> DecisionRecord:
        """Append ``annotator``'s answer on a face, release their lease on it, commit, then return the row.

        ``label`` is checked by :func:`annotate.labels.check_label`. ``model_version`` and
        ``strategy`` record what the annotator was shown. An annotator may answer a face
        again (their latest answer is their vote); the queue itself never shows them a face twice.
        With ``require_lease`` the answer is refused (:class:`AnnotateError`, nothing recorded)
        unless ``annotator`` holds the face's lease row: their own lease, live or run out but
        not yet taken by anyone else (see :func:`annotate.leasing.check_holds_lease`).

        ``created_at`` (aware; default the store's clock now) is the answer's time and makes the
        call idempotent: when ``annotator`` already has this answer on this face at this time
        (a commit whose acknowledgement a lost connection swallowed, or the same answer sent
        again with the time of its first try), that row is returned and nothing is added.
        """
        label = check_label(label)
        dataset = check_dataset(dataset)
        sample_id = str(sample_id)
        model_version = check_tag(model_version, "model version")
        strategy = check_tag(strategy, "strategy name")
        note = check_note(note)
        aid = self._annotator_id(annotator, create=True)
        if created_at is not None and created_at.tzinfo is None:
            raise AnnotateError("created_at must be a timezone-aware datetime")
        now = self.now() if created_at is None else created_at.astimezone(UTC)

        def add(conn: Connection) -> DecisionRecord:
            face_id = self._face(conn, dataset, sample_id)
            done = conn.execute(_answer_columns().where(
                Decision.annotator_id == aid, Decision.face_id == face_id, Decision.created_at == now,
                Decision.label == label)).first()
            if done is not None:  # this very answer is in already: a retry adds nothing
                return DecisionRecord(done.id, annotator, dataset, sample_id, label, done.created_at,
                                      done.model_version, done.strategy, done.note)
            if require_lease:
                check_holds_lease(conn, face_id, aid, sample_id, now)
            result = conn.execute(insert(Decision).values(
                annotator_id=aid, face_id=face_id, created_at=now, label=label,
                model_version=model_version, strategy=strategy, note=note,
            ))
            conn.execute(delete(Lease).where(Lease.face_id == face_id, Lease.annotator_id == aid))
            return DecisionRecord(int(result.inserted_primary_key[0]), annotator, dataset, sample_id, label, now,
                                  model_version, strategy, note)

        return self._write(add)

    def undo_last(self, annotator: str, *, dataset: str | None = None,
                  decision_id: int | None = None) -> DecisionRecord | None:
        """Undo ``annotator``'s latest answer that is not undone yet; return that answer, or ``None``.

        Appends a reversal row (``reverses_id`` = the answer's id); nothing is deleted.
        Called again, it undoes the answer before, and so on. ``dataset`` limits it to one data set.
        With ``decision_id`` it undoes exactly that answer, and raises :class:`AnnotateError`
        (nothing written) unless it is a live answer of ``annotator`` (in ``dataset`` when given):
        a session undoes its own answers, never another person's.
        """
        if decision_id is not None:
            return self._undo_one(annotator, dataset, decision_id)
        aid = self._annotator_id(annotator, create=False)
        if aid is None:
            return None
        if dataset is not None:
            dataset = check_dataset(dataset)
        undo = aliased(Decision)
        query = (
            _answer_columns()
            .where(Decision.annotator_id == aid, Decision.label.is_not(None),
                   ~exists().where(undo.reverses_id == Decision.id))
            .order_by(Decision.id.desc())
            .limit(1)
        )
        if dataset is not None:
            query = query.where(Face.dataset == dataset)

        def add(conn: Connection) -> DecisionRecord | None:
            row = conn.execute(query).first()
            return None if row is None else self._reverse(conn, aid, annotator, row)

        return self._write(add)

    def _undo_one(self, annotator: str, dataset: str | None, decision_id: Any) -> DecisionRecord:
        """Undo the answer ``decision_id`` if it is ``annotator``'s and live; else :class:`AnnotateError`."""
        if isinstance(decision_id, bool) or not isinstance(decision_id, (int, np.integer)):
            raise AnnotateError(f"decision_id must be an integer, got {decision_id!r}")
        decision_id = int(decision_id)
        dataset = None if dataset is None else check_dataset(dataset)
        aid = self._annotator_id(annotator, create=False)
        undo = aliased(Decision)
        query = _answer_columns(Decision.annotator_id, exists().where(undo.reverses_id == Decision.id).label("undone"))
        query = query.where(Decision.id == decision_id)

        def add(conn: Connection) -> DecisionRecord:
            row = conn.execute(query).first()
            if row is None or row.label is None or aid is None or row.annotator_id != aid:
                raise AnnotateError(f"cannot undo decision {decision_id}: it is not an answer of {annotator!r}")
            if dataset is not None and row.dataset != dataset:
                raise AnnotateError(f"cannot undo decision {decision_id}: it is about data set {row.dataset!r}, "
                                    f"not {dataset!r}")
            if row.undone:
                raise AnnotateError(f"decision {decision_id} ({row.label!r} on {row.sample_id!r}) is undone already")
            return self._reverse(conn, aid, annotator, row)

        return self._write(add)

    def _reverse(self, conn: Connection, aid: int, annotator: str, row: Any) -> DecisionRecord:
        """Append the reversal of answer ``row`` (from :func:`_answer_columns`); return the answer undone."""
        conn.execute(insert(Decision).values(annotator_id=aid, face_id=row.face_id, created_at=self.now(),
                                             label=None, reverses_id=row.id))
        return DecisionRecord(row.id, annotator, row.dataset, row.sample_id, row.label, row.created_at,
                              row.model_version, row.strategy, row.note)

    def decisions(self, dataset: str | None = None, *, sample_id: str | None = None) -> pd.DataFrame:
        """Every row of the decisions table (answers and undos), oldest first: the audit log.

        Columns: ``id, created_at, annotator, dataset, sample_id, label, model_version,
        strategy, note, reverses_id, undone`` (``undone``: a later row reverses this one).
        ``sample_id`` keeps one face's rows.
        """
        undo = aliased(Decision)
        query = (
            select(Decision.id, Decision.created_at, Annotator.name.label("annotator"), Face.dataset, Face.sample_id,
                   Decision.label, Decision.model_version, Decision.strategy, Decision.note, Decision.reverses_id,
                   exists().where(undo.reverses_id == Decision.id).label("undone"))
            .join(Annotator, Annotator.id == Decision.annotator_id)
            .join(Face, Face.id == Decision.face_id)
            .order_by(Decision.id)
        )
        if dataset is not None:
            query = query.where(Face.dataset == check_dataset(dataset))
        if sample_id is not None:
            query = query.where(Face.sample_id == str(sample_id))
        rows = self._read(lambda conn: conn.execute(query).all())
        columns = ["id", "created_at", "annotator", "dataset", "sample_id", "label", "model_version", "strategy",
                   "note", "reverses_id", "undone"]
        frame = pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object)
        frame["id"] = frame["id"].astype("int64")
        frame["undone"] = frame["undone"].astype(bool)
        frame["reverses_id"] = frame["reverses_id"].astype("Int64")
        return frame

    # -- votes and labels ---------------------------------------------------------------------

    def vote_counts(self, dataset: str, sample_id: str) -> dict[str, int]:
        """One face's current votes per label (:data:`VOTE_LABELS` order, zeros included); all zero when unknown."""
        dataset = check_dataset(dataset)
        face = select(Face.id).where(Face.dataset == dataset, Face.sample_id == str(sample_id)).scalar_subquery()
        votes = self._read(lambda conn: self._votes(conn, None, face_id=face))
        counts = votes["label"].value_counts()
        return {label: int(counts.get(label, 0)) for label in VOTE_LABELS}

    def _votes(self, conn: Connection, dataset: str | None, *, face_id: Any = None) -> pd.DataFrame:
        """Current votes: one row per (face, annotator) with ``face_id, decision_id, annotator, label``.

        ``face_id`` (a value or a scalar subquery) keeps one face's votes.
        """
        undo = aliased(Decision)
        query = (
            select(Decision.face_id, Decision.id, Annotator.name, Decision.label)
            .join(Annotator, Annotator.id == Decision.annotator_id)
            .where(Decision.label.is_not(None), Decision.label != SKIP,
                   ~exists().where(undo.reverses_id == Decision.id))
            .order_by(Decision.id)
        )
        if dataset is not None:
            query = query.join(Face, Face.id == Decision.face_id).where(Face.dataset == dataset)
        if face_id is not None:
            query = query.where(Decision.face_id == face_id)
        frame = pd.DataFrame([tuple(r) for r in conn.execute(query)],
                             columns=["face_id", "decision_id", "annotator", "label"], dtype=object)
        # Latest answer per (face, annotator): rows are in id order, keep the last.
        frame = frame.drop_duplicates(["face_id", "annotator"], keep="last")
        return frame.astype({"face_id": "int64", "decision_id": "int64"})

    def resolved_labels(self, dataset: str | None = None, *, include_undecided: bool = False) -> pd.DataFrame:
        """The label each face has now, from the votes; one row per face.

        Columns: ``dataset, sample_id, content_sha256, original_label`` (emotion name),
        ``resolved_label`` (an emotion or ``not_a_face``, or ``None`` on a tie; a face whose
        plurality is ``unsure`` keeps its original label), ``changed`` (resolved and different
        from the original), ``judged_unsure`` (the plurality is ``unsure``), one ``votes_<label>``
        count per vote label (:data:`VOTE_COLUMNS`), ``n_annotators`` and ``annotators``
        (list of names, in the order they voted). Faces without any vote are left out
        unless ``include_undecided``. Rows are in registration order.
        """
        if dataset is not None:
            dataset = check_dataset(dataset)
        faces_query = select(
            Face.id, Face.dataset, Face.sample_id, Face.content_sha256, Face.original_label
        ).order_by(Face.id)
        if dataset is not None:
            faces_query = faces_query.where(Face.dataset == dataset)

        def read(conn: Connection) -> tuple[list[Any], pd.DataFrame]:
            return conn.execute(faces_query).all(), self._votes(conn, dataset)

        face_rows, votes = self._read(read)
        columns = ["face_id", "dataset", "sample_id", "content_sha256", "original_label"]
        faces = pd.DataFrame([tuple(r) for r in face_rows], columns=columns, dtype=object)
        return _resolve(faces, votes, include_undecided=include_undecided)

    def agreement(self, dataset: str | None = None, *, max_age: float = 0.0) -> Agreement:
        """Inter-annotator agreement over the faces with at least two votes (see :class:`Agreement`).

        With ``max_age`` (seconds) a figure computed that recently is given again: it reads every
        vote (a second for FER+'s 320,000), too slow to redo after each answer of a busy queue.
        """
        if dataset is not None:
            dataset = check_dataset(dataset)
        with self._lock:
            cached = self._agreements.get(dataset)
        if cached is not None and time.monotonic() - cached[0] <= max_age:
            return cached[1]
        votes = self._read(lambda conn: self._votes(conn, dataset))
        result = agreement_from_votes(votes)
        with self._lock:
            self._agreements[dataset] = (time.monotonic(), result)
        return result

    # -- leases and the queue's view ----------------------------------------------------------------

    def _queue_state(self, conn: Connection, aid: int | None, dataset: str, now: datetime, *,
                     face_ids: np.ndarray | None = None) -> QueueState:
        """The counters of the whole data set, or of the faces ``face_ids`` only (a slice of a queue's order)."""
        undo = aliased(Decision)
        live = ~exists().where(undo.reverses_id == Decision.id)
        in_dataset = (Decision.face_id.in_(select(Face.id).where(Face.dataset == dataset)) if face_ids is None
                      else Decision.face_id.in_([int(f) for f in face_ids]))
        vote_rows = conn.execute(
            select(Decision.face_id, func.count(func.distinct(Decision.annotator_id)))
            .where(in_dataset, Decision.label.is_not(None), Decision.label != SKIP, live)
            .group_by(Decision.face_id)
        )
        votes = {int(fid): int(n) for fid, n in vote_rows}
        mine: frozenset[int] = frozenset()
        my_votes: frozenset[int] = frozenset()
        lease_query = select(Lease.face_id).where(Lease.expires_at > now)
        if face_ids is not None:
            lease_query = lease_query.where(Lease.face_id.in_([int(f) for f in face_ids]))
        if aid is not None:
            rows = conn.execute(select(Decision.face_id, Decision.label).where(
                in_dataset, Decision.annotator_id == aid, Decision.label.is_not(None), live)).all()
            mine = frozenset(int(fid) for fid, _ in rows)
            my_votes = frozenset(int(fid) for fid, label in rows if label != SKIP)
            lease_query = lease_query.where(Lease.annotator_id != aid)
        leased = frozenset(conn.scalars(lease_query))
        return QueueState(votes, mine, leased, my_votes)

    def queue_state(self, annotator: str | None, dataset: str) -> QueueState:
        """Vote counts, ``annotator``'s answered (and voted) faces and others' live leases in ``dataset``."""
        dataset = check_dataset(dataset)
        aid = None if annotator is None else self._annotator_id(annotator, create=False)
        return self._read(lambda conn: self._queue_state(conn, aid, dataset, self.now()))

    def lease_next(
        self,
        annotator: str,
        dataset: str,
        order: Sequence[int] | np.ndarray,
        *,
        second_opinion: bool = False,
        opinions_needed: int = 3,
        lease_minutes: float = 10.0,
    ) -> LeaseGrant | None:
        """Lease to ``annotator`` the first face of ``order`` (face ids) they may be shown; ``None`` when none is left.

        In one write transaction: drop expired leases and the leases ``annotator`` holds
        (one face in front of a person at a time; asking again without answering gives
        the same face back when the order is unchanged), then take the first face that is
        not under someone else's live lease, was not answered by ``annotator``, and has no
        vote yet (``second_opinion=False``) or between 1 and ``opinions_needed - 1`` votes
        (``second_opinion=True``). The lease row's primary key is the face, so two
        annotators can never hold the same face.

        The order's leading faces that are done for good (answered by ``annotator``, or with
        as many votes as the mode takes) are remembered and not read again, so a lease costs
        the same after 30,000 answers as after 30. Only an undo can make such a face wanted
        again: any undo in the store (from any process) forgets what was remembered.
        """
        dataset = check_dataset(dataset)
        check_lease_args(second_opinion, opinions_needed, lease_minutes)
        aid = self._annotator_id(annotator, create=True)
        order = np.asarray(order, dtype=np.int64)
        key = (aid, dataset, second_opinion, opinions_needed, hashlib.blake2b(order.tobytes(), digest_size=16).digest())

        def take(conn: Connection) -> LeaseGrant | None:
            now = self.now()
            conn.execute(delete(Lease).where(Lease.expires_at <= now))
            conn.execute(delete(Lease).where(Lease.annotator_id == aid))
            # Read before the scan: an undo committed in between makes the next lease start again from 0.
            undos = int(conn.scalar(select(func.count()).select_from(Decision).where(Decision.reverses_id.is_not(None))))
            with self._lock:
                seen = self._done_prefixes.get(key)
            start = seen[1] if seen is not None and seen[0] == undos else 0
            position, state, done = scan(order, lambda ids: self._queue_state(conn, aid, dataset, now, face_ids=ids),
                                          second_opinion, opinions_needed, start=start)
            with self._lock:
                self._done_prefixes.pop(key, None)
                self._done_prefixes[key] = (undos, done)
                while len(self._done_prefixes) > _DONE_PREFIXES_KEPT:
                    self._done_prefixes.pop(next(iter(self._done_prefixes)))
            if position is None:
                return None
            face_id = int(order[position])
            expires = now + timedelta(minutes=lease_minutes)
            conn.execute(insert(Lease).values(face_id=face_id, annotator_id=aid, leased_at=now, expires_at=expires))
            sample_id = conn.scalar(select(Face.sample_id).where(Face.id == face_id))
            return LeaseGrant(face_id, sample_id, position, state.votes.get(face_id, 0), expires)

        return self._write(take)

    def lease_face(
        self, annotator: str, dataset: str, sample_id: str, *, lease_minutes: float = 10.0
    ) -> datetime | None:
        """Lease one given face to ``annotator`` (e.g. after an undo); ``None`` if someone else holds it."""
        dataset = check_dataset(dataset)
        check_lease_args(False, 2, lease_minutes)
        aid = self._annotator_id(annotator, create=True)

        def take(conn: Connection) -> datetime | None:
            now = self.now()
            face_id = self._face(conn, dataset, str(sample_id))
            conn.execute(delete(Lease).where(Lease.expires_at <= now))
            holder = conn.scalar(select(Lease.annotator_id).where(Lease.face_id == face_id))
            if holder is not None and holder != aid:
                return None
            conn.execute(delete(Lease).where(Lease.annotator_id == aid))
            expires = now + timedelta(minutes=lease_minutes)
            conn.execute(insert(Lease).values(face_id=face_id, annotator_id=aid, leased_at=now, expires_at=expires))
            return expires

        return self._write(take)

    def release(self, annotator: str) -> int:
        """Give back every face ``annotator`` holds (they close the tab); returns how many."""
        aid = self._annotator_id(annotator, create=False)
        if aid is None:
            return 0
        return self._write(lambda conn: conn.execute(delete(Lease).where(Lease.annotator_id == aid)).rowcount)

    def leases(self, dataset: str | None = None) -> pd.DataFrame:
        """Live leases: ``dataset, sample_id, annotator, leased_at, expires_at``."""
        query = (
            select(Face.dataset, Face.sample_id, Annotator.name, Lease.leased_at, Lease.expires_at)
            .join(Face, Face.id == Lease.face_id).join(Annotator, Annotator.id == Lease.annotator_id)
            .where(Lease.expires_at > bindparam("now")).order_by(Lease.leased_at)
        )
        if dataset is not None:
            query = query.where(Face.dataset == check_dataset(dataset))
        rows = self._read(lambda conn: conn.execute(query, {"now": self.now()}).all())
        columns = ["dataset", "sample_id", "annotator", "leased_at", "expires_at"]
        return pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object)

    def count_since(self, annotator: str, since: datetime, *, dataset: str | None = None) -> int:
        """Answers (not ``skip``, not undone) ``annotator`` gave at or after ``since``."""
        aid = self._annotator_id(annotator, create=False)
        if aid is None:
            return 0
        if since.tzinfo is None:
            raise AnnotateError("count_since needs a timezone-aware datetime")
        undo = aliased(Decision)
        query = select(func.count()).select_from(Decision).where(
            Decision.annotator_id == aid, Decision.created_at >= since, Decision.label.is_not(None),
            Decision.label != SKIP, ~exists().where(undo.reverses_id == Decision.id),
        )
        if dataset is not None:
            query = query.where(Decision.face_id.in_(select(Face.id).where(Face.dataset == check_dataset(dataset))))
        return int(self._read(lambda conn: conn.scalar(query)))

    def answer_times(self, annotator: str, *, dataset: str | None = None, last: int | None = None) -> list[datetime]:
        """When ``annotator`` gave each answer (``skip`` and undone ones included: each took a look), oldest first.

        ``last`` keeps only the most recent ones. Undo rows are not answers and are left out.
        """
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 1):
            raise AnnotateError(f"last must be a positive integer, got {last!r}")
        aid = self._annotator_id(annotator, create=False)
        if aid is None:
            return []
        query = (select(Decision.created_at).where(Decision.annotator_id == aid, Decision.label.is_not(None))
                 .order_by(Decision.created_at.desc(), Decision.id.desc()).limit(last))
        if dataset is not None:
            query = query.where(Decision.face_id.in_(select(Face.id).where(Face.dataset == check_dataset(dataset))))
        times = self._read(lambda conn: conn.scalars(query).all())
        return list(reversed(times))  # aware UTC: see models.UTCDateTime

    def count_today(self, annotator: str, *, dataset: str | None = None) -> int:
        """Answers ``annotator`` gave since midnight UTC of the store's clock (``skip`` and undone ones not counted)."""
        midnight = self.now().replace(hour=0, minute=0, second=0, microsecond=0)
        return self.count_since(annotator, midnight, dataset=dataset)


# -- helpers shared with the queue and the exports ----------------------------------------------


def _answer_columns(*extra: Any) -> Any:
    """SELECT of an answer's fields with its face's data set and ``sample_id`` (for undo)."""
    return (
        select(Decision.id, Decision.face_id, Decision.label, Decision.created_at, Decision.model_version,
               Decision.strategy, Decision.note, Face.dataset, Face.sample_id, *extra)
        .join(Face, Face.id == Decision.face_id)
    )


def _resolve(faces: pd.DataFrame, votes: pd.DataFrame, *, include_undecided: bool) -> pd.DataFrame:
    """Join faces with their current votes and resolve each face's label (plurality, ties -> None)."""
    counts = (
        pd.crosstab(votes["face_id"], votes["label"]).reindex(columns=list(VOTE_LABELS), fill_value=0)
        if len(votes) else pd.DataFrame(columns=list(VOTE_LABELS), dtype="int64")
    )
    counts.columns = list(VOTE_COLUMNS)
    names = votes.groupby("face_id", sort=False)["annotator"].agg(list) if len(votes) else pd.Series(dtype=object)
    faces = faces.astype({"face_id": "int64"})
    if not include_undecided:
        faces = faces[faces["face_id"].isin(counts.index)]
    table = faces.set_index("face_id")
    counts = counts.reindex(table.index, fill_value=0).astype("int64")
    matrix = counts.to_numpy()
    top = matrix.max(axis=1, initial=0)
    n_top = (matrix == top[:, None]).sum(axis=1)
    plurality = [
        VOTE_LABELS[int(np.argmax(row))] if t > 0 and k == 1 else None for row, t, k in zip(matrix, top, n_top)
    ]
    original = [EMOTIONS[int(i)] for i in table["original_label"]]
    # "unsure" is an opinion, not a label: a face judged unsure keeps the label it came with.
    judged_unsure = [r == UNSURE for r in plurality]
    resolved = [o if u else r for r, o, u in zip(plurality, original, judged_unsure)]
    # Object columns (pandas 3 would infer its "str" dtype and turn None into NaN): an
    # unresolved face reads None, as documented.
    def obj(values):
        return pd.Series(list(values), dtype=object)
    out = pd.DataFrame({
        "dataset": obj(table["dataset"]),
        "sample_id": obj(table["sample_id"]),
        "content_sha256": obj(table["content_sha256"]),
        "original_label": obj(original),
        "resolved_label": obj(resolved),
        "changed": pd.Series([r is not None and r != o for r, o in zip(resolved, original)], dtype=bool),
        "judged_unsure": pd.Series(judged_unsure, dtype=bool),
    })
    for column in VOTE_COLUMNS:
        out[column] = counts[column].to_numpy()
    out["n_annotators"] = matrix.sum(axis=1).astype("int64")
    out["annotators"] = obj(list(names.get(fid, [])) for fid in table.index)
    return out


def agreement_from_votes(votes: pd.DataFrame) -> Agreement:
    """:class:`Agreement` of current votes (``face_id, decision_id, label`` rows, one per face and annotator)."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    if not len(votes):
        return Agreement(0, None, None, None, 0, 0)
    votes = votes.sort_values("decision_id", kind="stable")
    code = pd.Categorical(votes["label"], categories=list(VOTE_LABELS)).codes.astype(np.int64)
    face_index, face = np.unique(votes["face_id"].to_numpy(dtype=np.int64), return_inverse=True)
    counts = np.zeros((len(face_index), len(VOTE_LABELS)), dtype=np.int64)
    np.add.at(counts, (face, code), 1)
    sizes = counts.sum(axis=1)
    rated_twice = sizes >= 2
    if not rated_twice.any():
        return Agreement(0, None, None, None, 0, 0)
    c, n = counts[rated_twice], sizes[rated_twice]
    shares = (c * (c - 1)).sum(axis=1) / (n * (n - 1))
    unanimous = int((c.max(axis=1) == n).sum())
    # Fleiss' kappa needs equal raters per face: use the earliest m votes per face on the faces
    # with at least m, with m chosen to use the most votes (ties: more raters per face).
    at_least = np.cumsum(np.bincount(n)[::-1])[::-1]  # at_least[k] = faces with >= k votes
    m = max(range(2, len(at_least)), key=lambda k: (k * int(at_least[k]), k))
    order_in_face = votes.groupby("face_id", sort=False).cumcount().to_numpy()
    keep = (order_in_face < m) & (sizes[face] >= m)
    table = np.zeros_like(counts)
    np.add.at(table, (face[keep], code[keep]), 1)
    table = table[sizes >= m]
    kappa = None
    if len(table) >= 2:
        p = table.sum(axis=0) / table.sum()
        if (p * p).sum() < 1.0 - 1e-12:  # not everyone said the same label: kappa is defined
            kappa = float(fleiss_kappa(table, method="fleiss"))
    return Agreement(len(n), float(shares.mean()), unanimous / len(n), kappa, len(table), m)


def open_store(url: str | None = None, *, now: Callable[[], datetime] | None = None, migrate: bool = True) -> Store:
    """Open the annotation store at ``url`` (default :func:`annotate.engine.default_db_url`), creating or upgrading it.

    ``url`` is a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://...``) or a plain
    file path (SQLite). With ``migrate`` (the default) ``alembic upgrade head`` runs first,
    so a database written by an older version gains the new schema and keeps every decision.
    """
    engine = create_store_engine(url if url is not None else default_db_url())
    if migrate:
        upgrade(engine)
    return Store(engine, now=now)

