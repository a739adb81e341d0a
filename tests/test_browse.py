"""Browsing: filters and orders on a known table (exact counts and order), paging, plots' data,
and the cached enrichment of a real data set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fer_core._validation import FERError
from fer_core.browse import (
    PROBABILITY_COLUMNS,
    BrowseQuery,
    class_counts,
    enrich,
    filter_faces,
    histogram,
    page_of,
)
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import FaceTable, load_faces
from fer_core.labels import EMOTIONS


def known_frame() -> pd.DataFrame:
    """Eight faces with hand-set fields: ids f0..f7."""
    return pd.DataFrame({
        "sample_id": [f"f{i}" for i in range(8)],
        "emotion": [0, 3, 3, 6, 1, 3, 4, 5],
        "split": ["train", "train", "val", "train", "val", "train", "train", "val"],
        "quality_score": [0.10, 0.90, 0.50, 0.30, np.nan, 0.70, 0.20, 0.60],
        "edge_score": [0.1, 0.8, 0.5, 0.2, 0.4, 0.9, 0.3, 0.6],
        "contrast_score": [0.5] * 8,
        "focus_score": [0.2, 0.9, 0.4, 0.1, 0.5, 0.8, 0.3, 0.7],
        "brightness_score": [0.5] * 8,
        "model_label": [0, 3, 6, 6, 1, 3, 2, 5],
        "model_confidence": [0.55, 0.99, 0.40, 0.80, 0.30, 0.95, 0.50, 0.85],
        "model_agrees": [True, True, False, True, True, True, False, True],
        "dup_group": [-1, 7, 7, -1, 9, 9, -1, -1],
        "dup_group_size": [1, 2, 2, 1, 2, 2, 1, 1],
        "dup_kind": ["", "exact", "exact", "", "near", "near", "", ""],
        "dup_cross_split": [False, True, True, False, True, True, False, False],
    })


def ids(frame: pd.DataFrame, rows: np.ndarray) -> list[str]:
    return list(frame["sample_id"].to_numpy()[rows])


class TestFilters:
    def test_default_keeps_every_face_lowest_quality_first_missing_last(self) -> None:
        frame = known_frame()
        assert ids(frame, filter_faces(frame, BrowseQuery())) == ["f0", "f6", "f3", "f2", "f7", "f5", "f1", "f4"]

    def test_split_and_emotions(self) -> None:
        frame = known_frame()
        rows = filter_faces(frame, BrowseQuery(split="train", emotions=("happy", "neutral")))
        assert ids(frame, rows) == ["f3", "f5", "f1"]
        # Synonyms are accepted as in the rest of the tool.
        assert ids(frame, filter_faces(frame, BrowseQuery(emotions=("happiness",)))) == ["f2", "f5", "f1"]

    def test_quality_and_component_ranges_are_inclusive(self) -> None:
        frame = known_frame()
        rows = filter_faces(frame, BrowseQuery(quality=(0.3, 0.7)))
        assert ids(frame, rows) == ["f3", "f2", "f7", "f5"]  # f4 has no score: out of any narrowed range
        rows = filter_faces(frame, BrowseQuery(components={"focus_score": (0.0, 0.3)}))
        assert ids(frame, rows) == ["f0", "f6", "f3"]

    def test_model_agreement_and_label_status(self) -> None:
        frame = known_frame()
        assert ids(frame, filter_faces(frame, BrowseQuery(agreement="disagrees"))) == ["f6", "f2"]
        corrected = {"f1", "f6"}
        rows = filter_faces(frame, BrowseQuery(label_status="corrected"), corrected=corrected)
        assert ids(frame, rows) == ["f6", "f1"]
        assert len(filter_faces(frame, BrowseQuery(label_status="original"), corrected=corrected)) == 6

    def test_duplicates_shown_side_by_side(self) -> None:
        frame = known_frame()
        assert ids(frame, filter_faces(frame, BrowseQuery(duplicates="unique"))) == ["f0", "f6", "f3", "f7"]
        # Groups follow their lowest-quality member; members stay together.
        assert ids(frame, filter_faces(frame, BrowseQuery(duplicates="duplicated"))) == ["f2", "f1", "f5", "f4"]
        rows = filter_faces(frame, BrowseQuery(duplicates="cross-split", split="train"))
        assert ids(frame, rows) == ["f5", "f1"]

    def test_orders(self) -> None:
        frame = known_frame()
        high = filter_faces(frame, BrowseQuery(sort="quality, highest first"))
        assert ids(frame, high) == ["f1", "f5", "f7", "f2", "f3", "f6", "f0", "f4"]
        confident = filter_faces(frame, BrowseQuery(sort="model confidence, lowest first"))
        assert ids(frame, confident) == ["f4", "f2", "f6", "f0", "f3", "f7", "f5", "f1"]
        one = filter_faces(frame, BrowseQuery(sort="random", seed=3))
        assert sorted(ids(frame, one)) == sorted(frame["sample_id"])
        assert np.array_equal(one, filter_faces(frame, BrowseQuery(sort="random", seed=3)))
        assert not np.array_equal(one, filter_faces(frame, BrowseQuery(sort="random", seed=4)))

    def test_remembered_whole_table_orders_give_the_same_rows_as_sorting_each_selection(self) -> None:
        # The bundled sample: real scores, with ties (rounded) and missing ones, filtered many ways.
        frame = enrich(load_faces(SAMPLE_PATH, progress=False)).frame.copy()
        frame["quality_score"] = frame["quality_score"].round(1).mask(frame.index % 9 == 0)
        orders: dict = {}
        for sort in ("quality, lowest first", "quality, highest first", "model confidence, lowest first",
                     "model confidence, highest first"):
            for query in (BrowseQuery(sort=sort), BrowseQuery(sort=sort, split="train", emotions=("happy", "sad")),
                          BrowseQuery(sort=sort, quality=(0.3, 0.8)), BrowseQuery(sort=sort, duplicates="duplicated"),
                          BrowseQuery(sort=sort, emotions=("disgust",), agreement="disagrees")):
                np.testing.assert_array_equal(filter_faces(frame, query, orders=orders), filter_faces(frame, query))
        assert len(orders) == 4 and all(len(order) == len(frame) for order in orders.values())

    @pytest.mark.parametrize("kwargs, message", [
        (dict(quality=(0.8, 0.2)), "0 <= min <= max <= 1"),
        (dict(components={"sharpness": (0, 1)}), "unknown quality components"),
        (dict(emotions=("contempt",)), "unknown emotions"),
        (dict(sort="by name"), "unknown order"),
        (dict(agreement="maybe"), "model agreement"),
    ])
    def test_bad_queries_are_clear_errors(self, kwargs, message) -> None:
        with pytest.raises(FERError, match=message):
            BrowseQuery(**kwargs)


class TestPagesAndPlots:
    def test_pages_are_clamped(self) -> None:
        rows = np.arange(10)
        page, number, pages = page_of(rows, 2, 4)
        assert list(page) == [4, 5, 6, 7] and (number, pages) == (2, 3)
        page, number, _ = page_of(rows, 99, 4)
        assert list(page) == [8, 9] and number == 3
        page, number, pages = page_of(np.arange(0), 1, 4)
        assert len(page) == 0 and (number, pages) == (1, 1)
        with pytest.raises(FERError, match="page size"):
            page_of(rows, 1, 0)

    def test_plot_data_counts_the_selection(self) -> None:
        frame = known_frame()
        rows = filter_faces(frame, BrowseQuery(split="train"))
        counts = class_counts(frame, rows)
        assert list(counts["faces"]) == [1, 0, 0, 2, 1, 0, 1]
        hist = histogram(frame, rows, "quality_score", bins=10)
        assert hist["faces"].sum() == 5 and hist.loc[hist["bin"] == 0.1, "faces"].item() == 1
        per = histogram(frame, rows, "quality_score", bins=10, by_emotion=True)
        assert per.groupby("emotion")["faces"].sum()["happy"] == 2

    @pytest.mark.parametrize("bins", [20, 10, 7])
    def test_histograms_count_as_numpy_does_edges_and_missing_values_included(self, bins: int) -> None:
        rng = np.random.default_rng(bins)
        values = rng.random(5000)
        values[::7], values[1::11], values[2::13] = np.nan, 1.0, 0.0
        values[3::17] = np.round(values[3::17] * bins) / bins  # on the edges
        values[4::19], values[5::23] = 1.5, -0.1  # outside [0, 1]
        frame = pd.DataFrame({"q": values, "emotion": rng.integers(0, 7, len(values))})
        rows = np.sort(rng.choice(len(values), 3000, replace=False))
        edges = np.linspace(0, 1, bins + 1)
        np.testing.assert_array_equal(histogram(frame, rows, "q", bins=bins)["faces"],
                                      np.histogram(values[rows], bins=edges)[0])
        per = histogram(frame, rows, "q", bins=bins, by_emotion=True)
        for i, emotion in enumerate(EMOTIONS):
            expected = np.histogram(values[rows][frame["emotion"].to_numpy()[rows] == i], bins=edges)[0]
            np.testing.assert_array_equal(per.loc[per["emotion"] == emotion, "faces"], expected)


class TestEnrich:
    def test_sample_gets_model_and_duplicate_columns_and_is_cached(self, monkeypatch) -> None:
        table = load_faces(SAMPLE_PATH)
        enriched = enrich(table)
        frame = enriched.frame
        for column in (*PROBABILITY_COLUMNS, "model_label", "model_confidence", "model_agrees", "dup_group_size"):
            assert column in frame
        assert np.allclose(frame[list(PROBABILITY_COLUMNS)].sum(axis=1), 1, atol=1e-4)
        # The bundled sample carries its quality fields: they are kept as they are.
        assert np.array_equal(frame["quality_score"], table.frame["quality_score"])
        agreement = frame["model_agrees"].mean()
        assert 0.5 < agreement <= 1.0  # the model was trained on these faces

        import fer_core.browse as browse

        def fail(*args, **kwargs):
            raise AssertionError("recomputed instead of read from the cache")

        monkeypatch.setattr(browse, "_model_columns", fail)
        again = enrich(table)
        pd.testing.assert_frame_equal(again.frame, frame)

    def test_quality_is_computed_when_missing(self) -> None:
        table = load_faces(SAMPLE_PATH)
        bare = FaceTable(images=table.images[:20], frame=table.frame[["sample_id", "emotion", "emotion_name", "split",
                                                                         "source"]].iloc[:20].reset_index(drop=True),
                         name="bare")
        enriched = enrich(bare, use_cache=False)
        assert np.allclose(enriched.frame["quality_score"], table.frame["quality_score"][:20], atol=1e-6)


class TestModelOpinion:
    """One model's opinion columns alone (the Browse tab's other models), cached on disk by the model's files."""

    def test_the_columns_enrich_adds_for_the_same_model(self) -> None:
        from fer_core.browse import OPINION_COLUMNS, model_opinion
        from fer_core.predict import Predictor

        table = load_faces(SAMPLE_PATH)
        calls = []
        opinion = model_opinion(table, Predictor(), on_chunk=lambda done, total: calls.append((done, total)))
        assert list(opinion.columns) == list(OPINION_COLUMNS) and len(opinion) == len(table)
        assert calls == [(0, len(table))]
        enriched = enrich(table).frame
        for column in OPINION_COLUMNS:
            np.testing.assert_allclose(opinion[column].to_numpy(dtype=float), enriched[column].to_numpy(dtype=float),
                                       atol=1e-6)

    def test_cached_by_the_weights_and_the_card(self, tmp_path, monkeypatch) -> None:
        import json

        import fer_core.browse as browse
        from fer_core.browse import model_opinion
        from fer_core.predict import Predictor
        from fer_core.weights import card_path
        from second_model import copy_bundled

        table = load_faces(SAMPLE_PATH).select(np.arange(40))
        weights = copy_bundled(tmp_path / "models")
        first = model_opinion(table, Predictor(weights))
        computed = []
        original = browse._model_columns
        monkeypatch.setattr(browse, "_model_columns", lambda *a, **k: computed.append(1) or original(*a, **k))
        pd.testing.assert_frame_equal(model_opinion(table, Predictor(weights)), first)
        assert computed == []  # read back
        card = json.loads(card_path(weights).read_text())
        card["calibration"]["temperature"] *= 3  # the same weights, another temperature: other probabilities
        card_path(weights).write_text(json.dumps(card))
        hotter = model_opinion(table, Predictor(weights))
        assert computed == [1]
        assert hotter["model_confidence"].max() < first["model_confidence"].max()
        np.testing.assert_array_equal(hotter["model_label"], first["model_label"])
