"""A short run of the app-level bench (``python -m benchmarks.app_bench``) against a launched ``python app.py``."""

from __future__ import annotations

import re

import pytest

from benchmarks.app_bench import main
from fer_core.hardware import cpu_description

pytestmark = pytest.mark.slow


def test_bench_prints_both_client_settings_and_the_frame_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "3", "--frames", "4", "--window", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"start-up, python app.py to the first answered predict: [\d.]+ s", out)
    medians = [float(m) for m in re.findall(r"median ([\d.]+) ms", out)]
    assert len(medians) == 2 and all(m > 0 for m in medians)  # the README's client and the defaults
    assert "one SSL context reused" in out and "gradio_client's defaults" in out
    assert re.search(r"webcam path, 640x480 frames through the app: [\d.]+ frames/s", out)
    assert f"(cpu: {cpu_description()}; model fer_vgg@" in out  # the machine the figures came from
