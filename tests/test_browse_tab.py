"""The Browse tab through the launched app on the bundled sample: filtering, paging, exporting."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conftest import free_port
from fer_core.browse import BrowseQuery
from fer_core.quality import COMPONENT_COLUMNS
from ui.browse_tab import Browser, query_from_inputs


@pytest.fixture(scope="module")
def launched():
    from gradio_client import Client

    import app

    table = app.load_data(None)
    demo = app.build_demo(table)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}", verbose=False), table
    finally:
        demo.close()


def _filters(split="all", emotions=(), q_min=0.0, q_max=1.0, agreement="any", duplicates="any",
             sort="quality, lowest first", page_size=48) -> list:
    components = [0.0, 1.0] * len(COMPONENT_COLUMNS)
    return [split, list(emotions), q_min, q_max, *components, "any", agreement, duplicates, sort, 0, page_size]


def _matches(count_text: str) -> int:
    return int(re.search(r"\*\*([\d,]+)\*\*", count_text).group(1).replace(",", ""))


def _captions(gallery) -> list[str]:
    return [item["caption"] for item in gallery]


class TestBrowseTab:
    def test_filter_reduces_the_count_as_expected(self, launched) -> None:
        client, table = launched
        result = client.predict(*_filters(), api_name="/browse")
        assert _matches(result[1]) == len(table) == 350
        result = client.predict(*_filters(emotions=["happy", "sad"], q_min=0.5), api_name="/browse")
        frame = table.frame
        expected = int(((frame["emotion"].isin([3, 4])) & (frame["quality_score"] >= 0.5)).sum())
        assert 0 < expected < 100
        assert _matches(result[1]) == expected
        assert all(c.startswith(("Happy", "Sad")) for c in _captions(result[0]))

    def test_paging_shows_the_next_faces(self, launched) -> None:
        client, table = launched
        first = client.predict(*_filters(sort="quality, highest first", page_size=24), api_name="/browse")
        second = client.predict(1, 24, api_name="/next_page")  # the page shown and the page size
        assert second[2] == 2
        browser = Browser(table)
        rows = browser.select(BrowseQuery(sort="quality, highest first"))
        expected = [browser.caption(int(r)) for r in rows[24:48]]
        assert _captions(second[0]) == expected
        assert _captions(first[0]) == [browser.caption(int(r)) for r in rows[:24]]

    def test_export_has_the_rows_of_the_filter(self, launched) -> None:
        client, table = launched
        client.predict(*_filters(emotions=["angry"], agreement="disagrees"), api_name="/browse")
        csv_update, parquet_update = client.predict(api_name="/export_selection")
        csv_path = csv_update["value"] if isinstance(csv_update, dict) else csv_update
        exported = pd.read_csv(csv_path)
        frame = table.frame
        expected = frame[(frame["emotion"] == 0) & ~frame["model_agrees"]]
        assert len(exported) == len(expected) > 0
        assert sorted(exported["sample_id"]) == sorted(expected["sample_id"])
        from fer_core.datasets import load_faces

        parquet_path = parquet_update["value"] if isinstance(parquet_update, dict) else parquet_update
        back = load_faces(parquet_path)
        assert sorted(back.frame["sample_id"]) == sorted(expected["sample_id"])
        rows = np.flatnonzero(frame["sample_id"].isin(back.frame["sample_id"]).to_numpy())
        by_id = dict(zip(frame["sample_id"].to_numpy()[rows], table.images[rows]))
        assert all(np.array_equal(img, by_id[sid]) for sid, img in zip(back.frame["sample_id"], back.images))


def test_query_from_inputs_maps_every_widget() -> None:
    bounds = [0.0, 1.0, 0.1, 0.9, 0.0, 1.0, 0.0, 1.0]
    query = query_from_inputs("train", ["happy"], 0.2, 0.8, bounds, "corrected", "disagrees", "cross-split",
                              "random", 7)
    assert query == BrowseQuery(split="train", emotions=("happy",), quality=(0.2, 0.8),
                                components={COMPONENT_COLUMNS[1]: (0.1, 0.9)}, label_status="corrected",
                                agreement="disagrees", duplicates="cross-split", sort="random", seed=7)
    assert query_from_inputs("all", [], 0, 1, [0.0, 1.0] * 4, "any", "any", "any", "random", None).split is None


# ------------------------------------------------------------------------------ the filter sliders


def test_filter_sliders_filter_on_release_only() -> None:
    """Every slider of the tab filters when released (drag end, number box left), never on every step."""
    import gradio as gr

    import app
    from ui.browse_tab import FILTER_KEYS_JS, FILTER_SLIDER_CLASS, build_browse_tab

    table = app.load_data(None)
    with gr.Blocks() as demo:
        build_browse_tab(Browser(table))
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}
    sliders = {i for i, c in components.items() if c["type"] == "slider"}
    assert len(sliders) == 2 + 2 * len(COMPONENT_COLUMNS)
    (browse,) = [d for d in config["dependencies"] if d.get("api_name") == "browse"]
    triggers = {(target, event) for target, event in browse["targets"]}
    assert {(i, "release") for i in sliders} <= triggers
    assert not {(i, e) for i, e in triggers if i in sliders and e != "release"}, "a drag would filter at every step"
    for i in sliders:
        assert FILTER_SLIDER_CLASS in components[i]["props"]["elem_classes"]
    # The script that makes Enter (and the arrow keys) end a slider's edit is in the page.
    scripts = [c for c in components.values() if c["type"] == "html" and c["props"].get("js_on_load")]
    assert [c["props"]["js_on_load"] for c in scripts] == [FILTER_KEYS_JS]
    assert '"Enter"' in FILTER_KEYS_JS and ".blur()" in FILTER_KEYS_JS


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium driven by Playwright (skips without them, as tests/test_browser.py does)."""
    import os

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-test.txt)")
    from benchmarks.webcam import CHROMIUM, CHROMIUM_ARGS

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set FER_CHROMIUM)")
    sync_api.expect.set_options(timeout=60_000)  # the app shares a 2-core CPU with other work in CI
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield sync_api, browser
        finally:
            browser.close()


@pytest.fixture
def browse_page(chromium, launched):
    """The launched app's Browse tab in a desktop-sized page; also the filter calls it sends."""
    sync_api, browser = chromium
    client, _ = launched
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    joins: list[str] = []
    page.on("request", lambda request: joins.append(request.url) if "/queue/join" in request.url else None)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(client.src)
    tab = page.get_by_role("tab", name="Browse", exact=True).first
    tab.click()
    sync_api.expect(tab).to_have_attribute("aria-selected", "true")
    try:
        yield sync_api.expect, page.locator("[role=tabpanel]:visible").last, joins
        assert errors == [], f"JavaScript errors in the page: {errors}"
    finally:
        context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_value_typed_in_a_slider_filters_on_enter(browse_page, launched) -> None:
    expect, panel, _ = browse_page
    frame = launched[1].frame
    count = panel.get_by_text(re.compile(r"faces match"))
    expect(count).to_contain_text(f"{len(frame):,} of {len(frame):,} faces match")

    box = panel.get_by_label("number input for Quality at least")
    box.fill("0.5")
    box.press("Enter")
    expected = int((frame["quality_score"] >= 0.5).sum())
    assert 0 < expected < len(frame)
    expect(count).to_contain_text(f"{expected:,} of {len(frame):,} faces match")
    expect(panel.get_by_label("range slider for Quality at least")).to_have_value("0.5")

    name = COMPONENT_COLUMNS[0]
    panel.get_by_text("Component scores").click()
    box = panel.get_by_label(f"number input for {name} at most")
    box.fill("0.6")
    box.press("Enter")
    both = int(((frame["quality_score"] >= 0.5) & (frame[name] <= 0.6)).sum())
    assert both < expected
    expect(count).to_contain_text(f"{both:,} of {len(frame):,} faces match")


@pytest.mark.slow
@pytest.mark.browser
def test_a_drag_filters_once_when_released(browse_page, launched) -> None:
    expect, panel, joins = browse_page
    frame = launched[1].frame
    count = panel.get_by_text(re.compile(r"faces match"))
    expect(count).to_contain_text(f"{len(frame):,} of {len(frame):,} faces match")
    page = panel.page
    slider = panel.get_by_label("range slider for Quality at least")
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    before = len(joins)
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    for step in range(1, 11):  # ten steps to the middle
        page.mouse.move(box["x"] + 2 + step * (box["width"] / 2 - 2) / 10, y)
        page.wait_for_timeout(50)
    page.mouse.up()
    value = float(slider.input_value())
    assert 0.3 < value < 0.7
    expected = int((frame["quality_score"] >= value).sum())
    expect(count).to_contain_text(f"{expected:,} of {len(frame):,} faces match")
    page.wait_for_timeout(500)
    assert len(joins) - before == 1, f"{len(joins) - before} filter calls for one drag"

    # The arrow keys step the slider; the filter follows when the key goes up.
    slider.focus()
    slider.press("ArrowRight")
    stepped = float(slider.input_value())
    assert stepped == pytest.approx(value + 0.01)
    expected = int((frame["quality_score"] >= stepped).sum())
    expect(count).to_contain_text(f"{expected:,} of {len(frame):,} faces match")
