"""``python -m benchmarks.detectors``, briefly: the figures are printed, and a folder without faces is a user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.detectors import get_args_parser, main
from fixtures_scenes import FER_VAL, needs_fer


@needs_fer
class TestDetectorsBench:
    def test_bench_runs_and_prints_figures(self, capsys: pytest.CaptureFixture[str]) -> None:
        args = get_args_parser().parse_args(
            ["--faces", str(FER_VAL / "happy"), "--scenes", "3", "--no-face", "3", "--backends", "yunet"]
        )
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "IoU >= 0.3" in out
        row = next(line for line in out.splitlines() if line.startswith("yunet"))
        recall, precision = map(float, row.split()[2:4])
        assert 0.0 <= recall <= 1.0 and 0.0 <= precision <= 1.0

    def test_bench_without_faces_folder(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        args = get_args_parser().parse_args(["--faces", str(tmp_path), "--scenes", "1"])
        assert main(args) == 2
        assert "no face images" in capsys.readouterr().err


class TestScenes:
    def test_compose_scene_rejects_a_face_size_larger_than_the_scene(self) -> None:
        from benchmarks.scenes import compose_scene

        with pytest.raises(ValueError, match="face_size"):
            compose_scene([], seed=0, size=(100, 80), face_size=(50, 90))

    def test_no_face_images_are_deterministic(self) -> None:
        from benchmarks.scenes import no_face_images

        a, b = no_face_images(1, 5, (64, 48)), no_face_images(1, 5, (64, 48))
        assert len(a) == 5 and all(x.shape == (48, 64, 3) for x in a)
        assert all((x == y).all() for x, y in zip(a, b))
