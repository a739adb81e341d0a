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
    import app
    from gradio_client import Client

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
