"""``python -m benchmarks.rank_eval``: planted label errors on real val faces, ranked by the queue's strategies."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from benchmarks.rank_eval import flip_labels, format_report, main, ranking_metrics, summarise
from conftest import SHARED_FER, needs_shared

CELL = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))?$")


def parse_report(text: str) -> dict[str, dict[str, tuple[float, float | None]]]:
    """The printed table as {strategy: {metric: (mean, sd or None)}}; fails on any cell that does not parse."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("strategy "))
    header = re.split(r"\s{2,}", lines[start].strip())
    table = {}
    for line in lines[start + 1:]:
        if line.startswith("mean ± sd"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), line
        parsed = {}
        for metric, cell in zip(header[1:], cells[1:]):
            match = CELL.match(cell)
            assert match, f"cell {cell!r} of {cells[0]} does not parse"
            parsed[metric] = (float(match[1]), None if match[2] is None else float(match[2]))
        table[cells[0]] = parsed
    return table


class TestPieces:
    def test_flip_labels_moves_the_chosen_fraction_to_other_classes(self) -> None:
        labels = np.repeat(np.arange(7), 300)
        noisy, flipped = flip_labels(labels, 0.1, np.random.default_rng(0))
        assert flipped.sum() == 210
        assert (noisy[flipped] != labels[flipped]).all() and (noisy[~flipped] == labels[~flipped]).all()
        offsets = (noisy[flipped] - labels[flipped]) % 7
        assert set(offsets) == set(range(1, 7))  # every other class is reachable
        again, _ = flip_labels(labels, 0.1, np.random.default_rng(0))
        np.testing.assert_array_equal(again, noisy)

    def test_ranking_metrics(self) -> None:
        flipped = np.zeros(10, dtype=bool)
        flipped[[2, 5]] = True
        perfect = ranking_metrics(np.array([5, 2, 0, 1]), flipped, [2, 4])
        assert perfect["P@2"] == 1.0 and perfect["R@2"] == 1.0 and perfect["P@4"] == 0.5 and perfect["AP"] == 1.0
        assert perfect["ranked"] == 4 and perfect["R@all"] == 1.0
        # A partial order that misses one flipped face: scored out of k, the missed face tied at the bottom.
        partial = ranking_metrics(np.array([2, 0]), flipped, [2])
        assert partial["P@2"] == 0.5 and partial["R@2"] == 0.5 and partial["R@all"] == 0.5
        assert 0.5 < partial["AP"] < 1.0

    def test_report_cells_are_mean_and_sd(self) -> None:
        per_seed = {"likely_label_error": [0.5, 1.0], "random": [0.1, 0.2]}
        results = pd.DataFrame([
            {"seed": seed, "strategy": name, "ranked": 10.0 + seed, "P@2": v, "R@2": v, "R@all": 1.0, "AP": v}
            for seed in range(2) for name, values in per_seed.items() for v in [values[seed]]
        ])
        summary = summarise(results)
        table = parse_report(format_report(summary, n_faces=20, n_flip=2, fraction=0.1, top=[]))
        assert table["likely_label_error"]["P@2"] == (0.75, pytest.approx(0.354, abs=1e-3))
        assert table["random"]["AP"][0] == pytest.approx(0.15)
        assert table["random (expected)"]["P@2"] == (0.1, None)


@needs_shared
class TestOnRealFaces:
    def test_label_error_ranking_beats_random(self, capsys: pytest.CaptureFixture) -> None:
        code = main([str(SHARED_FER / "val"), "--limit", "200", "--fraction", "0.1", "--repeats", "2",
                     "--top", "10,50"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "200 faces" in printed and "20 labels (10.0%) flipped" in printed
        table = parse_report(printed)
        assert list(table) == ["likely_label_error", "model_disagrees", "low_quality", "random", "random (expected)"]
        assert set(table["likely_label_error"]) == {
            "ranked", "P@10", "R@10", "P@20", "R@20", "P@50", "R@50", "R@all", "AP"}
        expected = table["random (expected)"]["AP"][0]
        assert expected == pytest.approx(0.1)
        errors = table["likely_label_error"]
        # Measured 0.60 AP and 0.60 P@20 against 0.10 for random: a margin of 3x leaves room for seeds.
        assert errors["AP"][0] > 3 * expected and errors["P@20"][0] > 3 * expected
        assert errors["AP"][0] > table["random"]["AP"][0] + 0.25
        assert errors["AP"][0] > table["low_quality"]["AP"][0] + 0.25  # quality says nothing about flipped labels
        assert 0 < errors["ranked"][0] < 200  # cleanlab flags a subset

    def test_bad_arguments_are_refused(self, capsys: pytest.CaptureFixture) -> None:
        assert main([str(SHARED_FER / "val"), "--fraction", "0"]) == 2
        assert "--fraction must be between 0 and 1" in capsys.readouterr().err
        assert main([str(SHARED_FER / "val"), "--top", "ten"]) == 2
        assert "--top takes" in capsys.readouterr().err
