"""Attack run: every abuse of a public deployment we know of, against a launched app, with its cost.

    python -m benchmarks.attack [--data PATH] [--leak-seconds 60] [--idle 150] [--json OUT]

Starts ``python app.py`` on a free loopback port, with its own temp folder (``TMPDIR``, Gradio's
upload folder inside it) and a temporary relabel database, then runs each case below and prints,
per case, the answer (shortened), whether it is the safe one, the time it took and the app's
peak resident memory during it; then the app's memory after ``--idle`` seconds of rest and the
size of its temp folders. Exits 1 when a case got an unsafe answer.

Cases: file paths that were never uploaded (system files, folders, missing files, images
elsewhere on disk) sent to ``predict``, ``annotate_frame`` and the page's own photo event;
decompression bombs by bytes (float TIFF, ICO around a huge PNG, a 40,000,000 x 1 PNG, a
20,000 x 20,000 PNG) and huge JPEGs that must decode reduced; an oversized data URL; the worst
accepted images two at a time on every heavy event at once; 200 photo sessions; many clients
calling ``predict`` for a while (a leak shows as growth); repeated exports; a burst of
``predict`` calls while an annotator answers; undo of another annotator's answer. Loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.app_bench import _free_port

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the app and its memory


class App:
    """``python app.py`` in a sandbox of its own: temp folder, upload folder, cache and database."""

    def __init__(self, work: Path, data: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        import subprocess

        self.work = work
        self.tmp = work / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TMPDIR": str(self.tmp), "GRADIO_SERVER_NAME": "127.0.0.1",
               "GRADIO_SERVER_PORT": str(self.port), "FER_DB_URL": f"sqlite:///{work / 'answers.db'}",
               "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
        env.pop("GRADIO_TEMP_DIR", None)
        command = [sys.executable, str(REPO / "app.py")] + (["--data", data] if data else [])
        self.log = (work / "app.log").open("w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.process.returncode}; see {self.log.name}")
            try:
                urllib.request.urlopen(f"{self.url}/config", timeout=5).read()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s")

    def rss_mb(self) -> float:
        return _status_mb(self.process.pid, "VmRSS")

    def temp_mb(self) -> float:
        return sum(f.stat().st_size for f in self.tmp.rglob("*") if f.is_file()) / 1e6

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except Exception:
            self.process.kill()
        self.log.close()


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """The highest resident memory of process ``pid`` while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb, self.start_mb = pid, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start_mb = self.peak_mb = _status_mb(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, _status_mb(self.pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------ raw HTTP, as an attacker sends it


class RawClient:
    """Gradio's HTTP API spoken by hand: uploads, ``/call/<api>`` and the queue with any ``fn_index``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.config = json.loads(urllib.request.urlopen(f"{url}/config", timeout=30).read())
        self.fn_ids = {d["api_name"]: d["id"] for d in self.config["dependencies"] if d.get("api_name")}

    def page_inputs(self, api: str, values: list) -> list:
        """``values`` for the visible inputs of event ``api``, with None where the page sends a state."""
        kinds = {c["id"]: c.get("type") for c in self.config["components"]}
        dependency = next(d for d in self.config["dependencies"] if d["id"] == self.fn_ids[api])
        given = iter(values)
        return [None if kinds.get(i) == "state" else next(given) for i in dependency["inputs"]]

    def upload(self, data: bytes, name: str) -> dict:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.url}/gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        path = json.loads(urllib.request.urlopen(request, timeout=120).read())[0]
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api: str, data: list, timeout: float = 300.0) -> tuple[bool, str]:
        """``(succeeded, answer)`` of one ``/gradio_api/call/<api>`` request."""
        request = urllib.request.Request(f"{self.url}/gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            event_id = json.loads(urllib.request.urlopen(request, timeout=timeout).read())["event_id"]
            text = urllib.request.urlopen(f"{self.url}/gradio_api/call/{api}/{event_id}",
                                          timeout=timeout).read().decode()
        except urllib.error.HTTPError as err:
            return False, f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
        return _sse_outcome(text)

    def event(self, api: str, data: list, session: str | None = None, timeout: float = 300.0) -> tuple[bool, str]:
        """``(succeeded, answer)`` of the event named ``api`` sent through the queue, as the page sends it."""
        session = session or uuid.uuid4().hex
        body = {"data": data, "fn_index": self.fn_ids[api], "session_hash": session, "event_data": None,
                "trigger_id": None}
        request = urllib.request.Request(f"{self.url}/gradio_api/queue/join", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            event_id = json.loads(urllib.request.urlopen(request, timeout=timeout).read())["event_id"]
        except urllib.error.HTTPError as err:
            return False, f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
        stream = urllib.request.urlopen(f"{self.url}/gradio_api/queue/data?session_hash={session}", timeout=timeout)
        for raw in stream:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                stream.close()
                output = message.get("output", {})
                return bool(message.get("success")), json.dumps(output.get("error") or output.get("data"))[:2000]
        return False, "the stream ended without an answer"


def _sse_outcome(text: str) -> tuple[bool, str]:
    kind, data = "", ""
    for line in text.splitlines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
    return kind == "complete", data


def post_raw(url: str, path: str, declared_length: int, body_chunk: bytes, chunks: int) -> tuple[int | str, float]:
    """POST a body of ``declared_length`` bytes in ``chunks`` pieces; the status and seconds to the answer."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    started = time.perf_counter()
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(declared_length))
        connection.endheaders()
        for _ in range(chunks):
            connection.send(body_chunk)
        status: int | str = connection.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        try:
            status = connection.getresponse().status
        except Exception as err:  # the server answered and closed before the body was sent
            status = f"closed ({type(err).__name__})"
    finally:
        connection.close()
    return status, time.perf_counter() - started


# ------------------------------------------------------------------------------ hostile images


def png_bytes(width: int, height: int, *, colour_type: int = 0, bit_depth: int = 8) -> bytes:
    """A valid PNG of ``width`` x ``height`` zero pixels, compressed row by row (any size, little memory)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes(max(1, width * channels * bit_depth // 8))
    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def ico_around(png: bytes) -> bytes:
    """An ICO file whose one entry is ``png`` (declared 0 x 0, as ICO says for 256 and above)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def float_tiff(side: int) -> bytes:
    """A deflate-compressed float32 TIFF of ``side`` x ``side`` zeros."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.float32), "F").save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()


def flat_jpeg(side: int) -> bytes:
    """A grey JPEG of ``side`` x ``side`` built from a small one's scaled copy (small file, huge image)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def photo_jpeg() -> bytes:
    from benchmarks.app_bench import test_photo

    buf = io.BytesIO()
    Image.fromarray(test_photo()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------ the cases


@dataclass
class Outcome:
    case: str
    safe: bool
    answer: str
    seconds: float
    peak_mb: float

    def line(self) -> str:
        answer = self.answer.replace("\n", " ")
        answer = answer if len(answer) <= 90 else answer[:87] + "..."
        return (f"{'ok  ' if self.safe else 'FAIL'} {self.case:<46} "
                f"{self.seconds:7.2f} s {self.peak_mb:7.0f} MB  {answer}")


def measured(app: App, case: str, action: Callable[[], tuple[bool, str]]) -> Outcome:
    with PeakMemory(app.process.pid) as memory:
        started = time.perf_counter()
        try:
            safe, answer = action()
        except Exception as err:  # a harness failure is reported, not hidden
            safe, answer = False, f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - started
    return Outcome(case, bool(safe), answer, seconds, memory.peak_mb)


def refused_without_leak(outcome: tuple[bool, str], *, secret: str = "root:") -> tuple[bool, str]:
    succeeded, answer = outcome
    return (not succeeded and "not uploaded" in answer and secret not in answer and "/etc" not in answer), answer


def path_cases(app: App, client: RawClient, outside_image: Path) -> list[Outcome]:
    paths = {"/etc/passwd": "/etc/passwd", "/etc/shadow": "/etc/shadow", "a folder": "/etc",
             "a missing file": "/nonexistent/x.png", "an image outside uploads": str(outside_image),
             "a '..' path out of uploads": f"{app.tmp}/gradio/../../../../../../../etc/passwd"}
    outcomes = []
    for name, path in paths.items():
        payload = {"path": path}
        outcomes.append(measured(app, f"predict: {name}", lambda p=payload: refused_without_leak(
            client.call("predict", [p, False, None]))))
        outcomes.append(measured(app, f"annotate_frame: {name}", lambda p=payload: refused_without_leak(
            client.call("annotate_frame", [p]))))
        outcomes.append(measured(app, f"photo event: {name}", lambda p=payload: _photo_refused(
            client.event("photo", [p, 20, 0.4, False, False, None]))))
    return outcomes


def _photo_refused(outcome: tuple[bool, str]) -> tuple[bool, str]:
    _, answer = outcome
    return ("not uploaded" in answer and "root:" not in answer), answer


BOMBS: dict[str, Callable[[], bytes]] = {
    "float32 TIFF 7071x7071 (304 KB)": lambda: float_tiff(7071),
    "ICO around a 13000x13000 PNG": lambda: ico_around(png_bytes(13_000, 13_000, colour_type=6)),
    "PNG 40,000,000 x 1": lambda: png_bytes(40_000_000, 1),
    "PNG 20000x20000": lambda: png_bytes(20_000, 20_000),
}
REDUCED: dict[str, Callable[[], bytes]] = {
    "JPEG 7100x7100, decoded reduced": lambda: flat_jpeg(7100),
    "JPEG 8000x8000, decoded reduced": lambda: flat_jpeg(8000),
    "JPEG 20000x20000, decoded reduced": lambda: flat_jpeg(20_000),
}


def upload_cases(app: App, client: RawClient) -> list[Outcome]:
    outcomes = []
    for name, make in BOMBS.items():
        payload = client.upload(make(), "bomb" + (".tif" if "TIFF" in name else ".ico" if "ICO" in name else ".png"))
        outcomes.append(measured(app, f"bomb: {name}", lambda p=payload: _refused(client.call("predict", [p, False, None]))))
    for name, make in REDUCED.items():
        payload = client.upload(make(), "huge.jpg")
        outcomes.append(measured(app, name, lambda p=payload: client.call("predict", [p, False, None])))
    return outcomes


def _refused(outcome: tuple[bool, str]) -> tuple[bool, str]:
    succeeded, answer = outcome
    return not succeeded and "Traceback" not in answer, answer


def body_cases(app: App) -> list[Outcome]:
    chunk = b"A" * 1_000_000

    def data_url() -> tuple[bool, str]:
        status, seconds = post_raw(app.url, "/gradio_api/call/predict", 200_000_000, chunk, 200)
        return status != 200, f"HTTP {status} after {seconds:.2f} s"

    return [measured(app, "200 MB data URL body", data_url)]


def largest_accepted(make: Callable[[int], bytes], **limits: int) -> tuple[int, bytes]:
    """The largest side ``s`` for which ``make(s)`` passes :func:`fer_core.images.probe_image`, and its bytes."""
    from fer_core.images import ImageError, probe_image

    low, high = 64, 32_768
    while high - low > 16:
        middle = (low + high) // 2
        try:
            probe_image(make(middle), **limits)
            low = middle
        except ImageError:
            high = middle
    return low, make(low)


def concurrent_worst(app: App, client: RawClient) -> Outcome:
    """Every heavy event twice at once (they share two places), each on the costliest image it accepts,
    with two Browse exports of the whole data set and two Relabel starts beside them."""
    from ui.predict_tab import FRAME_MAX_PIXELS

    side, worst = largest_accepted(lambda s: png_bytes(s, s, colour_type=6))
    frame_side, worst_frame = largest_accepted(lambda s: png_bytes(s, s, colour_type=6), max_pixels=FRAME_MAX_PIXELS)
    big, frame = client.upload(worst, "worst.png"), client.upload(worst_frame, "frame.png")
    relabel = client.page_inputs("relabel_start", _relabel_inputs(client, "worst-case"))
    jobs = {"predict": lambda: client.call("predict", [big, False, None]),
            "annotate_frame": lambda: client.call("annotate_frame", [frame]),
            "photo": lambda: client.event("photo", [big, 20, 0.4, False, True, None]),
            "export_selection": lambda: client.call("export_selection", []),
            "relabel_start": lambda: client.event("relabel_start", relabel)}

    def run() -> tuple[bool, str]:
        names = list(jobs) * 2
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda name: jobs[name](), names))
        failed = [f"{name}: {answer[:80]}" for name, (ok, answer) in zip(names, results) if not ok]
        return not failed, (f"{len(results) - len(failed)}/{len(results)} answered "
                            f"(RGBA PNG {side}x{side}, frames {frame_side}x{frame_side})"
                            + (f"; failed: {'; '.join(failed)}" if failed else ""))

    return measured(app, "every heavy event x2 at once, costliest images", run)


def big_photo(width: int, height: int) -> bytes:
    """The test photo enlarged to ``width`` x ``height``, as a JPEG of a few MB (slow to search for faces)."""
    from benchmarks.app_bench import test_photo

    buf = io.BytesIO()
    Image.fromarray(test_photo()).resize((width, height), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def sessions_case(app: App, client: RawClient, sessions: int = 200) -> Outcome:
    photo = client.upload(photo_jpeg(), "photo.jpg")

    def run() -> tuple[bool, str]:
        before = app.rss_mb()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: client.event("photo", [photo, 20, 0.4, False, False, None]), range(sessions)))
        grown = app.rss_mb() - before
        return all(ok for ok, _ in results) and grown < 300, f"{sessions} photo sessions: memory {grown:+.0f} MB"

    return measured(app, f"{sessions} photo sessions", run)


def leak_case(app: App, client: RawClient, seconds: float, clients: int = 16) -> Outcome:
    photo = client.upload(photo_jpeg(), "photo.jpg")

    def run() -> tuple[bool, str]:
        deadline = time.monotonic() + seconds
        marks: list[float] = []

        def one_client(_: int) -> int:
            calls = 0
            while time.monotonic() < deadline:
                client.call("predict", [photo, False, None])
                calls += 1
            return calls

        def sample() -> None:
            while time.monotonic() < deadline:
                marks.append(app.rss_mb())
                time.sleep(seconds / 6)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(clients) as pool:
            calls = sum(pool.map(one_client, range(clients)))
        sampler.join()
        third = max(1, len(marks) // 3)
        growth = np.mean(marks[-third:]) - np.mean(marks[:third])
        return growth < 100, (f"{calls} predict calls by {clients} clients in {seconds:.0f} s; memory "
                              f"{' -> '.join(f'{m:.0f}' for m in marks)} MB "
                              f"(last third - first third: {growth:+.0f} MB)")

    return measured(app, f"{clients} clients x predict for {seconds:.0f} s", run)


def exports_case(app: App, client: RawClient, repeats: int = 3) -> Outcome:
    def run() -> tuple[bool, str]:
        before = app.temp_mb()
        answers = [client.call("export_selection", []) for _ in range(repeats)]
        grown = app.temp_mb() - before
        per_call = [len(a[1]) for a in answers]
        return all(ok for ok, _ in answers), f"{repeats} exports: temp folder {grown:+.1f} MB ({per_call} answer bytes)"

    return measured(app, f"export_selection x {repeats}", run)


def burst_case(app: App, client: RawClient, burst: int = 66) -> Outcome:
    """``burst`` predict calls at once on a large photo, then one Relabel start and answer, timed."""
    big = client.upload(big_photo(4096, 3072), "big.jpg")

    client.event("relabel_start", client.page_inputs("relabel_start", _relabel_inputs(client, "warm-up")))

    def run() -> tuple[bool, str]:
        with ThreadPoolExecutor(burst) as pool:
            futures = [pool.submit(client.call, "predict", [big, False, None]) for _ in range(burst)]
            time.sleep(1.0)  # the burst is queued now
            session = uuid.uuid4().hex
            started = time.perf_counter()
            start_ok, start_answer = client.event(
                "relabel_start", client.page_inputs("relabel_start", _relabel_inputs(client, "burst-annotator")),
                session=session)
            seconds = time.perf_counter() - started
            results = [f.result() for f in futures]
        full = sum("full" in answer.lower() or "busy" in answer.lower() for ok, answer in results if not ok)
        return start_ok and seconds < 1.0, (f"relabel_start during the burst: {seconds:.2f} s "
                                            f"({'answered' if start_ok else start_answer[:80]}); "
                                            f"{sum(ok for ok, _ in results)} predict answered, {full} told busy")

    return measured(app, f"burst of {burst} predict + a Relabel start", run)


def _relabel_inputs(client: RawClient, name: str) -> list:
    """The visible inputs of ``relabel_start`` (the name box, then the queue settings) with ``name`` and
    the ``random`` queue, the rest at their defaults, read from the app's API description."""
    info = json.loads(urllib.request.urlopen(f"{client.url}/gradio_api/info", timeout=30).read())
    parameters = info["named_endpoints"]["/relabel_start"]["parameters"]
    values = []
    for p in parameters:
        if p["component"] == "Textbox":
            values.append(name)
        elif p["component"] == "Dropdown":
            values.append("random")
        else:
            values.append(p.get("parameter_default"))
    return values


def undo_case(app: App, client: RawClient) -> Outcome:
    """Another visitor, typing the same name, tries to undo an annotator's answer."""

    def run() -> tuple[bool, str]:
        from gradio_client import Client

        owner = Client(app.url, verbose=False)
        intruder = Client(app.url, verbose=False)
        try:
            inputs = _relabel_inputs(client, "ann")
            owner.predict(*inputs, api_name="/relabel_start")
            owner.predict(*inputs, api_name="/relabel_happy")
            try:
                intruder.predict(*inputs, api_name="/relabel_undo")
                undone = "the intruder's undo answered (nothing of theirs to undo)"
            except Exception as err:
                undone = f"the intruder's undo was refused: {str(err)[:120]}"
            decisions = _decisions(app)
            return decisions == 1, f"{undone}; decisions kept: {decisions}"
        finally:
            owner.close()
            intruder.close()

    return measured(app, "undo of another session's answer", run)


def _decisions(app: App) -> int:
    from annotate import open_store

    with open_store(f"sqlite:///{app.work / 'answers.db'}") as store:
        return len(store.decisions())


# ------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace, work: Path) -> list[Outcome]:
    started = time.monotonic()
    app = App(work, args.data)
    print(f"app started in {time.monotonic() - started:.1f} s, {app.rss_mb():.0f} MB resident", flush=True)
    outside = work / "outside.png"
    outside.write_bytes(photo_jpeg())
    try:
        client = RawClient(app.url)
        outcomes: list[Outcome] = []
        for group in (lambda: path_cases(app, client, outside), lambda: upload_cases(app, client),
                      lambda: body_cases(app), lambda: [concurrent_worst(app, client)],
                      lambda: [sessions_case(app, client)], lambda: [leak_case(app, client, args.leak_seconds)],
                      lambda: [exports_case(app, client)], lambda: [burst_case(app, client)],
                      lambda: [undo_case(app, client)]):
            for outcome in group():
                print(outcome.line(), flush=True)
                outcomes.append(outcome)
        time.sleep(args.idle)
        print(f"after {args.idle:.0f} s idle: {app.rss_mb():.0f} MB resident, peak "
              f"{_status_mb(app.process.pid, 'VmHWM'):.0f} MB; temp folders {app.temp_mb():.1f} MB")
    finally:
        app.close()
    print(f"after the app stopped: temp folders {app.temp_mb():.1f} MB")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data set for the app (default: the bundled sample)")
    parser.add_argument("--leak-seconds", type=float, default=60.0, help="how long 16 clients call predict")
    parser.add_argument("--idle", type=float, default=150.0, help="rest before the memory after idle is read")
    parser.add_argument("--json", default=None, help="also write the outcomes here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fer_attack_"))
    try:
        outcomes = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    failed = [o.case for o in outcomes if not o.safe]
    print("every case answered safely" if not failed else f"unsafe answers: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
