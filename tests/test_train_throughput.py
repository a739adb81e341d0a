"""``python -m benchmarks.train_throughput``: training faces per second, at tiny size on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.train_throughput import get_args_parser, main, throughput


class TestThroughput:
    def test_the_first_epoch_is_left_out_and_val_is_not_timed(self) -> None:
        log = [{"steps": 3, "train_faces": 350, "seconds": 9.0, "val_seconds": 1.0},
               {"steps": 3, "train_faces": 350, "seconds": 2.5, "val_seconds": 0.5},
               {"steps": 3, "train_faces": 350, "seconds": 3.5, "val_seconds": 0.5}]
        result = throughput(log, 128)
        assert result["faces"] == 700  # the last batch holds 350 - 2 x 128 faces
        assert result["faces_per_second"] == pytest.approx(700 / 5.0)
        assert result["seconds_per_step"] == pytest.approx(5.0 / 6)
        assert throughput(log[:1], 64)["faces_per_second"] == pytest.approx(192 / 8.0)

    @pytest.mark.slow
    def test_a_tiny_run_prints_faces_per_second(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        args = get_args_parser().parse_args(["--model", "fer_tiny", "--batch-size", "32", "--steps", "2",
                                             "--epochs", "2", "--threads", "1", "--out", str(tmp_path / "runs"),
                                             "--json", str(tmp_path / "result.json")])
        assert main(args) == 0
        printed = capsys.readouterr().out
        assert "1 process(es):" in printed and "faces/s" in printed
        (result,) = json.loads((tmp_path / "result.json").read_text())
        assert result["processes"] == 1 and result["faces"] == 64 and result["faces_per_second"] > 0
        assert (tmp_path / "runs" / "p1" / "model.safetensors").is_file()
