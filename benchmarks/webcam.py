"""Frames per second of the webcam path in a real browser: ``python -m benchmarks.webcam``.

Launches the app over the bundled sample, opens it in Debian's headless Chromium
(Playwright) whose camera is a fake device playing a 640x480 video of a photo with one
face (``--use-file-for-fake-video-capture``), turns the camera on in the Webcam tab,
presses Record, and counts how often the annotated frame shown to the user changes.
This is the path a visitor's webcam takes (Gradio's streaming event, ``stream_every``
and its concurrency), where ``python -m benchmarks.app_bench`` measures the named API endpoint
through ``gradio_client``. Loopback only; bounded by ``--seconds``.

Needs ``playwright`` (requirements-test.txt) and Chromium at ``/usr/bin/chromium`` (or
``$FER_CHROMIUM``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.app_bench import numbered, test_photo
from fer_core.hardware import cpu_description

CHROMIUM = Path(os.environ.get("FER_CHROMIUM", "/usr/bin/chromium"))
#: No sandbox as root, and nothing that would reach for the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-dev-shm-usage"]

#: Records, in the page, the time of every change of the annotated frame.
_OBSERVER_JS = """() => {
  window.__frames = [];
  const target = document.querySelector('#webcam-out');
  new MutationObserver(() => {
    const img = target.querySelector('img');
    const src = img ? img.getAttribute('src') : null;
    if (src && src !== window.__lastSrc) { window.__lastSrc = src; window.__frames.push(performance.now()); }
  }).observe(target, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}"""


def write_y4m(path: Path, frame_rgb: np.ndarray, frames: int = 90) -> None:
    """A 30 frames/s Y4M (YUV 4:2:0) video of ``frame_rgb``, its frame number written in a corner.

    Every frame must differ: the app's answers are files named by their content, so two
    equal frames in a row would show as one.
    """
    h, w = frame_rgb.shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            out.write(b"FRAME\n" + cv2.cvtColor(numbered(frame_rgb, i), cv2.COLOR_RGB2YUV_I420).tobytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class WebcamFigures:
    seconds: float  #: measured time
    processed: int  #: frames the app processed in that time
    shown: list[float]  #: page times (ms) at which a new annotated frame was shown

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.shown)


def fake_camera_args(video: Path) -> list[str]:
    """Chromium flags for a camera that plays ``video`` (Y4M) and needs no permission prompt."""
    return ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]


def face_video(folder: Path) -> Path:
    """The bench's video (a 640x480 photo with one face, numbered frames), written into ``folder``."""
    video = folder / "face_640x480.y4m"
    write_y4m(video, test_photo())
    return video


def measure(seconds: float, warmup: float, *, browser: Any = None) -> WebcamFigures:
    """Stream the fake camera through the launched app for ``warmup`` + ``seconds`` and count frames.

    ``browser``: a Playwright Chromium already launched with :func:`fake_camera_args`
    (a test's); ``None`` launches one for the run.
    """
    from playwright.sync_api import sync_playwright

    import app
    import ui.predict_tab as predict_tab

    # Count the frames the app processes: the browser may show fewer (a camera at 30 frames/s
    # sends the same picture twice when the app asks faster than it films).
    handled: list[float] = []
    annotate = predict_tab.annotate_frame

    def counted(frame, **kwargs):
        handled.append(time.perf_counter())
        return annotate(frame, **kwargs)

    predict_tab.annotate_frame = counted

    work = Path(tempfile.mkdtemp(prefix="fer_webcam_bench_"))
    os.environ.setdefault("FER_DB_URL", f"sqlite:///{work / 'annotations.db'}")
    demo = app.build_demo(app.load_data(None))
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)

    def run(chromium: Any) -> tuple[list[float], int]:
        context = chromium.new_context(viewport={"width": 1280, "height": 800}, permissions=["camera"])
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("tab", name="Webcam").click()
            page.get_by_text("Click to Access Webcam").click()
            page.evaluate(_OBSERVER_JS)
            page.get_by_role("button", name="capture photo").click()  # "Record": starts the stream
            page.wait_for_function("() => window.__frames.length > 0", timeout=60_000)
            page.wait_for_timeout(warmup * 1000)
            start, server_start = page.evaluate("() => performance.now()"), time.perf_counter()
            page.wait_for_timeout(seconds * 1000)
            stamps = [t for t in page.evaluate("() => window.__frames") if t >= start]
            return stamps, sum(1 for t in handled if server_start <= t <= server_start + seconds)
        finally:
            context.close()

    try:
        if browser is not None:
            stamps, processed = run(browser)
        else:
            with sync_playwright() as playwright:
                chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                      args=[*CHROMIUM_ARGS, *fake_camera_args(face_video(work))])
                try:
                    stamps, processed = run(chromium)
                finally:
                    chromium.close()
    finally:
        demo.close()
        predict_tab.annotate_frame = annotate
    return WebcamFigures(seconds, processed, stamps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time, after a warm-up")
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        print("error: playwright is not installed (pip install -r requirements-test.txt)", file=sys.stderr)
        return 2
    if not os.access(CHROMIUM, os.X_OK):
        print(f"error: no Chromium at {CHROMIUM} (apt-get install -y chromium, or set FER_CHROMIUM)", file=sys.stderr)
        return 2
    figures = measure(args.seconds, args.warmup)
    stamps, processed, gaps = figures.shown, figures.processed, figures.gaps
    if len(stamps) < 2:
        print("error: the annotated frame did not change during the measurement", file=sys.stderr)
        return 1
    print(f"webcam path in Chromium, 640x480 fake camera (30 frames/s) with one face, over {args.seconds:.0f} s: "
          f"{processed / args.seconds:.1f} frames/s processed by the app, {len(stamps) / args.seconds:.1f} distinct "
          f"annotated frames/s shown (gap median {statistics.median(gaps):.0f} ms, p95 {np.percentile(gaps, 95):.0f} ms); "
          f"cpu: {cpu_description()}, shared by the app and the browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
