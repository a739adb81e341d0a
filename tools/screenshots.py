"""The README's screenshots: the three tabs of the app as it runs now, on the bundled sample.

    python -m tools.screenshots [--out docs/images] [--width 1280] [--height 800]

Launches the app on a free loopback port with a temporary relabel store, opens it in Debian's
headless Chromium through Playwright (as the browser tests do), and writes ``predict.jpg`` (a
bundled example photo with its three faces found), ``browse.jpg`` (the sample's happy faces,
one selected) and ``relabel.jpg`` (the first face of the queue) into ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from fer_core.config import EXAMPLES_DIR

REPO = Path(__file__).resolve().parents[1]
#: The README's images.
DEFAULT_OUT = REPO / "docs" / "images"
TIMEOUT_MS = 60_000


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).first.click()


def _panel(page):
    return page.locator("[role=tabpanel]:visible").last


def shoot_predict(page, out: Path) -> Path:
    from playwright.sync_api import expect

    _panel(page).locator('input[type=file][accept="image/*"]').set_input_files(str(EXAMPLES_DIR / "group_of_three.jpg"))
    expect(page.get_by_text(re.compile(r"^3 faces found"))).to_be_visible()
    return _save(page, out / "predict.jpg")


def shoot_browse(page, out: Path) -> Path:
    from playwright.sync_api import expect

    _open_tab(page, "Browse")
    panel = _panel(page)
    expect(panel.get_by_text(re.compile(r"faces match"))).to_be_visible()
    panel.get_by_label("happy", exact=True).check()
    items = panel.get_by_role("button", name=re.compile(r"^Thumbnail \d+ of \d+$"))
    expect(items.first).to_contain_text("Happy")
    items.first.click()
    expect(panel.get_by_role("grid", name="Fields")).to_contain_text("sample_id")
    return _save(page, out / "browse.jpg")


def shoot_relabel(page, out: Path) -> Path:
    from playwright.sync_api import expect

    _open_tab(page, "Relabel")
    panel = _panel(page)
    panel.get_by_label("Your name").fill("ana")
    panel.get_by_role("button", name="Start / refresh the queue").click()
    expect(panel.get_by_text("Given label:")).to_be_visible()
    return _save(page, out / "relabel.jpg")


def _save(page, path: Path) -> Path:
    page.wait_for_timeout(500)  # let transitions finish
    page.screenshot(path=str(path), type="jpeg", quality=85, full_page=False)
    return path


def take(out: Path, *, width: int = 1280, height: int = 800) -> list[Path]:
    """Launch the app and its browser, and write the three screenshots into ``out``."""
    from playwright.sync_api import sync_playwright

    import app
    from annotate import open_store
    from benchmarks.app_bench import _free_port
    from benchmarks.webcam import CHROMIUM, CHROMIUM_ARGS

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        store = open_store(f"sqlite:///{Path(work) / 'answers.db'}")
        demo = app.build_demo(app.load_data(None), store)
        port = _free_port()
        app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"http://127.0.0.1:{port}")
                paths = [shoot(page, out) for shoot in (shoot_predict, shoot_browse, shoot_relabel)]
                browser.close()
        finally:
            demo.close()
            store.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG files")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args(argv)
    for path in take(args.out, width=args.width, height=args.height):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
