"""App-level benchmark: start ``python app.py``, then time the ``predict`` API and the webcam path.

    python -m benchmarks.app_bench [--requests 50] [--frames 100]

Prints the start-up time (process start to the first answered ``predict``), the median and
p95 latency of ``predict`` on a 640x480 photo with one face through ``gradio_client`` (as
the README calls it, with one SSL context reused: :func:`api_client`; and with the client's
defaults, which build a new context for each of a call's HTTP requests), and the frames per
second the webcam path (``annotate_frame``, the function the webcam stream runs) sustains on
640x480 frames sent one after another. Loopback only.
"""

import argparse
import functools
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

from fer_core.hardware import cpu_description

REPO = Path(__file__).resolve().parents[1]


def test_photo() -> np.ndarray:
    """A 640x480 photo with one face: the bundled astronaut example, cropped to 4:3 and resized."""
    from fer_core.config import EXAMPLES_DIR

    rgb = np.asarray(Image.open(EXAMPLES_DIR / "astronaut.jpg").convert("RGB"))
    side = rgb.shape[1]
    crop = rgb[: side * 3 // 4, :side]
    return np.asarray(Image.fromarray(crop).resize((640, 480), Image.Resampling.BICUBIC))


def numbered(frame: np.ndarray, number: int) -> np.ndarray:
    """A copy of ``frame`` with ``number`` written in its bottom-left corner."""
    import cv2

    out = np.ascontiguousarray(frame).copy()
    cv2.putText(out, f"{number:04d}", (8, out.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int, *, log_path: Path) -> tuple[subprocess.Popen, float]:
    """``python app.py`` on ``port``; returns the process and its start time (``time.monotonic``)."""
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                               stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return process, started


# One SSL context for every request of every client. gradio_client hands ``ssl_verify`` to
# httpx as ``verify``, and with ``True`` httpx builds a new context (loading the CA bundle:
# 26 ms of CPU on this machine) for each of the three requests of a call (upload, queue join,
# answer stream), even for an http:// address. A context object is reused and still verifies
# certificates on https. Built on first use, not at import.
@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def api_client(url: str):
    """A ``gradio_client.Client`` for ``url`` that reuses one SSL context (see the README's API example)."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=_ssl_context())


def connect(url: str, process: subprocess.Popen, timeout: float = 120.0):
    """:func:`api_client` for the app ``process`` serves at ``url``, once it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode}")
        try:
            return api_client(url)
        except Exception:  # not listening yet
            time.sleep(0.2)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _summary(latencies_ms: list[float]) -> str:
    return (f"median {statistics.median(latencies_ms):.1f} ms, p95 {_percentile(latencies_ms, 95):.1f} ms, "
            f"max {max(latencies_ms):.1f} ms")


def _predict_latencies(client, photo: Path, requests: int) -> list[float]:
    """Milliseconds of ``requests`` ``predict`` calls on ``photo``, one after another, after 3 warm-up calls."""
    from gradio_client import handle_file

    for _ in range(3):
        client.predict(handle_file(str(photo)), api_name="/predict")
    latencies = []
    for _ in range(requests):
        t0 = time.perf_counter()
        client.predict(handle_file(str(photo)), api_name="/predict")
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="timed predict calls")
    parser.add_argument("--frames", type=int, default=100, help="timed webcam-path frames")
    parser.add_argument("--window", type=int, default=4, help="webcam frames in flight at once (gradio_client grows flaky above 4)")
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="fer_bench_"))
    photo = work / "photo_640x480.jpg"
    Image.fromarray(test_photo()).save(photo, quality=90)
    port = _free_port()
    process, started = start_app(port, log_path=work / "app.log")
    try:
        client = connect(f"http://127.0.0.1:{port}", process)
        first = client.predict(handle_file(str(photo)), api_name="/predict")
        startup = time.monotonic() - started
        if len(first["faces"]) != 1:
            raise RuntimeError(f"expected one face in the test photo, got {len(first['faces'])}")
        latencies = _predict_latencies(client, photo, args.requests)
        default_client = Client(f"http://127.0.0.1:{port}", verbose=False)
        default_latencies = _predict_latencies(default_client, photo, args.requests)
        default_client.close()
        # Frames as a camera sends them: every one differs (its number is written in a corner).
        # Identical frames would give identical answers, which Gradio caches under one
        # content-named file, and two in flight at once can then read it half-written.
        # The pipelined pass sends the mirror images: answers of the sequential pass are cached already.
        # All are written before the clock starts.
        photo_rgb = test_photo()
        frames = [work / f"frame_{i}.jpg" for i in range(args.frames)]
        mirrors = [work / f"mirror_{i}.jpg" for i in range(args.frames)]
        for i, (path, mirror) in enumerate(zip(frames, mirrors)):
            Image.fromarray(numbered(photo_rgb, i)).save(path, quality=90)
            Image.fromarray(numbered(photo_rgb[:, ::-1], i)).save(mirror, quality=90)
        t0 = time.perf_counter()
        for path in frames:
            client.predict(handle_file(str(path)), api_name="/annotate_frame")
        fps = args.frames / (time.perf_counter() - t0)
        # A camera does not wait for each answer before sending the next frame: keep a few in flight.
        in_flight: deque = deque()
        t0 = time.perf_counter()
        for mirror in mirrors:
            in_flight.append(client.submit(handle_file(str(mirror)), api_name="/annotate_frame"))
            if len(in_flight) >= args.window:
                in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
        pipelined_fps = args.frames / (time.perf_counter() - t0)
    finally:
        process.terminate()
        process.wait(timeout=30)

    from ui.predict_tab import annotate_frame

    frame = test_photo()
    annotate_frame(frame)
    t0 = time.perf_counter()
    for _ in range(args.frames):
        annotate_frame(frame)
    handler_fps = args.frames / (time.perf_counter() - t0)

    print(f"start-up, python app.py to the first answered predict: {startup:.1f} s")
    print(f"predict, 640x480 photo with one face, {args.requests} calls through gradio_client "
          f"(one SSL context reused, as in the README): {_summary(latencies)}")
    print(f"  the same through gradio_client's defaults (a new SSL context per request): "
          f"{_summary(default_latencies)}")
    print(f"webcam path, 640x480 frames through the app: {pipelined_fps:.1f} frames/s with {args.window} frames "
          f"in flight, {fps:.1f} frames/s one at a time (the frame function alone, in process: "
          f"{handler_fps:.1f} frames/s)")
    print(f"(cpu: {cpu_description()}; model {first.get('model_version', first['model'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
