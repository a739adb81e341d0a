"""Temperature scaling and ECE."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.calibration import expected_calibration_error, fit_temperature, softmax


class TestTemperature:
    @pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
    def test_recovers_the_temperature_that_generated_the_labels(self, true_temperature: float) -> None:
        rng = np.random.default_rng(0)
        logits = rng.normal(0, 3, size=(20000, 7))
        probs = softmax(logits, true_temperature).astype(np.float64)
        labels = np.array([rng.choice(7, p=p / p.sum()) for p in probs])
        assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)

    def test_scaling_lowers_the_ece_of_overconfident_logits(self) -> None:
        rng = np.random.default_rng(1)
        logits = rng.normal(0, 2, size=(5000, 7))
        labels = np.array([rng.choice(7, p=p / p.sum()) for p in softmax(logits).astype(np.float64)])
        overconfident = logits * 3
        t = fit_temperature(overconfident, labels)
        assert t > 2
        assert expected_calibration_error(softmax(overconfident, t), labels) < expected_calibration_error(softmax(overconfident), labels) / 3

    def test_bad_shapes(self) -> None:
        with pytest.raises(ValueError, match="logits must be"):
            fit_temperature(np.zeros((3, 7)), np.zeros(4, dtype=int))


class TestECE:
    def test_known_value(self) -> None:
        # Two faces at confidence 0.9, one right one wrong: |0.5 - 0.9| = 0.4 over all faces.
        probs = np.array([[0.9, 0.1], [0.9, 0.1]])
        assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.4)

    def test_softmax_rows_sum_to_one(self) -> None:
        p = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
        assert np.isfinite(p).all()
