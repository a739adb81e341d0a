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
        before = expected_calibration_error(softmax(overconfident), labels)
        assert expected_calibration_error(softmax(overconfident, t), labels) < before / 3

    def test_the_temperature_minimises_the_nll(self) -> None:
        # Real-looking logits of a seven-class model, overconfident, with labels that disagree often.
        rng = np.random.default_rng(2)
        logits = rng.normal(0, 4, size=(3000, 7))
        labels = np.where(rng.random(3000) < 0.6, logits.argmax(1), rng.integers(0, 7, 3000))

        def nll(t: float) -> float:
            z = logits / t
            z = z - z.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), labels]))

        t = fit_temperature(logits, labels)
        assert nll(t) <= min(nll(t * 1.001), nll(t / 1.001))
        grid = np.exp(np.linspace(np.log(t) - 1, np.log(t) + 1, 201))
        assert nll(t) <= min(nll(g) for g in grid) + 1e-12

    def test_logits_without_information_keep_the_temperature_finite(self) -> None:
        assert fit_temperature(np.zeros((3, 7)), np.zeros(3, dtype=int)) == pytest.approx(1.0)

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
