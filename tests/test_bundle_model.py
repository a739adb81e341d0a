"""tools.bundle_model: a vote-trained run bundled beside the default model, chosen on a second label set
(the FER+ majority labels of real faces), its card named and reporting val against both label sets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.weights import DEFAULT_WEIGHTS, card_path

FERPLUS_VOTES = REPO.parent / "shared" / "ferplus" / "fer2013_votes.csv"
needs_votes = pytest.mark.skipif(not FERPLUS_VOTES.is_file(), reason="../shared/ferplus/fer2013_votes.csv is absent")

pytest.importorskip("torch", reason="bundling a model needs PyTorch")


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def ferplus_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FER+ majority labels of the bundled sample's faces, as ``python -m annotate.ferplus`` writes them."""
    out = tmp_path_factory.mktemp("labels") / "sample_ferplus.csv"
    done = _run("annotate.ferplus", str(FERPLUS_VOTES), "--data", str(SAMPLE_PATH), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory, ferplus_labels: Path) -> tuple[Path, str]:
    """A run fine-tuned one step from the bundled model, chosen on the FER+ labels, bundled as ``fer_votes``."""
    work = tmp_path_factory.mktemp("bundle")
    trained = _run("fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), "--val-labels", str(ferplus_labels),
                   "--val-labels-name", "ferplus", "--out", str(work / "run"), "--epochs", "1", "--max-steps", "1",
                   "--init", str(DEFAULT_WEIGHTS), "--time-budget", "none", "--threads", "1", "--no-progress",
                   "--device", "cpu", "--cache-dir", str(work / "cache"))
    assert trained.returncode == 0, trained.stderr
    out = work / "assets" / "fer_votes.safetensors"
    out.parent.mkdir()
    done = _run("tools.bundle_model", str(work / "run"), "--val", str(SAMPLE_PATH), "--val-labels",
                str(ferplus_labels), "--val-labels-name", "ferplus", "--name", "fer_votes", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


@needs_votes
@pytest.mark.slow
class TestBundleOnASecondLabelSet:
    def test_the_card_is_named_and_reports_val_against_both_label_sets(self, bundled) -> None:
        out, stdout = bundled
        card = json.loads(card_path(out).read_text())
        assert card["name"] == "fer_votes"
        assert set(card["training"]["val_by_labels"]) == {"original", "ferplus"}  # the run's, kept
        as_served = card["checks"]["val_by_labels"]
        assert set(as_served) == {"original", "ferplus"}
        assert as_served["original"]["faces"] == 350 and 0 < as_served["ferplus"]["faces"] < 350
        assert as_served["ferplus"]["file"] == "sample_ferplus.csv" and as_served["ferplus"]["sha256"]
        assert card["inference"]["chosen_on"]["labels"] == "ferplus"
        assert card["calibration"]["fitted_on"].startswith("val, ferplus labels")
        assert "val as served: original labels" in stdout and card["checks"]["val_sample"]["faces"] == 280
        # Beside the default model, not in its place; its ONNX file named in its card.
        assert (out.parent / card["onnx"][card["inference"]["runtime"]]["file"]).is_file()
        assert not (out.parent / "fer_model.json").exists()

    def test_gate_and_temperature_are_chosen_on_the_second_label_set(self, bundled, ferplus_labels: Path) -> None:
        from fer_core.datasets import load_faces
        from fer_core.label_sets import load_label_set
        from tools.bundle_model import choose_second_pass_gap, refit_temperature

        out, _ = bundled
        card = json.loads(card_path(out).read_text())
        val = load_faces(SAMPLE_PATH, progress=False)
        id_to_class = np.asarray(card["fer2013_id_to_class"])
        found = load_label_set(ferplus_labels, val)
        second = np.where(found.labelled, id_to_class[np.maximum(found.labels, 0)], -1)
        if card["inference"]["flip_tta"]:
            gate = choose_second_pass_gap(out, val, card["inference"]["runtime"], second)
            assert gate["second_pass_gap"] == card["inference"].get("second_pass_gap")
        on_second = refit_temperature(out, val, card, second, "ferplus")["temperature"]
        on_own = refit_temperature(out, val, card)["temperature"]
        assert card["calibration"]["temperature"] == pytest.approx(on_second, rel=1e-6)
        assert abs(on_own - on_second) > 0.01  # the label set made a difference

    def test_the_catalog_serves_it_by_name(self, bundled) -> None:
        from fer_core.catalog import ModelCatalog

        out, _ = bundled
        catalog = ModelCatalog(folder=out.parent)
        assert catalog.names() == ["fer_model", "fer_votes"]
        assert catalog.predictor("fer_votes").onnx_file.parent == out.parent


class TestOptions:
    @pytest.fixture()
    def run(self, tmp_path: Path) -> Path:
        run = tmp_path / "run"
        run.mkdir()
        shutil.copyfile(DEFAULT_WEIGHTS, run / "model.safetensors")
        shutil.copyfile(card_path(DEFAULT_WEIGHTS), run / "model.json")
        return run

    @pytest.mark.parametrize(("extra", "message"), [
        (["--val-labels-name", "ferplus"], "give --val-labels FILE too"),
        (["--val-labels", "missing.csv"], "--val-labels: no file at 'missing.csv'"),
        (["--name", "<b>"], "a model name may hold"),
        (["--out", "model.bin"], "--out must name a .safetensors file"),
        (["--calibration", str(SAMPLE_PATH), "--calibration-faces", "0"], "--calibration-faces must be a positive"),
        (["--calibration", "no_such_folder"], "no_such_folder"),
    ])
    def test_bad_options_are_refused_before_anything_is_written(self, run: Path, tmp_path: Path, extra: list[str],
                                                                message: str, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
        from tools.bundle_model import get_args_parser, main

        out = tmp_path / "assets" / "x.safetensors"
        parser = get_args_parser()
        args = parser.parse_args([str(run), "--val", str(SAMPLE_PATH), "--out", str(out), *extra])
        with pytest.raises(SystemExit) as stop:
            main(args, parser)
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
        assert not out.parent.exists()


FER2013_TRAIN = REPO.parent / "shared" / "fer2013" / "train"


@needs_votes
@pytest.mark.slow
@pytest.mark.skipif(not FER2013_TRAIN.is_dir(), reason="../shared/fer2013/train is absent")
def test_int8_calibrated_on_training_faces_is_recorded_and_reproducible(bundled, ferplus_labels: Path,
                                                                         tmp_path: Path) -> None:
    """--calibration draws real training faces for int8; the card says so, and its command rebuilds the same file."""
    from fer_core.predict import Predictor

    sample_calibrated, _ = bundled
    out = tmp_path / "assets" / "fer_votes.safetensors"
    out.parent.mkdir()
    done = _run("tools.bundle_model", str(sample_calibrated.parents[1] / "run"), "--val", str(SAMPLE_PATH),
                "--val-labels", str(ferplus_labels), "--name", "fer_votes", "--out", str(out),
                "--calibration", str(FER2013_TRAIN), "--calibration-faces", "300")
    assert done.returncode == 0, done.stderr
    entry = json.loads(card_path(out).read_text())["onnx"]["onnx-int8"]
    assert entry["calibration"] == "300 faces of train (seed 0)"
    assert entry["command"].endswith(f"--runtime onnx-int8 --calibration {FER2013_TRAIN} --calibration-faces 300")
    int8 = out.with_name(entry["file"])
    assert int8.read_bytes() != sample_calibrated.with_name("fer_votes.int8.onnx").read_bytes()
    first = int8.read_bytes()
    again = _run("tools.export_onnx", str(out), "--runtime", "onnx-int8", "--calibration", str(FER2013_TRAIN),
                 "--calibration-faces", "300")
    assert again.returncode == 0, again.stderr
    assert int8.read_bytes() == first  # the same faces, the same file
    assert Predictor(out, runtime="onnx-int8").onnx_file == int8
    refused = _run("tools.export_onnx", str(out), "--runtime", "onnx-int8", "--calibration", str(FER2013_TRAIN),
                   "--calibration-faces", "0")
    assert refused.returncode == 2 and "--calibration-faces must be a positive integer" in refused.stderr
    assert int8.read_bytes() == first  # nothing written
