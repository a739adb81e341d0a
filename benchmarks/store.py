"""Reliability bench of the annotation store: ``python -m benchmarks.store --db FILE_OR_URL``.

Four checks against one store, a SQLite file or a PostgreSQL database
(``postgresql+psycopg://user:password@host:port/database``), each in fresh processes
(multiprocessing, spawn):

throughput
    8 processes submit 1,000 decisions in total, all at once (started behind a barrier).
    Pass: all 1,000 rows are present, none is duplicated, no error reached a caller (busy
    errors were retried inside the store); prints the decisions per second.
kill
    A writer submits decisions in a loop and sends each decision id to this process through a
    pipe as soon as ``record_decision`` returns; it is killed with SIGKILL at a random moment
    mid-stream. Pass: the store opens cleanly, every acknowledged decision is in it, and on
    SQLite ``PRAGMA integrity_check`` is ``ok`` (PostgreSQL has no such check: ``n/a``).
    Repeated ``--kills`` times.
collisions
    Annotator processes ask the queue for the next face at the same instant (behind a
    barrier), answer it, and do it again, for ``--rounds`` rounds. Pass: no face was ever
    handed to two annotators.
depth
    One annotator answers ``--depth`` faces of a 28,000-face data set in the queue's order
    (lease, answer with ``require_lease``), in this process. Prints the rate over the first and
    the last tenth of the answers. Pass: every answer recorded, no face shown twice, and the
    last tenth at least half as fast as the first (a lease does not slow down as answers pile up).

The bench writes thousands of test rows, so it refuses an existing SQLite file, or a PostgreSQL
database that already holds an annotation store, unless ``--overwrite`` (which deletes the file,
or drops the store's tables). The whole run takes one to two minutes on two cores (SQLite).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotate import LABELS, Queue, open_store
from fer_core.hardware import cpu_description

__all__ = ["ThroughputResult", "KillResult", "CollisionResult", "DepthResult", "bench_throughput", "bench_kill",
           "bench_collisions", "bench_depth", "get_args_parser", "main"]

# A worker that has not reported after this long is stuck: fail rather than hang the bench.
_WORKER_TIMEOUT_S = 300.0


@dataclass
class ThroughputResult:
    processes: int
    submitted: int
    rows: int
    duplicates: int
    missing: int
    errors: int
    retries: int
    seconds: float
    error_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rows == self.submitted and self.duplicates == 0 and self.missing == 0 and self.errors == 0

    @property
    def per_second(self) -> float:
        return self.submitted / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class KillResult:
    kills: int
    acknowledged: int
    lost: int  #: acknowledged decisions missing afterwards (must be 0)
    unacknowledged_rows: int  #: committed, but killed before the id reached us (allowed)
    integrity: list[str]
    exit_codes: list[int]

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and all(i in ("ok", "n/a") for i in self.integrity)
                and all(c == -signal.SIGKILL for c in self.exit_codes))


@dataclass
class CollisionResult:
    processes: int
    rounds: int
    handed_out: int
    collisions: int  #: faces handed to more than one annotator (extra hand-outs counted)
    same_round_collisions: int
    empty: int  #: requests that found no face (must be 0: there are enough faces)
    errors: int
    error_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.collisions == 0 and self.same_round_collisions == 0 and self.empty == 0 and self.errors == 0


@dataclass
class DepthResult:
    faces: int
    answered: int
    repeats: int  #: faces shown twice (must be 0)
    first_rate: float  #: answers per second over the first tenth
    last_rate: float  #: answers per second over the last tenth

    @property
    def ok(self) -> bool:
        return self.repeats == 0 and self.last_rate >= 0.5 * self.first_rate


# -- workers (top-level functions: spawn pickles them by name) ---------------------------------------------


def _writer(path: str, dataset: str, worker: int, first: int, count: int, barrier: Any, results: Any) -> None:
    errors: list[str] = []
    ok = 0
    store = None
    try:
        store = open_store(path)
        barrier.wait()
        start = time.time()
        for i in range(count):
            try:
                store.record_decision(f"bench-writer-{worker}", dataset, f"t{first + i}", LABELS[i % len(LABELS)],
                                      model_version="bench", strategy="bench", note=f"w{worker}-{i}")
                ok += 1
            except Exception as exc:  # noqa: BLE001 - the bench counts every error that reaches a caller
                errors.append(repr(exc))
        results.put((worker, ok, errors, store.retries, start, time.time()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the check
        results.put((worker, ok, errors + [repr(exc)], store.retries if store else 0, time.time(), time.time()))


def _victim(path: str, dataset: str, n_faces: int, conn: Any) -> None:
    store = open_store(path)
    conn.send("ready")
    i = 0
    while True:
        record = store.record_decision("bench-victim", dataset, f"k{i % n_faces}", LABELS[i % len(LABELS)],
                                       model_version="bench", strategy="bench", note=f"k{i}")
        conn.send(record.id)  # acknowledged: the commit is done
        i += 1


def _reader(path: str, dataset: str, worker: int, rounds: int, n_faces: int, barrier: Any, results: Any) -> None:
    got: list[tuple[int, str | None]] = []
    errors: list[str] = []
    try:
        store = open_store(path)
        faces = Queue(store, _bench_candidates(n_faces), dataset=dataset)
        name = f"bench-reader-{worker}"
        for r in range(rounds):
            barrier.wait()
            try:
                face = faces.next_face(name, "low_quality")
                got.append((r, face.sample_id if face else None))
                if face is not None:
                    faces.submit(name, face.sample_id, "neutral", "bench", "low_quality")
            except Exception as exc:  # noqa: BLE001 - counted as an error reaching a caller
                errors.append(repr(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the check
        errors.append(repr(exc))
    results.put((worker, got, errors))


def _bench_candidates(n: int) -> pd.DataFrame:
    """Faces ``c0..c{n-1}`` with decreasing quality, so ``low_quality`` sends everyone to the same end."""
    return pd.DataFrame({"sample_id": [f"c{i}" for i in range(n)], "emotion": np.arange(n) % 7,
                         "quality_score": np.linspace(1.0, 0.0, n)})


def _collect(results: Any, n: int, procs: list[Any]) -> list[Any]:
    out = []
    deadline = time.monotonic() + _WORKER_TIMEOUT_S
    while len(out) < n:
        try:
            out.append(results.get(timeout=1.0))
        except queue.Empty:  # check that the workers are still alive
            if time.monotonic() > deadline or (all(not p.is_alive() for p in procs) and results.empty()):
                raise RuntimeError(f"only {len(out)} of {n} bench workers reported") from None
    for p in procs:
        p.join(timeout=30)
    return out


# -- the three checks ----------------------------------------------------------------------------------------


def bench_throughput(path: str | Path, *, processes: int = 8, decisions: int = 1000) -> ThroughputResult:
    """``processes`` spawned writers submit ``decisions`` decisions in total to the store at ``path`` (file or URL)."""
    ctx = mp.get_context("spawn")
    dataset = f"bench-throughput-{uuid.uuid4().hex[:8]}"
    store = open_store(str(path))
    store.register_faces(dataset, [f"t{i}" for i in range(decisions)], np.zeros(decisions, dtype=int))
    shares = [decisions // processes + (w < decisions % processes) for w in range(processes)]
    firsts = np.concatenate([[0], np.cumsum(shares)[:-1]]).tolist()
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), dataset, w, firsts[w], shares[w], barrier, results))
             for w in range(processes)]
    for p in procs:
        p.start()
    reports = _collect(results, processes, procs)
    errors = [e for r in reports for e in r[2]]
    start, end = min(r[4] for r in reports), max(r[5] for r in reports)
    table = store.decisions(dataset)
    expected = {f"w{w}-{i}" for w in range(processes) for i in range(shares[w])}
    notes = Counter(table["note"])
    store.close()
    return ThroughputResult(
        processes=processes, submitted=decisions, rows=len(table),
        duplicates=sum(c - 1 for c in notes.values() if c > 1), missing=len(expected - set(notes)),
        errors=len(errors), retries=sum(r[3] for r in reports), seconds=end - start, error_examples=errors[:3],
    )


def bench_kill(path: str | Path, *, kills: int = 3, faces: int = 50, seed: int = 0) -> KillResult:
    """Kill a writer with SIGKILL mid-stream ``kills`` times; check the file and the acknowledged decisions."""
    ctx = mp.get_context("spawn")
    rng = random.Random(seed)
    dataset = f"bench-kill-{uuid.uuid4().hex[:8]}"
    store = open_store(str(path))
    store.register_faces(dataset, [f"k{i}" for i in range(faces)], np.zeros(faces, dtype=int))
    store.close()
    acknowledged: set[int] = set()
    integrity, exit_codes = [], []
    for _ in range(kills):
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_victim, args=(str(path), dataset, faces, child_end))
        proc.start()
        child_end.close()  # so that recv() sees EOF once the victim is dead
        if not parent_end.poll(_WORKER_TIMEOUT_S) or parent_end.recv() != "ready":
            proc.kill()
            raise RuntimeError("the bench writer did not start")
        target = rng.randint(20, 80)
        seen = 0
        while seen < target:
            acknowledged.add(parent_end.recv())
            seen += 1
        time.sleep(rng.uniform(0.0, 0.02))  # land the kill anywhere in a submit
        os.kill(proc.pid, signal.SIGKILL)
        while True:  # ids still in the pipe were acknowledged before the kill
            try:
                acknowledged.add(parent_end.recv())
            except EOFError:
                break
        proc.join()
        exit_codes.append(proc.exitcode)
        reopened = open_store(str(path))  # opens (and migrates) cleanly after the crash
        integrity.append(reopened.integrity_check() or "n/a")
        reopened.close()
    final = open_store(str(path))
    present = set(final.decisions(dataset)["id"].tolist())
    final.close()
    return KillResult(kills=kills, acknowledged=len(acknowledged), lost=len(acknowledged - present),
                      unacknowledged_rows=len(present - acknowledged), integrity=integrity, exit_codes=exit_codes)


def bench_collisions(path: str | Path, *, processes: int = 8, rounds: int = 10) -> CollisionResult:
    """``processes`` annotators ask for the next face at the same instant, ``rounds`` times."""
    ctx = mp.get_context("spawn")
    dataset = f"bench-leases-{uuid.uuid4().hex[:8]}"
    n_faces = processes * rounds + 10
    store = open_store(str(path))
    Queue(store, _bench_candidates(n_faces), dataset=dataset)  # registers the faces once
    store.close()
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(str(path), dataset, w, rounds, n_faces, barrier, results))
             for w in range(processes)]
    for p in procs:
        p.start()
    reports = _collect(results, processes, procs)
    handed = [(r, sid) for _, got, _ in reports for r, sid in got]
    faces = Counter(sid for _, sid in handed if sid is not None)
    per_round = Counter((r, sid) for r, sid in handed if sid is not None)
    errors = [e for _, _, errs in reports for e in errs]
    return CollisionResult(
        processes=processes, rounds=rounds, handed_out=sum(faces.values()),
        collisions=sum(c - 1 for c in faces.values() if c > 1),
        same_round_collisions=sum(c - 1 for c in per_round.values() if c > 1),
        empty=sum(sid is None for _, sid in handed), errors=len(errors), error_examples=errors[:3],
    )


def bench_depth(path: str | Path, *, answers: int = 5000, faces: int = 28_000) -> DepthResult:
    """One annotator answers ``answers`` faces in the queue's order; the rate at the start and at the end."""
    dataset = f"bench-depth-{uuid.uuid4().hex[:8]}"
    store = open_store(str(path))
    queue = Queue(store, _bench_candidates(faces), dataset=dataset)
    tenth = max(answers // 10, 1)
    shown: list[str] = []
    times = [time.perf_counter()]
    for i in range(answers):
        face = queue.next_face("deep", "low_quality")
        queue.submit("deep", face.sample_id, LABELS[i % 7], strategy="low_quality", require_lease=True)
        shown.append(face.sample_id)
        times.append(time.perf_counter())
    answered = int((store.decisions(dataset)["annotator"] == "deep").sum())
    store.close()
    return DepthResult(faces=faces, answered=answered, repeats=len(shown) - len(set(shown)),
                       first_rate=tenth / (times[tenth] - times[0]), last_rate=tenth / (times[-1] - times[-1 - tenth]))


# -- command line ----------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True,
                        help="SQLite file to create (must not exist, see --overwrite) or PostgreSQL URL "
                             "(postgresql+psycopg://user:password@host:port/database; its database must hold no "
                             "annotation store, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete FILE (and its -wal/-shm) first, or drop the store's tables of the database")
    parser.add_argument("--processes", type=int, default=8,
                        help="concurrent writer and annotator processes (default 8)")
    parser.add_argument("--decisions", type=int, default=1000,
                        help="decisions submitted in the throughput check (default 1000)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLed writers (default 3)")
    parser.add_argument("--rounds", type=int, default=10, help="simultaneous next-face rounds (default 10)")
    parser.add_argument("--depth", type=int, default=5000,
                        help="faces one annotator answers in the depth check (default 5000; 0: skip it)")
    return parser


def _prepare_sqlite(path: Path, overwrite: bool) -> str | None:
    """Delete the bench's SQLite file when allowed; the reason it may not be used, else ``None``."""
    companions = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    if path.exists() and not overwrite:
        return f"{path} exists; the bench writes thousands of test decisions. Give a new file or --overwrite."
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist"
    for f in companions:
        f.unlink(missing_ok=True)
    return None


def _prepare_server(url: str, overwrite: bool) -> tuple[str | None, str]:
    """Check (or, with ``overwrite``, empty) a server database; the reason it may not be used, and its description."""
    from sqlalchemy import MetaData, inspect

    from annotate.engine import create_store_engine

    engine = create_store_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            version = ".".join(map(str, engine.dialect.server_version_info or ()))
        if tables & {"alembic_version", "decisions"} and not overwrite:
            return (f"{shown} already holds an annotation store; the bench writes thousands of test decisions. "
                    "Give an empty database or --overwrite (drops its tables)."), ""
        if overwrite:
            metadata = MetaData()
            metadata.reflect(engine, only=[t for t in ("leases", "decisions", "faces", "annotators",
                                                       "alembic_version") if t in tables])
            metadata.drop_all(engine)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is reported, not raised
        return f"cannot use {shown}: {exc}", ""
    finally:
        engine.dispose()
    return None, f"{shown} ({engine.dialect.name} {version})"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if "://" in args.db and not args.db.startswith("sqlite"):
        db = args.db
        refusal, described = _prepare_server(db, args.overwrite)
    else:
        path = Path(args.db.removeprefix("sqlite:///")).expanduser().resolve()
        db, refusal, described = str(path), _prepare_sqlite(path, args.overwrite), f"{path} (SQLite, WAL, synchronous=FULL)"
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    began = time.perf_counter()
    print(f"annotate bench on {described}, cpu: {cpu_description()}")

    t = bench_throughput(db, processes=args.processes, decisions=args.decisions)
    print(f"throughput : {t.processes} processes, {t.submitted} decisions submitted, {t.rows} rows present, "
          f"{t.duplicates} duplicated, {t.missing} missing, {t.errors} errors reached a caller "
          f"({t.retries} busy retries inside the store); {t.per_second:.0f} decisions/s over {t.seconds:.2f} s "
          f"-> {'PASS' if t.ok else 'FAIL'}")
    for e in t.error_examples:
        print(f"    error: {e}")

    k = bench_kill(db, kills=args.kills)
    print(f"kill -9    : {k.kills} writers killed mid-submit (exit codes {k.exit_codes}); integrity_check "
          f"{'/'.join(k.integrity) if set(k.integrity) != {'n/a'} else 'n/a'}; {k.acknowledged} acknowledged decisions, {k.lost} lost, "
          f"{k.unacknowledged_rows} committed but not yet acknowledged -> {'PASS' if k.ok else 'FAIL'}")

    c = bench_collisions(db, processes=args.processes, rounds=args.rounds)
    print(f"collisions : {c.processes} annotators x {c.rounds} simultaneous rounds, {c.handed_out} faces handed out, "
          f"{c.collisions} collisions ({c.same_round_collisions} within a round), {c.empty} empty, "
          f"{c.errors} errors -> {'PASS' if c.ok else 'FAIL'}")
    for e in c.error_examples:
        print(f"    error: {e}")

    ok = t.ok and k.ok and c.ok
    if args.depth > 0:
        d = bench_depth(db, answers=args.depth)
        print(f"depth      : one annotator, {d.answered} of {args.depth} answers recorded in a {d.faces:,}-face "
              f"queue, {d.repeats} faces shown twice; {d.first_rate:.0f} answers/s over the first tenth, "
              f"{d.last_rate:.0f} over the last -> {'PASS' if d.ok else 'FAIL'}")
        ok = ok and d.ok and d.answered == args.depth
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - began:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    # Import the module by its name so that spawned workers pickle as benchmarks.store.*, not __main__.*.
    from benchmarks.store import main as _main

    sys.exit(_main())
