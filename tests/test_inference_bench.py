"""``python -m benchmarks.inference``, briefly: every figure is printed, and ``--tta`` reaches the predictor."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.inference import get_args_parser, main, run_bench
from fer_core.hardware import cpu_description
from fer_core.predict import Predictor
from fer_core.weights import DEFAULT_WEIGHTS, member_paths


@pytest.mark.parametrize("tta", [False, True])
def test_run_bench_measures_the_configuration_asked_for(tta: bool) -> None:
    result = run_bench(weights=None, runtime="onnx", threads=1, seconds=0.05, tta=tta, batch_sizes=(1, 8))
    assert result["flip_tta"] is tta
    assert result["runtime"] == "onnx"
    assert set(result["throughput"]) == {1, 8} and all(rate > 0 for rate in result["throughput"].values())
    assert result["best_faces_per_s"] == max(result["throughput"].values())
    assert result["face_ms_median"] > 0 and result["face_ms_p95"] >= result["face_ms_median"]
    # The composed 640x480 photo holds exactly one face, and the detector must find it.
    assert result["photo_faces_found"] == 1
    files = [DEFAULT_WEIGHTS, *member_paths(DEFAULT_WEIGHTS, Predictor().card)]
    assert result["weights_files"] == len(files)
    assert result["weights_mb"] == pytest.approx(sum(os.path.getsize(f) for f in files) / 1e6)


def test_command_line_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    args = get_args_parser().parse_args(["--runtime", "onnx", "--threads", "1", "--seconds", "0.05", "--tta", "off",
                                         "--ensemble", "off"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "runtime onnx, flip TTA off, 1 model, 1 threads\nsecond pass: none\n" in out
    assert f"cpu: {cpu_description()}\n" in out  # figures only mean something next to the machine
    for line in ("per face, batch 1:", "throughput, batch  1024:", "best batch", "640x480 photo, one face:",
                 "(faces found: 1)", "weights: "):
        assert line in out


def test_the_gated_mirror_is_measured_on_the_faces_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.predict import Predictor, top_two_gap

    sample = load_faces(SAMPLE_PATH, progress=False)
    for label, name in enumerate(["angry", "happy"]):  # a small class-folder data set of real faces
        (tmp_path / name).mkdir()
        for i, face in enumerate(sample.images[sample.labels == label][:10]):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), face)
    faces = load_faces(tmp_path, progress=False).images
    bundled = Predictor()
    gate, others = bundled.mirror_gap, len(bundled.members)
    expected_share = float(np.mean(top_two_gap(Predictor(tta=False, ensemble=False).logits(faces)) < gate))

    result = run_bench(weights=None, runtime="auto", threads=1, seconds=0.05, faces_from=str(tmp_path), batch_sizes=(1, 8))
    assert result["flip_tta"] is True and result["mirror_gap"] == gate < float("inf")
    assert result["faces_count"] == 20 and result["second_pass_share"] == pytest.approx(expected_share)
    assert result["ensemble_members"] == others

    args = get_args_parser().parse_args(["--faces", str(tmp_path), "--threads", "1", "--seconds", "0.05"])
    assert main(args) == 0
    out = capsys.readouterr().out
    views = bundled.tta_views
    assert views, "the bundled model's card switches test-time views on"
    named = ", ".join(views)
    mirror = ("its mirror", "their mirrors") if views == ("flip",) else (f"its views {named}", f"their views {named}")
    looks = mirror[0] + (f" and {others} more model{'s' if others > 1 else ''} and {mirror[1]}" if others else "")
    assert f"second pass: {looks}, where the top two logits lie within {gate:g}: {100 * expected_share:.1f}% of these faces" in out
    assert f"faces: {tmp_path} (20)" in out

    assert main(get_args_parser().parse_args(["--tta", "all", "--threads", "1", "--seconds", "0.05"])) == 0
    assert f"second pass: {looks}, for every face\n" in capsys.readouterr().out


def test_the_views_of_the_card_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fer_core.model import create_model
    from fer_core.weights import load_model, save_model

    card = load_model(DEFAULT_WEIGHTS)[1]
    weights = save_model(create_model("fer_tiny").eval(), tmp_path / "tiny.safetensors",
                         {**card, "architecture": "fer_tiny",
                          "inference": {"flip_tta": True, "tta_views": ["flip", "left", "right_flip"]}})
    args = ["--weights", str(weights), "--threads", "1", "--seconds", "0.05", "--runtime", "onnx"]
    assert main(get_args_parser().parse_args([*args, "--tta", "all"])) == 0
    out = capsys.readouterr().out
    assert "runtime onnx, TTA on (3 views), 1 model, 1 threads\n" in out
    assert "second pass: its views flip, left, right_flip, for every face\n" in out


def test_the_third_pass_is_named_and_its_share_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fer_core.config import SAMPLE_PATH
    from fer_core.datasets import load_faces
    from fer_core.model import create_model
    from fer_core.predict import top_two_gap
    from fer_core.weights import load_model, save_model

    card = load_model(DEFAULT_WEIGHTS)[1]
    tiny = {**card, "architecture": "fer_tiny", "inference": {"flip_tta": True}}
    weights = save_model(create_model("fer_tiny").eval(), tmp_path / "tiny.safetensors", tiny)
    faces = load_faces(SAMPLE_PATH, progress=False).images
    plain = Predictor(weights, runtime="onnx", tta=False).logits(faces)
    second_gate = float(np.median(top_two_gap(plain)))
    second = top_two_gap(plain) < second_gate
    after_second = Predictor(weights, runtime="onnx", mirror_gap=second_gate).logits(faces)
    third_gate = float(np.median(top_two_gap(after_second)[second]))
    expected = float(np.mean(second & (top_two_gap(after_second) < third_gate)))
    assert 0 < expected < second.mean()
    # The same weights, with both gates and the third pass's views in the card.
    staged = save_model(load_model(weights)[0], tmp_path / "staged.safetensors", {**tiny, "inference": {
        "flip_tta": True, "second_pass_gap": second_gate, "third_pass_views": ["left", "up_flip"],
        "third_pass_gap": third_gate}})
    result = run_bench(weights=str(staged), runtime="onnx", threads=1, seconds=0.05, batch_sizes=(1, 8))
    assert result["third_pass_views"] == ["left", "up_flip"]
    assert result["second_pass_share"] == pytest.approx(float(second.mean()))
    assert result["third_pass_share"] == pytest.approx(expected)

    args = ["--weights", str(staged), "--threads", "1", "--seconds", "0.05", "--runtime", "onnx"]
    assert main(get_args_parser().parse_args(args)) == 0
    out = capsys.readouterr().out
    assert (f"third pass: its views left, up_flip on faces of the second pass, where the averaged top two logits "
            f"still lie within {third_gate:g}: {100 * expected:.1f}% of these faces\n") in out
    assert main(get_args_parser().parse_args([*args, "--tta", "all"])) == 0
    assert "third pass: its views left, up_flip, for every face\n" in capsys.readouterr().out
    assert main(get_args_parser().parse_args([*args, "--tta", "off"])) == 0
    assert "third pass" not in capsys.readouterr().out


def test_faces_that_cannot_be_read_get_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(get_args_parser().parse_args(["--faces", str(tmp_path / "missing"), "--seconds", "0.05"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_pickled_weights_are_refused_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04not really a pickle")
    assert main(get_args_parser().parse_args(["--weights", str(pickled), "--seconds", "0.05"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_unknown_tta_value_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--tta", "maybe"])
    assert "invalid choice" in capsys.readouterr().err


def test_an_untrained_design_is_measured_with_its_own_widths(capsys: pytest.CaptureFixture[str]) -> None:
    args = get_args_parser().parse_args(["--architecture", "fer_tiny", "--widths", "8,24", "--threads", "1",
                                         "--seconds", "0.05", "--tta", "off"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "untrained fer_tiny with widths 8,24 (random weights: speed only)" in out
    # Its own weights file is measured, far smaller than the bundled model's.
    assert " MB in 1 file\n" in out
    size_mb = float(out.split("\nweights: ")[1].split(" MB")[0])
    assert 0 < size_mb < 0.1


def test_untrained_weights_carry_the_widths_asked_for(tmp_path: Path) -> None:
    from benchmarks.inference import untrained_weights
    from fer_core.weights import load_model

    model, card = load_model(untrained_weights("fer_vgg", (16, 32, 48, 64), tmp_path))
    assert card["model_kwargs"] == {"widths": [16, 32, 48, 64]} and card["untrained"] is True
    assert model.num_features == 64 and model.fc.in_features == 64


@pytest.mark.parametrize(("extra", "message"), [
    (["--architecture", "fer_nonexistent"], "unknown model 'fer_nonexistent'"),
    (["--architecture", "fer_vgg", "--widths", "32,64"], "same length"),
    (["--architecture", "fer_vgg", "--widths", "32,x,128,256"], "whole numbers"),
    (["--architecture", "fer_vgg", "--widths", "0,64,128,256"], "between 1 and 4096"),
    (["--widths", "32,64,128,256"], "--widths goes with --architecture"),
    (["--architecture", "fer_vgg", "--weights", "x.safetensors"], "not both"),
])
def test_bad_design_options_get_a_message(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(get_args_parser().parse_args([*extra, "--seconds", "0.05"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
