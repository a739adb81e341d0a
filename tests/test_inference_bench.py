"""``python -m benchmarks.inference``, briefly: what ships is measured (the ONNX Predictor), every figure is
printed, ``--tta`` reaches the predictor, and the PyTorch model is timed only on request, labelled as such."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import inference
from benchmarks.inference import get_args_parser, main, run_bench
from fer_core.hardware import cpu_description
from fer_core.predict import Predictor, top_two_gap
from fer_core.weights import DEFAULT_WEIGHTS, read_card

#: The runtime of the ONNX file bundled beside the default weights (so no export, no PyTorch).
BUNDLED_RUNTIME = read_card()["inference"]["runtime"]
QUICK = ["--threads", "1", "--seconds", "0.05"]


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small class-folder data set of 20 real faces."""
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces

    folder = tmp_path_factory.mktemp("faces")
    sample = load_faces(SAMPLE_PATH, progress=False)
    for label, name in enumerate(["angry", "happy"]):
        (folder / name).mkdir()
        for i, face in enumerate(sample.images[sample.labels == label][:10]):
            cv2.imwrite(str(folder / name / f"{i}.png"), face)
    return folder


class TestRunBench:
    @pytest.mark.parametrize("tta", [False, True])
    def test_measures_the_configuration_asked_for(self, tta: bool) -> None:
        result = run_bench(weights=None, runtime=BUNDLED_RUNTIME, threads=1, seconds=0.05, tta=tta,
                           batch_sizes=(1, 8))
        assert result["flip_tta"] is tta
        assert result["runtime"] == BUNDLED_RUNTIME
        assert set(result["throughput"]) == {1, 8} and all(rate > 0 for rate in result["throughput"].values())
        assert result["best_faces_per_s"] == max(result["throughput"].values())
        assert result["face_ms_median"] > 0 and result["face_ms_p95"] >= result["face_ms_median"]
        # The composed 640x480 photo holds exactly one face, and the detector must find it.
        assert result["photo_faces_found"] == 1
        # The files that ship: the ONNX file the card names, and the weights (card and classifier).
        onnx_file = Predictor(runtime=BUNDLED_RUNTIME).onnx_file
        assert onnx_file is not None and result["onnx_file"] == onnx_file.name
        assert result["onnx_mb"] == pytest.approx(onnx_file.stat().st_size / 1e6)
        assert result["weights_file"] == DEFAULT_WEIGHTS.name
        assert result["weights_mb"] == pytest.approx(DEFAULT_WEIGHTS.stat().st_size / 1e6)
        assert "torch" not in result  # PyTorch only on request

    def test_the_gated_mirror_is_measured_on_the_faces_given(self, real_faces: Path) -> None:
        from fer_core.datasets import load_faces

        faces = load_faces(real_faces, progress=False).images
        gate = Predictor().mirror_gap
        expected = float(np.mean(top_two_gap(Predictor(tta=False).logits(faces)) < gate))
        result = run_bench(weights=None, runtime="auto", threads=1, seconds=0.05, faces_from=str(real_faces),
                           batch_sizes=(1, 8))
        assert result["flip_tta"] is True and result["mirror_gap"] == gate < float("inf")
        assert result["faces_count"] == 20 and result["second_pass_share"] == pytest.approx(expected)

    def test_every_face_mirrored_is_a_share_of_one(self) -> None:
        result = run_bench(weights=None, runtime="auto", threads=1, seconds=0.05, tta=True,
                           mirror_gap=float("inf"), batch_sizes=(1,))
        assert result["second_pass_share"] == 1.0

    def test_the_pytorch_model_is_timed_on_request(self) -> None:
        pytest.importorskip("torch", reason="PyTorch is not installed (requirements-train.txt)")
        result = run_bench(weights=None, runtime="auto", threads=1, seconds=0.05, batch_sizes=(1, 8),
                           with_torch=True)
        timed = result["torch"]
        assert set(timed["throughput"]) == {1, 8} and timed["best_faces_per_s"] == max(timed["throughput"].values())
        assert timed["face_ms_median"] > 0 and timed["face_ms_p95"] >= timed["face_ms_median"]

    def test_without_pytorch_its_timing_is_skipped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(inference, "_installed_torch", lambda: None)  # as where PyTorch is not installed
        result = run_bench(weights=None, runtime="auto", threads=1, seconds=0.05, batch_sizes=(1,), with_torch=True)
        assert result["torch"] is None and result["face_ms_median"] > 0


class TestCommandLine:
    @pytest.mark.slow
    def test_prints_every_figure(self, capsys: pytest.CaptureFixture[str]) -> None:
        args = get_args_parser().parse_args(["--runtime", BUNDLED_RUNTIME, *QUICK, "--tta", "off"])
        assert main(args) == 0
        out = capsys.readouterr().out
        assert f"runtime {BUNDLED_RUNTIME} (ONNX Runtime), flip TTA off, 1 thread\nsecond pass: none\n" in out
        assert f"cpu: {cpu_description()}\n" in out  # figures only mean something next to the machine
        onnx_file = Predictor(runtime=BUNDLED_RUNTIME).onnx_file
        for line in ("per face, batch 1:", "throughput, batch  1024:", "best batch", "640x480 photo, one face:",
                     "(faces found: 1)", f"model files: ONNX {onnx_file.name} ",
                     f"; weights {DEFAULT_WEIGHTS.name} "):
            assert line in out
        assert "PyTorch" not in out

    @pytest.mark.slow
    def test_the_gate_and_its_share_are_printed(self, real_faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from fer_core.datasets import load_faces

        faces = load_faces(real_faces, progress=False).images
        gate = Predictor().mirror_gap
        share = float(np.mean(top_two_gap(Predictor(tta=False).logits(faces)) < gate))
        assert main(get_args_parser().parse_args(["--faces", str(real_faces), *QUICK])) == 0
        out = capsys.readouterr().out
        assert (f"second pass: its mirror, where the top two logits lie within {gate:g}: "
                f"{100 * share:.1f}% of these faces\n") in out
        assert f"faces: {real_faces} (20)" in out
        assert main(get_args_parser().parse_args(["--tta", "all", *QUICK])) == 0
        assert "second pass: its mirror, for every face\n" in capsys.readouterr().out

    @pytest.mark.slow
    def test_the_pytorch_line_says_it_is_not_served(self, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.setattr(inference, "_installed_torch", lambda: None)
        assert main(get_args_parser().parse_args(["--torch", "--tta", "off", *QUICK])) == 0
        assert "PyTorch (not served, for comparison): not installed, not measured\n" in capsys.readouterr().out

    def test_faces_that_cannot_be_read_get_a_message(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(get_args_parser().parse_args(["--faces", str(tmp_path / "missing"), "--seconds", "0.05"])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err

    def test_pickled_weights_are_refused_with_a_message(self, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        pickled = tmp_path / "model.pt"
        pickled.write_bytes(b"\x80\x04not really a pickle")
        assert main(get_args_parser().parse_args(["--weights", str(pickled), "--seconds", "0.05"])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err

    @pytest.mark.parametrize(("flag", "value"), [("--tta", "maybe"), ("--runtime", "torch")])
    def test_unknown_choice_is_an_argument_error(self, flag: str, value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            get_args_parser().parse_args([flag, value])
        assert "invalid choice" in capsys.readouterr().err


class TestUntrainedDesign:
    @pytest.mark.slow  # a few seconds of training: the full suite runs it
    def test_is_measured_with_its_own_widths(self, capsys: pytest.CaptureFixture[str]) -> None:
        pytest.importorskip("torch", reason="PyTorch is not installed (requirements-train.txt)")
        args = get_args_parser().parse_args(["--architecture", "fer_tiny", "--widths", "8,24", *QUICK,
                                             "--tta", "off"])
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "untrained fer_tiny with widths 8,24 (random weights: speed only)" in out
        # Its own weights, exported to ONNX when loaded, far smaller than the bundled model's.
        assert "model files: ONNX none bundled, exported from the weights when loaded; weights fer_tiny.safetensors " in out
        size_mb = float(out.split("weights fer_tiny.safetensors ")[1].split(" MB")[0])
        assert 0 < size_mb < 0.1

    def test_its_weights_carry_the_widths_asked_for(self, tmp_path: Path) -> None:
        pytest.importorskip("torch", reason="PyTorch is not installed (requirements-train.txt)")
        from benchmarks.inference import untrained_weights
        from fer_core.weights import load_model

        model, card = load_model(untrained_weights("fer_vgg", (16, 32, 48, 64), tmp_path))
        assert card["model_kwargs"] == {"widths": [16, 32, 48, 64]} and card["untrained"] is True
        assert model.num_features == 64 and model.fc.in_features == 64

    def test_needs_pytorch(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
        assert main(get_args_parser().parse_args(["--architecture", "fer_tiny", "--seconds", "0.05"])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "needs PyTorch" in err

    @pytest.mark.parametrize(("extra", "message", "builds_the_model"), [
        (["--architecture", "fer_nonexistent"], "unknown model 'fer_nonexistent'", True),
        (["--architecture", "fer_vgg", "--widths", "32,64"], "same length", True),
        (["--architecture", "fer_vgg", "--widths", "32,x,128,256"], "whole numbers", False),
        (["--architecture", "fer_vgg", "--widths", "0,64,128,256"], "between 1 and 4096", False),
        (["--widths", "32,64,128,256"], "--widths goes with --architecture", False),
        (["--architecture", "fer_vgg", "--weights", "x.safetensors"], "not both", False),
    ])
    def test_bad_options_get_a_message(self, extra: list[str], message: str, builds_the_model: bool,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        if builds_the_model:
            pytest.importorskip("torch", reason="PyTorch is not installed (requirements-train.txt)")
        assert main(get_args_parser().parse_args([*extra, "--seconds", "0.05"])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
