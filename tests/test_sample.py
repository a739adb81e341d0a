"""The bundled sample of real faces that the app and tests use when no data set is given."""

from __future__ import annotations

import numpy as np

from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces
from fer_core.labels import EMOTIONS
from fer_core.quality import COMPONENT_COLUMNS, score_faces


class TestBundledSample:
    def test_small_real_and_every_class_present(self) -> None:
        assert SAMPLE_PATH.stat().st_size < 2_000_000
        table = load_faces(SAMPLE_PATH)
        assert 200 <= len(table) <= 600
        counts = table.frame["emotion_name"].astype(str).value_counts()
        assert set(counts.index) == set(EMOTIONS) and counts.min() >= 20
        assert table.frame["sample_id"].str.startswith("train/").all()
        assert not table.frame["near_uniform"].any()

    def test_quality_fields_are_those_of_the_scorer(self) -> None:
        table = load_faces(SAMPLE_PATH)
        fresh = score_faces(table.images, labels=table.labels)
        for column in (*COMPONENT_COLUMNS, "quality_score", "pixel_mean", "pixel_std", "sample_weight"):
            np.testing.assert_allclose(table.frame[column].to_numpy(dtype=float),
                                       fresh[column].to_numpy(dtype=float), atol=1e-6)
