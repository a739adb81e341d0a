"""The Browse tab through the launched app on the bundled sample: filtering, paging, exporting."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import serving
from fer_core.browse import OPINION_COLUMNS, PROBABILITY_COLUMNS, BrowseQuery, has_opinion
from fer_core.catalog import ModelCatalog, UnknownModel
from fer_core.labels import EMOTIONS
from fer_core.quality import COMPONENT_COLUMNS
from second_model import COPY_NAME, TUNED_NAME, copy_bundled, copy_model
from ui.browse_tab import Browser, query_from_inputs


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, tuned_weights: Path) -> ModelCatalog:
    """The bundled model (the default), a copy of it under another name, and a model fine-tuned from it."""
    folder = tmp_path_factory.mktemp("models")
    copy_bundled(folder)
    copy_model(tuned_weights, folder)
    return ModelCatalog(folder=folder)


@pytest.fixture(scope="module")
def launched(catalog: ModelCatalog, tmp_path_factory: pytest.TempPathFactory):
    from gradio_client import Client

    import app
    from annotate import open_store

    with pytest.MonkeyPatch.context() as patch:  # the module's own cache, as conftest gives each test
        patch.setenv("FER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        table = app.load_data(None, catalog=catalog)
        demo = app.build_demo(table, open_store(tmp_path_factory.mktemp("db") / "relabel.db"), catalog=catalog)
        with serving(demo) as url:
            yield Client(url, verbose=False), table


def _filters(split="all", emotions=(), q_min=0.0, q_max=1.0, agreement="any", duplicates="any",
             sort="quality, lowest first", page_size=48, *model: str) -> list:
    """The /browse endpoint's values; the model's name last (left out: the default model)."""
    components = [0.0, 1.0] * len(COMPONENT_COLUMNS)
    return [split, list(emotions), q_min, q_max, *components, "any", agreement, duplicates, sort, 0, page_size, *model]


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


class TestModelOpinion:
    """Which model's opinion the tab shows: the table's own (the default model's), or another one chosen by name."""

    def test_another_model_fills_the_opinion_columns_with_its_own_answers(self, launched, catalog) -> None:
        _, table = launched
        browser = Browser(table, catalog=catalog)
        assert browser.model == "fer_model" and browser.models() == ["fer_model", COPY_NAME, TUNED_NAME]
        assert browser.for_model(None) is browser and browser.for_model("fer_model") is browser
        tuned = browser.for_model(TUNED_NAME)
        assert tuned.model == TUNED_NAME and browser.for_model(TUNED_NAME) is tuned  # computed once
        probs = catalog.predictor(TUNED_NAME).predict_faces(table.images)
        shown = tuned.frame[list(PROBABILITY_COLUMNS)].to_numpy()
        np.testing.assert_allclose(shown, probs[:, [catalog.predictor(TUNED_NAME).labels.index(e) for e in EMOTIONS]],
                                   atol=1e-6)
        assert np.abs(shown - table.frame[list(PROBABILITY_COLUMNS)].to_numpy()).max() > 0.05
        np.testing.assert_array_equal(tuned.frame["model_agrees"], shown.argmax(1) == table.labels)
        # Filters, order, captions and details follow the chosen model; the rest of the table stays.
        disagree = tuned.select(BrowseQuery(agreement="disagrees"))
        assert set(disagree) == set(np.flatnonzero(shown.argmax(1) != table.labels))
        order = tuned.select(BrowseQuery(sort="model confidence, lowest first"))
        assert tuned.frame["model_confidence"].to_numpy()[order[0]] == pytest.approx(shown.max(1).min())
        row = int(np.flatnonzero(np.abs(shown - table.frame[list(PROBABILITY_COLUMNS)].to_numpy()).max(1) > 0.05)[0])
        assert tuned.caption(row) != browser.caption(row)
        assert tuned.details(row)[2] != browser.details(row)[2]
        pd.testing.assert_frame_equal(tuned.frame.drop(columns=list(OPINION_COLUMNS)),
                                      table.frame.drop(columns=list(OPINION_COLUMNS)))

    def test_a_model_computed_once_is_read_from_the_disk_cache_next_time(self, launched, catalog, monkeypatch) -> None:
        _, table = launched
        first = Browser(table, catalog=catalog).for_model(COPY_NAME)

        def fail(*args, **kwargs):
            raise AssertionError("computed again instead of read from the cache")

        import fer_core.browse

        monkeypatch.setattr(fer_core.browse, "_model_columns", fail)
        again = Browser(table, catalog=catalog).for_model(COPY_NAME)
        pd.testing.assert_frame_equal(again.frame, first.frame)
        # The copy is the bundled model under another name: the same opinion as the table's own.
        np.testing.assert_allclose(first.frame[list(PROBABILITY_COLUMNS)], table.frame[list(PROBABILITY_COLUMNS)],
                                   atol=1e-6)

    def test_an_unknown_model_lists_the_names(self, launched, catalog) -> None:
        _, table = launched
        with pytest.raises(UnknownModel, match="choose one of fer_copy, fer_model"):
            Browser(table, catalog=catalog).for_model("nonsense")
        with pytest.raises(ValueError, match="no model named 'nonsense'; choose one of fer_model$"):
            Browser(table, model="fer_model").for_model("nonsense")

    def test_the_launched_tab_shows_the_chosen_models_opinion(self, launched, catalog) -> None:
        from gradio_client.exceptions import AppError

        client, table = launched
        default = client.predict(*_filters(page_size=24), api_name="/browse")
        assert default[1].endswith("the model's opinion: fer_model")
        tuned = client.predict(*_filters(page_size=24, agreement="disagrees"), TUNED_NAME, api_name="/browse")
        view = Browser(table, catalog=catalog).for_model(TUNED_NAME)
        rows = view.select(BrowseQuery(agreement="disagrees"))
        assert tuned[1].endswith(f"the model's opinion: {TUNED_NAME}")
        assert _matches(tuned[1]) == len(rows)
        assert _captions(tuned[0]) == [view.caption(int(r)) for r in rows[:24]]
        second = client.predict(1, 24, api_name="/next_page")  # the next page of the same model's selection
        assert _captions(second[0]) == [view.caption(int(r)) for r in rows[24:48]]
        with pytest.raises(AppError, match="no model named 'nonsense'; choose one of"):
            client.predict(*_filters(), "nonsense", api_name="/browse")


class TestOpinionWhenChosen:
    """A data set opened without the model's opinion (as the app opens a large one): the tab works, and the
    opinion appears when a model is chosen."""

    def test_load_data_leaves_the_opinion_out_when_asked_or_when_large(self, launched, catalog, monkeypatch) -> None:
        import app

        _, table = launched
        bare = app.load_data(None, catalog=catalog, model_opinion="when-chosen")
        assert not has_opinion(bare.frame) and has_opinion(table.frame)
        pd.testing.assert_frame_equal(bare.frame, table.frame.drop(columns=list(OPINION_COLUMNS)))
        monkeypatch.setattr(app, "OPINION_AT_START_MAX", len(table) - 1)
        assert not has_opinion(app.load_data(None, catalog=catalog).frame)
        assert has_opinion(app.load_data(None, catalog=catalog, model_opinion="at-start").frame)
        monkeypatch.setattr(app, "OPINION_AT_START_MAX", len(table))
        assert has_opinion(app.load_data(None, catalog=catalog).frame)
        with pytest.raises(ValueError, match="--model-opinion must be one of auto, at-start, when-chosen"):
            app.load_data(None, model_opinion="later")

    @pytest.mark.slow
    def test_the_tab_browses_without_it_and_computes_it_when_a_model_is_chosen(self, launched, catalog,
                                                                                 tmp_path: Path) -> None:
        from gradio_client import Client
        from gradio_client.exceptions import AppError

        import app
        from annotate import open_store

        _, table = launched
        bare = app.load_data(None, catalog=catalog, model_opinion="when-chosen")
        browser = Browser(bare, catalog=catalog)
        assert browser.model is None and browser.models() == ["fer_model", COPY_NAME, TUNED_NAME]
        chosen = browser.for_model("fer_model")
        assert chosen.model == "fer_model"
        pd.testing.assert_frame_equal(chosen.frame[list(OPINION_COLUMNS)], table.frame[list(OPINION_COLUMNS)],
                                      atol=1e-6)
        store = open_store(tmp_path / "relabel.db")
        demo = app.build_demo(bare, store, catalog=catalog)
        with serving(demo) as url:
            client = Client(url, verbose=False)
            plain = client.predict(*_filters(page_size=24), api_name="/browse")
            assert _matches(plain[1]) == len(bare) and plain[1].endswith("no model's opinion yet: choose a model")
            assert _captions(plain[0]) == [browser.caption(int(r)) for r in browser.select(BrowseQuery())[:24]]
            assert all("=" not in c and "≠" not in c for c in _captions(plain[0]))
            for needs_a_model in (_filters(agreement="disagrees"), _filters(sort="model confidence, lowest first")):
                with pytest.raises(AppError, match="need a model's opinion of every face: choose a model"):
                    client.predict(*needs_a_model, api_name="/browse")
            opinion = client.predict(*_filters(page_size=24, agreement="disagrees"), "fer_model", api_name="/browse")
            rows = chosen.select(BrowseQuery(agreement="disagrees"))
            assert opinion[1].endswith("the model's opinion: fer_model") and _matches(opinion[1]) == len(rows)
            assert _captions(opinion[0]) == [chosen.caption(int(r)) for r in rows[:24]]


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


@pytest.mark.slow
@pytest.mark.browser
def test_choosing_a_model_shows_its_opinion(browse_page, launched, catalog) -> None:
    expect, panel, _ = browse_page
    client, table = launched
    count = panel.get_by_text(re.compile(r"faces match"))
    expect(count).to_contain_text("the model's opinion: fer_model")
    box = panel.get_by_label("Model's opinion")
    box.click()
    panel.page.get_by_role("option", name=TUNED_NAME, exact=True).click()
    expect(count).to_contain_text(f"the model's opinion: {TUNED_NAME}")
    view = Browser(table, catalog=catalog).for_model(TUNED_NAME)
    first = view.caption(int(view.select(BrowseQuery())[0]))
    expect(panel.locator("#browse-gallery .caption-label").first).to_have_text(first)
