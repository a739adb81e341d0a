"""Load test: many ``gradio_client`` clients on a launched app at once, nothing dropped or lost.

    python -m benchmarks.load [--clients 16] [--calls 50] [--relabel-clients 8] [--answers 20]
                      [--concurrency 1 2 4] [--timeout 600]

Starts ``python app.py`` on a free loopback port with a temporary relabel database (as
``python -m benchmarks.app_bench`` starts it), then, all at the same moment:

- ``--clients`` clients each send ``--calls`` ``predict`` calls, one after another, on a 640x480
  photo with one face (:func:`benchmarks.app_bench.test_photo`); every answer must be one face with the
  same box and label as the first answer, and none may fail;
- ``--relabel-clients`` clients, each with its own annotator name, start the Relabel queue
  (``/relabel_start``, strategy ``random`` over the whole data set) and send ``--answers``
  answers through the ``/relabel_<answer>`` endpoints, cycling through every answer (each client
  from a different one, as people do not all press the same key at once).

Then the store is opened (:func:`annotate.open_store`) and checked: one decision per answer
sent, each annotator's answers in the order sent, on the faces they were shown.

Prints the start-up time, the ``predict`` throughput and median/p95/max latency, the relabel
latency and decisions per second, the CPU time of the app and of the clients (which share the
machine) and the app's peak memory, and exits 1 when anything was dropped or lost.
``--concurrency`` repeats the run with each value of Gradio's default concurrency limit
(``GRADIO_DEFAULT_CONCURRENCY_LIMIT``, which ``app.launch`` honours) and ends with a table;
without it the app's own setting is used. Everything is bounded: each run stops at
``--timeout`` seconds. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from benchmarks.app_bench import _free_port, _percentile, api_client, connect, start_app, test_photo
from fer_core.hardware import cpu_description

#: The Relabel endpoints' inputs after the name: scope, strategy, emotions, q_min, q_max, second opinion, N.
RELABEL_SETTINGS = ["whole data set", "random", [], 0.0, 1.0, False, 3]
#: The sample id shown in the Relabel tab's face text, as `dataset-relative id`.
SAMPLE_ID = re.compile(r"`([^`]+)`")


@dataclass
class RunResult:
    """What one load run measured and found."""

    concurrency: str
    startup_s: float = float("nan")
    predict_latencies_ms: list[float] = field(default_factory=list)
    predict_wall_s: float = float("nan")
    predict_errors: list[str] = field(default_factory=list)
    predict_wrong: list[str] = field(default_factory=list)
    relabel_latencies_ms: list[float] = field(default_factory=list)
    relabel_wall_s: float = float("nan")
    relabel_errors: list[str] = field(default_factory=list)
    relabel_sent: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # annotator -> (sample_id, label)
    store_problems: list[str] = field(default_factory=list)
    expected_predicts: int = 0
    expected_answers: int = 0
    app_peak_mb: float = float("nan")
    app_cpu_s: float = float("nan")  # CPU time of the app process during the concurrent phase
    clients_cpu_s: float = float("nan")  # CPU time of this process (the clients) during it

    @property
    def ok(self) -> bool:
        answered = len(self.predict_latencies_ms) - len(self.predict_wrong)
        sent = sum(len(v) for v in self.relabel_sent.values())
        return (not self.predict_errors and not self.predict_wrong and not self.relabel_errors
                and not self.store_problems and answered == self.expected_predicts and sent == self.expected_answers)

    def summary(self) -> list[str]:
        lines = [(f"concurrency limit {self.concurrency}: start-up {self.startup_s:.1f} s, "
                  f"app peak memory {self.app_peak_mb:.0f} MB")]
        lat = self.predict_latencies_ms
        if lat:
            lines.append(
                f"  predict: {len(lat) - len(self.predict_wrong)}/{self.expected_predicts} answered correctly, "
                f"{len(self.predict_errors)} failed; {len(lat) / self.predict_wall_s:.1f} calls/s; latency median "
                f"{statistics.median(lat):.0f} ms, p95 {_percentile(lat, 95):.0f} ms, max {max(lat):.0f} ms")
        else:
            lines.append(f"  predict: nothing answered, {len(self.predict_errors)} failed")
        rl = self.relabel_latencies_ms
        sent = sum(len(v) for v in self.relabel_sent.values())
        if rl:
            lines.append(
                f"  relabel: {sent}/{self.expected_answers} answers acknowledged, {len(self.relabel_errors)} failed; "
                f"{sent / self.relabel_wall_s:.1f} decisions/s; latency median {statistics.median(rl):.0f} ms, "
                f"p95 {_percentile(rl, 95):.0f} ms, max {max(rl):.0f} ms")
        lines.append(f"  CPU during the run: app {self.app_cpu_s:.0f} s, clients {self.clients_cpu_s:.0f} s "
                     f"over {max(self.predict_wall_s, self.relabel_wall_s):.0f} s wall")
        lines.append("  store: " + ("every answer stored once, per annotator and in order" if not self.store_problems
                                    else "; ".join(self.store_problems[:5])))
        for err in (self.predict_errors + self.relabel_errors + self.predict_wrong)[:5]:
            lines.append(f"  problem: {err}")
        return lines


@contextmanager
def _environment(**values: str | None):
    """Set (or, with ``None``, remove) environment variables for the app process started inside."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _answers() -> list[str]:
    from ui.relabel_tab import ANSWERS

    return [answer for answer, _, _ in ANSWERS]


def _started(start: threading.Barrier, errors: list[str], lock: threading.Lock) -> bool:
    """Wait until every client is connected; False (and an error) when one could not connect."""
    try:
        start.wait(timeout=120)
        return True
    except threading.BrokenBarrierError:
        with lock:
            errors.append("not started: another client could not connect")
        return False


def _predict_client(url: str, photo: Path, calls: int, reference: dict, deadline: float, start: threading.Barrier,
                    result: RunResult, lock: threading.Lock) -> None:
    from gradio_client import handle_file

    try:
        client = api_client(url)
    except Exception as err:  # noqa: BLE001 - every failure is counted, none is fatal to the others
        start.abort()
        with lock:
            result.predict_errors.append(f"client start: {err!r}")
        return
    if not _started(start, result.predict_errors, lock):
        return
    for _ in range(calls):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with lock:
                result.predict_errors.append("time limit reached")
            return
        t0 = time.perf_counter()
        try:
            answer = client.submit(handle_file(str(photo)), api_name="/predict").result(timeout=remaining)
        except Exception as err:  # noqa: BLE001
            with lock:
                result.predict_errors.append(repr(err)[:300])
            continue
        elapsed = (time.perf_counter() - t0) * 1000
        faces = answer.get("faces", []) if isinstance(answer, dict) else []
        same = (len(faces) == 1 and faces[0]["box"] == reference["box"] and faces[0]["label"] == reference["label"])
        with lock:
            result.predict_latencies_ms.append(elapsed)
            if not same:
                result.predict_wrong.append(f"unexpected answer: {str(answer)[:200]}")


def _relabel_client(url: str, name: str, answers: int, offset: int, deadline: float, start: threading.Barrier,
                    result: RunResult, lock: threading.Lock) -> None:
    labels = _answers()
    try:
        client = api_client(url)
    except Exception as err:  # noqa: BLE001
        start.abort()
        with lock:
            result.relabel_errors.append(f"{name}: client start: {err!r}")
        return
    if not _started(start, result.relabel_errors, lock):
        return
    sent: list[tuple[str, str]] = []
    try:
        _, text, _ = client.submit(name, *RELABEL_SETTINGS, api_name="/relabel_start").result(
            timeout=max(1.0, deadline - time.monotonic()))
        for i in range(answers):
            shown = SAMPLE_ID.search(text or "")
            if shown is None:
                raise RuntimeError(f"no face shown before answer {i + 1}: {text!r}")
            label = labels[(offset + i) % len(labels)]
            t0 = time.perf_counter()
            _, text, _ = client.submit(name, *RELABEL_SETTINGS, api_name=f"/relabel_{label}").result(
                timeout=max(1.0, deadline - time.monotonic()))
            with lock:
                result.relabel_latencies_ms.append((time.perf_counter() - t0) * 1000)
            sent.append((shown.group(1), label))
    except Exception as err:  # noqa: BLE001
        with lock:
            result.relabel_errors.append(f"{name}: {err!r}"[:300])
    finally:
        with lock:
            result.relabel_sent[name] = sent


def check_store(db_path: Path, sent: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Problems found comparing the store with what each annotator sent (empty: none lost or extra)."""
    from annotate import open_store

    store = open_store(db_path)
    try:
        decisions = store.decisions()
        integrity = store.integrity_check()
    finally:
        store.close()
    problems = [] if integrity in (None, "ok") else [f"integrity_check: {integrity}"]
    total = sum(len(v) for v in sent.values())
    if len(decisions) != total:
        problems.append(f"{len(decisions)} decisions stored for {total} answers acknowledged")
    for name, answers in sent.items():
        mine = decisions[decisions["annotator"] == name]
        stored = list(zip(mine["sample_id"], mine["label"]))
        if stored != answers:
            problems.append(f"{name}: stored {len(stored)} answers, sent {len(answers)}"
                            + ("" if len(stored) != len(answers) else " (different faces or labels)"))
    return problems


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc/PID/stat``), NaN where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _peak_memory_mb(pid: int) -> float:
    """The process's peak resident memory (Linux ``VmHWM``), NaN where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_load(*, clients: int, calls: int, relabel_clients: int, answers: int, concurrency: str | None,
             timeout: float, work: Path) -> RunResult:
    """One load run against a fresh ``python app.py`` (``concurrency``: GRADIO_DEFAULT_CONCURRENCY_LIMIT or None)."""
    from gradio_client import handle_file

    work.mkdir(parents=True, exist_ok=True)
    photo = work / "photo_640x480.jpg"
    Image.fromarray(test_photo()).save(photo, quality=90)
    db_path = work / "load_annotations.db"
    result = RunResult(concurrency=concurrency or "app default", expected_predicts=clients * calls,
                       expected_answers=relabel_clients * answers)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The bundled sample (FER_DATA unset), a fresh database, and the concurrency limit to try.
    with _environment(FER_DB_URL=f"sqlite:///{db_path}", FER_DATA=None, GRADIO_DEFAULT_CONCURRENCY_LIMIT=concurrency):
        process, started = start_app(port, log_path=work / "app.log")
    try:
        client = connect(url, process, timeout=min(timeout, 180))
        first = client.predict(handle_file(str(photo)), api_name="/predict")
        result.startup_s = time.monotonic() - started
        if len(first.get("faces", [])) != 1:
            raise RuntimeError(f"expected one face in the test photo, got {first}")
        reference = first["faces"][0]

        deadline = time.monotonic() + timeout
        lock = threading.Lock()
        barrier = threading.Barrier(clients + relabel_clients + 1)
        predict_threads = [threading.Thread(target=_predict_client, daemon=True,
                                            args=(url, photo, calls, reference, deadline, barrier, result, lock))
                           for _ in range(clients)]
        relabel_threads = [threading.Thread(target=_relabel_client, daemon=True,
                                            args=(url, f"load-annotator-{i + 1}", answers, i, deadline, barrier,
                                                  result, lock))
                           for i in range(relabel_clients)]
        for thread in predict_threads + relabel_threads:
            thread.start()
        try:
            barrier.wait(timeout=min(timeout, 120))
        except threading.BrokenBarrierError:
            pass  # a client could not connect; its error is recorded
        t0 = time.monotonic()
        app_cpu0, clients_cpu0 = _cpu_seconds(process.pid), time.process_time()

        def wait_relabel() -> None:
            for thread in relabel_threads:
                thread.join(max(0.0, deadline - time.monotonic() + 5))
            result.relabel_wall_s = time.monotonic() - t0

        waiter = threading.Thread(target=wait_relabel, daemon=True)
        waiter.start()
        for thread in predict_threads:
            thread.join(max(0.0, deadline - time.monotonic() + 5))
        result.predict_wall_s = time.monotonic() - t0
        waiter.join(max(0.0, deadline - time.monotonic() + 10))
        result.app_cpu_s = _cpu_seconds(process.pid) - app_cpu0
        result.clients_cpu_s = time.process_time() - clients_cpu0
        if any(t.is_alive() for t in predict_threads + relabel_threads):
            result.predict_errors.append(f"clients still running after the {timeout:.0f} s limit")
    finally:
        result.app_peak_mb = _peak_memory_mb(process.pid)
        process.terminate()
        try:
            process.wait(timeout=30)
        except Exception:  # noqa: BLE001
            process.kill()
    result.store_problems = check_store(db_path, result.relabel_sent)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent predict clients")
    parser.add_argument("--calls", type=int, default=50, help="predict calls per client")
    parser.add_argument("--relabel-clients", type=int, default=8, help="concurrent relabel clients (annotators)")
    parser.add_argument("--answers", type=int, default=20, help="answers per relabel client")
    parser.add_argument("--concurrency", nargs="+", default=None,
                        help="GRADIO_DEFAULT_CONCURRENCY_LIMIT values to compare (default: the app's own setting)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a run may take once started")
    args = parser.parse_args(argv)
    if min(args.clients, args.calls, args.relabel_clients, args.answers) < 0 or args.timeout <= 0:
        parser.error("counts must be >= 0 and --timeout > 0")
    if args.clients * args.calls + args.relabel_clients * args.answers > 20_000:
        parser.error("at most 20,000 requests in one run")
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces

    faces = len(load_faces(SAMPLE_PATH))
    if args.relabel_clients * args.answers > faces:
        parser.error(f"the bundled sample has {faces} faces: at most {faces} answers in all")

    results = []
    for concurrency in args.concurrency or [None]:
        work = Path(tempfile.mkdtemp(prefix="fer_load_"))
        print(f"-- {args.clients} predict clients x {args.calls} calls, {args.relabel_clients} relabel clients x "
              f"{args.answers} answers, concurrency limit {concurrency or 'app default'} (log: {work / 'app.log'})",
              flush=True)
        result = run_load(clients=args.clients, calls=args.calls, relabel_clients=args.relabel_clients,
                          answers=args.answers, concurrency=concurrency, timeout=args.timeout, work=work)
        print("\n".join(result.summary()), flush=True)
        results.append(result)
    if len(results) > 1:
        print("\nlimit | predict calls/s | median ms | p95 ms | max ms | relabel median ms | p95 ms | all ok")
        for r in results:
            lat, rl = r.predict_latencies_ms or [float("nan")], r.relabel_latencies_ms or [float("nan")]
            print(f"{r.concurrency:>5} | {len(r.predict_latencies_ms) / r.predict_wall_s:15.1f} | "
                  f"{statistics.median(lat):9.0f} | {_percentile(lat, 95):6.0f} | {max(lat):6.0f} | "
                  f"{statistics.median(rl):17.0f} | {_percentile(rl, 95):6.0f} | {r.ok}")
    print(f"(cpu: {cpu_description()})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
