"""End-to-end tests in a real headless browser: Debian's ``chromium`` driven by Playwright.

The app is launched in process over the bundled sample with a temporary relabel store, as in
``tests/test_relabel_tab.py``; each tab's flow runs at a desktop (1280x800) and a phone
(390x844) viewport and leaves a full-page screenshot per tab and viewport in
``artifacts/screenshots/<tab>_<width>x<height>.png`` to look at.

Needs ``playwright`` (requirements-test.txt) and a Chromium at ``/usr/bin/chromium`` (or
``$FER_CHROMIUM``); ``.ci/run`` installs Debian's package. Without them the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from benchmarks.webcam import CHROMIUM, CHROMIUM_ARGS, face_video, fake_camera_args
from conftest import REPO, serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = REPO / "artifacts" / "screenshots"
#: name -> Playwright context options; the phone is a 390 px wide touch screen.
VIEWPORTS = {
    "1280x800": {"viewport": {"width": 1280, "height": 800}},
    "390x844": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
                "device_scale_factor": 2},
}
#: Generous: the app shares a 2-core CPU with other work in CI.
TIMEOUT_MS = 60_000
EXAMPLE = REPO / "fer_core" / "assets" / "examples" / "group_of_three.jpg"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-test.txt)")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium; .ci/run "
                "does it as root or with sudo) or set FER_CHROMIUM", allow_module_level=True)

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory):
    """The app on a free loopback port: (url, store, table)."""
    import app
    from annotate import open_store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_CACHE_DIR", str(tmp_path_factory.mktemp("browser_cache")))
        table = app.load_data(None)
        store = open_store(tmp_path_factory.mktemp("browser_db") / "relabel.db")
        demo = app.build_demo(table, store)
        with serving(demo) as url:
            yield url, store, table


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    # Its camera is a fake device playing a video of a face, for the webcam test.
    camera = fake_camera_args(face_video(tmp_path_factory.mktemp("camera")))
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *camera],
                                              headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(params=list(VIEWPORTS))
def page(request, browser, launched):
    url = launched[0]
    context = browser.new_context(**VIEWPORTS[request.param])
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    expect(page.get_by_role("tab", name="Predict")).to_be_visible()
    page.viewport_name = request.param  # type: ignore[attr-defined]
    try:
        yield page
        assert errors == [], f"JavaScript errors in the page: {errors}"
    finally:
        context.close()


def _panel(page):
    """The innermost tab panel shown (a sub-tab's panel when the tab has sub-tabs)."""
    return page.locator("[role=tabpanel]:visible").last


def _open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True).first
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


def _screenshot(page, tab: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{tab}_{page.viewport_name}.png"
    page.wait_for_timeout(300)  # let transitions finish
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _no_horizontal_scroll(page) -> None:
    """The page itself never scrolls sideways (wide tables scroll inside their own box)."""
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than the {page.viewport_name} screen"


def test_predict_tab_shows_faces_and_labels(page, launched) -> None:
    from ui.predict_tab import predict_json

    expected = [face["label"] for face in predict_json(str(EXAMPLE))["faces"]]
    assert len(expected) == 3
    panel = _panel(page)
    panel.locator('input[type=file][accept="image/*"]').set_input_files(str(EXAMPLE))

    message = page.get_by_text(re.compile(r"^\d+ faces? found"))
    expect(message).to_have_text(re.compile(r"^3 faces found"))
    grid = page.get_by_role("grid", name="Every face")
    expect(grid).to_have_attribute("aria-rowcount", "4")  # the header and three faces
    expect(grid.locator("[role=row][data-index]")).to_have_count(3)
    for i, label in enumerate(expected):
        expect(grid.get_by_test_id(f"cell-{i}-0")).to_have_text(str(i + 1))
        expect(grid.get_by_test_id(f"cell-{i}-1")).to_have_text(label)
    # The face picker and the probabilities show the first (largest) face.
    expect(page.get_by_label("Face", exact=True)).to_have_value(re.compile(rf"^1: {expected[0]}", re.IGNORECASE))
    expect(page.get_by_test_id("label").first).to_contain_text(expected[0], ignore_case=True)
    _no_horizontal_scroll(page)
    _screenshot(page, "predict")


def test_browse_tab_filters_and_pages(page, launched) -> None:
    _, _, table = launched
    _open_tab(page, "Browse")
    panel = _panel(page)
    count = panel.get_by_text(re.compile(r"faces match"))
    expect(count).to_contain_text(f"{len(table):,} of {len(table):,} faces match · page 1 of 8")

    happy = int((table.frame["emotion_name"] == "happy").sum())
    panel.get_by_label("happy", exact=True).check()
    expect(count).to_contain_text(f"{happy} of {len(table):,} faces match · page 1 of 2")
    gallery_items = panel.get_by_role("button", name=re.compile(r"^Thumbnail \d+ of \d+$"))
    expect(gallery_items).to_have_count(48)
    expect(gallery_items.first).to_contain_text("Happy")  # captions: given label, quality, model
    assert all(text.startswith("Happy") for text in gallery_items.all_inner_texts())
    # Selecting a face shows its fields (the screenshot shows a full page with one face selected).
    gallery_items.first.click()
    fields = panel.get_by_role("grid", name="Fields")
    expect(fields).to_contain_text("sample_id")
    expect(fields).to_contain_text("happy")
    _no_horizontal_scroll(page)
    _screenshot(page, "browse")

    panel.get_by_role("button", name="Next ▶").click()
    expect(count).to_contain_text("page 2 of 2")
    expect(gallery_items).to_have_count(happy - 48)
    expect(panel.get_by_label("Page", exact=True)).to_have_value("2")


def _paragraph(panel, pattern: re.Pattern):
    """A paragraph of Markdown by its whole text (bold parts split ``get_by_text``'s text nodes)."""
    return panel.locator("p").filter(has_text=pattern)


def _wait_for_decisions(store, dataset: str, annotator: str, n: int, timeout: float = TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout
    while True:
        decisions = store.decisions(dataset)
        mine = decisions[decisions["annotator"] == annotator]
        if len(mine) >= n or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_relabel_tab_with_keyboard_shortcuts(page, launched) -> None:
    """Desktop: keys 4, n, 7 then Backspace with focus on the page. Phone: the same answers tapped."""
    _, store, table = launched
    phone = page.viewport_name == "390x844"
    name = f"browser {page.viewport_name}"  # each viewport's run is its own annotator
    _open_tab(page, "Relabel")
    panel = _panel(page)
    name_box = panel.get_by_label("Your name")
    name_box.press_sequentially(name)
    # Keys typed in the name box stay there: a digit and Backspace answer nothing.
    name_box.press("End")
    name_box.press("5")
    name_box.press("Backspace")
    expect(name_box).to_have_value(name)
    panel.get_by_role("button", name="Start / refresh the queue").click()
    expect(panel.get_by_text("Given label:")).to_be_visible()
    expect(_paragraph(panel, re.compile(r"^\d+ done, .*: 0 answers today"))).to_be_visible()
    expect(name_box).to_be_disabled()  # the tab is bound to this annotator now
    sample_id = panel.locator("code").first

    # Focus on the page body, not in the name box.
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    assert page.evaluate("() => document.activeElement === document.body")

    answered = []
    for done, (key, answer) in enumerate([("4", "happy"), ("n", "not_a_face"), ("7", "neutral")], start=1):
        answered.append(sample_id.inner_text())
        if phone:
            panel.locator(f"#relabel-{answer}").tap()
        else:
            page.keyboard.press(key)
        expect(_paragraph(panel, re.compile(rf": {done} answers today"))).to_be_visible()
        expect(sample_id).not_to_have_text(answered[-1])  # the next face came
        assert len(_wait_for_decisions(store, table.name, name, done)) == done
    if phone:
        panel.locator("#relabel-undo").tap()
    else:
        page.keyboard.press("Backspace")
    expect(panel.get_by_text("Undid your answer")).to_be_visible()
    expect(sample_id).to_have_text(answered[-1])  # the undone face is back

    decisions = _wait_for_decisions(store, table.name, name, 4)
    live = decisions[~decisions["undone"].astype(bool) & decisions["reverses_id"].isna()]
    assert len(decisions) == 4, decisions  # three answers and one reversal, nothing deleted
    assert list(live["label"]) == ["happy", "not_a_face"]
    assert list(live["sample_id"]) == answered[:2]
    _no_horizontal_scroll(page)
    _screenshot(page, "relabel")


def test_the_webcam_streams_annotated_frames_back(browser) -> None:
    """The live path: Chromium's fake camera (a video of a face) streams through the launched app and the
    annotated frames come back and change on screen (``python -m benchmarks.webcam`` measures the rate)."""
    from benchmarks.webcam import measure

    figures = measure(seconds=4, warmup=1, browser=browser)
    assert figures.processed >= 4, figures
    assert len(figures.shown) >= 4, figures


def test_the_readme_screenshots_are_made_by_the_tool(tmp_path: Path) -> None:
    """``python -m tools.screenshots`` makes the README's three pictures of the running app."""
    import subprocess
    import sys

    from PIL import Image

    # A process of its own: Playwright's sync API cannot start inside this module's running browser.
    done = subprocess.run([sys.executable, "-m", "tools.screenshots", "--out", str(tmp_path), "--width", "1000",
                           "--height", "700"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    paths = sorted(tmp_path.glob("*.jpg"), key=lambda p: ["predict.jpg", "browse.jpg", "relabel.jpg"].index(p.name))
    assert [p.name for p in paths] == ["predict.jpg", "browse.jpg", "relabel.jpg"]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (1000, 700) and image.format == "JPEG"
    committed = REPO / "docs" / "images"
    assert all((committed / p.name).is_file() for p in paths), "the README's images are committed"
