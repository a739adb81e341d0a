"""Tests of fer_core.quality on real FER2013 faces and on small made-up images."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_core.constants import QUALITY_WEIGHTS
from fer_core.labels import EMOTIONS
from fer_core.quality import (
    COMPONENT_COLUMNS,
    FEW_GREY_LEVELS,
    QUALITY_CALIBRATION,
    QUALITY_COLUMNS,
    _parse_split,
    calibrate,
    get_args_parser,
    main,
    quality_percentiles,
    score_faces,
)

FER_VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "fer2013" / "val"
if not FER_VAL.is_dir():
    FER_VAL = Path("/work/shared/fer2013/val")
PER_CLASS = 30
SCORE_COLUMNS = (*COMPONENT_COLUMNS, "quality_score")


def _load_val_faces(per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    images, labels, paths = [], [], []
    for label, emotion in enumerate(EMOTIONS):
        for path in sorted((FER_VAL / emotion).glob("*.png"))[:per_class]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.uint8))
            labels.append(label)
            paths.append(path)
    return np.stack(images), np.array(labels), paths


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """About 200 real val faces (the first 30 file names of each class), and their labels."""
    if not FER_VAL.is_dir():
        pytest.skip(f"FER2013 faces not found at {FER_VAL}")
    images, labels, _ = _load_val_faces()
    return images, labels


@pytest.fixture(scope="module")
def scores(faces: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    images, labels = faces
    return score_faces(images, labels=labels)


def _blur(images: np.ndarray) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (5, 5), 1.2) for image in images])


def _flatten_contrast(images: np.ndarray) -> np.ndarray:
    values = images.astype(np.float32)
    mean = values.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.rint(mean + 0.35 * (values - mean)), 0, 255).astype(np.uint8)


def _darken(images: np.ndarray) -> np.ndarray:
    return np.rint(images.astype(np.float32) * 0.3).astype(np.uint8)


def _synthetic(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48), np.uint8)
    if name == "black":
        pass
    elif name == "white":
        image[:] = 255
    elif name == "grey":
        image[:] = 128
    elif name == "single_pixel":
        image[20, 30] = 255
    elif name == "single_dark_pixel":
        image[:] = 255
        image[0, 0] = 0
    elif name == "noise":
        image = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    elif name == "salt_pepper":
        image[:] = 128
        image[rng.random((48, 48)) < 0.05] = 255
    elif name == "checkerboard":
        image = ((np.indices((48, 48)).sum(axis=0) % 2) * 255).astype(np.uint8)
    else:
        raise ValueError(name)
    return image


SYNTHETIC = (
    "black", "white", "grey", "single_pixel", "single_dark_pixel", "noise", "salt_pepper", "checkerboard",
)


class TestOutput:
    def test_columns_and_rows(self, faces, scores):
        assert tuple(scores.columns) == QUALITY_COLUMNS
        assert len(scores) == len(faces[0])
        assert set(COMPONENT_COLUMNS) == set(QUALITY_WEIGHTS)

    @pytest.mark.parametrize("column", [*SCORE_COLUMNS, "brightness", "contrast"])
    def test_real_faces_in_unit_range(self, scores, column):
        values = scores[column].to_numpy()
        assert not np.isnan(values).any()
        assert values.min() >= 0.0 and values.max() <= 1.0

    @pytest.mark.parametrize("name", SYNTHETIC)
    def test_synthetic_images_in_unit_range(self, name):
        frame = score_faces(_synthetic(name))
        assert len(frame) == 1
        values = frame[[*SCORE_COLUMNS, "brightness", "contrast", "sample_weight"]].to_numpy(dtype=float)
        assert np.isfinite(values).all()
        assert (values[:, :-1] >= 0).all() and (values[:, :-1] <= 1).all()

    def test_raw_statistics(self, faces, scores):
        images = faces[0].astype(np.float64)
        np.testing.assert_allclose(scores["pixel_mean"], images.mean(axis=(1, 2)), rtol=1e-9)
        np.testing.assert_allclose(scores["pixel_std"], images.std(axis=(1, 2)), rtol=1e-4)
        np.testing.assert_array_equal(scores["pixel_min"], faces[0].min(axis=(1, 2)))
        np.testing.assert_array_equal(scores["pixel_max"], faces[0].max(axis=(1, 2)))
        np.testing.assert_allclose(scores["brightness"], scores["pixel_mean"] / 255)
        np.testing.assert_allclose(scores["contrast"], scores["pixel_std"] / 255)
        levels = [len(np.unique(image)) for image in faces[0]]
        np.testing.assert_array_equal(scores["grey_levels"], levels)

    @pytest.mark.parametrize("column", COMPONENT_COLUMNS)
    def test_components_spread_on_real_faces(self, scores, column):
        q25, q75 = np.percentile(scores[column], [25, 75])
        assert q75 - q25 > 0.15, f"{column} IQR {q75 - q25:.3f}"

    def test_quality_is_weighted_sum(self, scores):
        assert not scores["near_uniform"].any()
        expected = sum(weight * scores[name] for name, weight in QUALITY_WEIGHTS.items())
        np.testing.assert_allclose(scores["quality_score"], expected, atol=1e-12)
        assert sum(QUALITY_WEIGHTS.values()) == pytest.approx(1.0)


class TestComponents:
    @pytest.mark.parametrize(
        "degrade, column, min_mean_drop",
        [
            (_blur, "focus_score", 0.2),
            (_flatten_contrast, "contrast_score", 0.2),
            (_darken, "brightness_score", 0.2),
        ],
        ids=["blur-focus", "flatten-contrast", "darken-brightness"],
    )
    def test_degraded_copy_scores_lower(self, faces, scores, degrade, column, min_mean_drop):
        degraded = score_faces(degrade(faces[0]))
        before, after = scores[column].to_numpy(), degraded[column].to_numpy()
        lower = after < before
        # Faces already at the clipped end (0) cannot drop; a very bright face
        # may gain from darkening. Nearly all others must score lower.
        assert lower.mean() >= 0.95, f"{column}: only {lower.mean():.1%} lower"
        assert before.mean() - after.mean() > min_mean_drop
        assert (degraded["quality_score"] < scores["quality_score"]).mean() >= 0.9

    def test_blur_lowers_edges_too(self, faces, scores):
        degraded = score_faces(_blur(faces[0]))
        assert (degraded["edge_score"] <= scores["edge_score"]).mean() >= 0.95

    def test_brighter_than_well_exposed_is_penalised(self, faces, scores):
        bright = np.clip(faces[0].astype(np.int16) + 120, 0, 255).astype(np.uint8)
        assert score_faces(bright)["brightness_score"].mean() < scores["brightness_score"].mean() - 0.2

    def test_mirrored_faces_score_the_same(self, faces, scores):
        mirrored = score_faces(faces[0][:, :, ::-1])  # also a non-contiguous input
        pd.testing.assert_frame_equal(mirrored, scores.assign(sample_weight=1.0), rtol=1e-5)

    def test_calibration_extremes_map_to_zero_and_one(self):
        c = QUALITY_CALIBRATION
        grey = np.full((48, 48), round(c["pixel_mean_p50"]), np.uint8)
        assert score_faces(grey)["brightness_score"].iloc[0] == pytest.approx(1.0, abs=0.01)
        dark = np.full((48, 48), 10, np.uint8)
        assert score_faces(dark)["brightness_score"].iloc[0] == 0.0


class TestFlags:
    @pytest.mark.parametrize("level", [0, 30, 128, 200, 255])
    def test_uniform_image_is_near_uniform_with_zero_quality(self, level):
        frame = score_faces(np.full((48, 48), level, np.uint8))
        assert bool(frame["near_uniform"].iloc[0])
        assert frame["quality_score"].iloc[0] <= 0.05

    def test_faint_noise_on_grey_is_near_uniform(self):
        rng = np.random.default_rng(1)
        image = (128 + rng.integers(-2, 3, (48, 48))).astype(np.uint8)
        frame = score_faces(image)
        assert bool(frame["near_uniform"].iloc[0]) and frame["quality_score"].iloc[0] == 0.0

    def test_real_faces_are_not_flagged(self, scores):
        assert not scores["near_uniform"].any()
        assert scores["few_grey_levels"].mean() <= 0.01

    @pytest.mark.parametrize("bits", [1, 2, 3, 4])
    def test_binarised_and_posterised_faces_have_few_grey_levels(self, faces, bits):
        step = 256 // (2**bits)
        posterised = (faces[0] // step * step).astype(np.uint8)
        frame = score_faces(posterised)
        assert frame["few_grey_levels"].all()
        assert (frame["grey_levels"] <= 2**bits).all()

    def test_threshold_constant(self):
        assert score_faces(_synthetic("checkerboard"))["grey_levels"].iloc[0] == 2
        assert FEW_GREY_LEVELS > 16


class TestInvariants:
    def test_input_unchanged(self, faces):
        images = faces[0].copy()
        labels = faces[1].copy()
        score_faces(images, labels=labels)
        np.testing.assert_array_equal(images, faces[0])
        np.testing.assert_array_equal(labels, faces[1])

    def test_batch_equals_one_by_one(self, faces, scores):
        rows = range(0, len(faces[0]), 7)
        single = pd.concat([score_faces(faces[0][i]) for i in rows], ignore_index=True)
        batch = scores.iloc[list(rows)].reset_index(drop=True).assign(sample_weight=1.0)
        pd.testing.assert_frame_equal(single, batch, rtol=1e-6)

    def test_chunk_boundaries_do_not_matter(self, faces, monkeypatch):
        import fer_core.quality as quality

        reference = score_faces(faces[0])
        monkeypatch.setattr(quality, "CHUNK_SIZE", 17)
        pd.testing.assert_frame_equal(score_faces(faces[0]), reference, rtol=1e-6)

    def test_single_face_gives_one_row(self, faces):
        assert len(score_faces(faces[0][0])) == 1

    def test_empty_batch(self):
        frame = score_faces(np.zeros((0, 48, 48), np.uint8))
        assert len(frame) == 0 and tuple(frame.columns) == QUALITY_COLUMNS


class TestSampleWeight:
    def test_without_labels_is_one(self, faces):
        assert (score_faces(faces[0][:10])["sample_weight"] == 1.0).all()

    @pytest.mark.parametrize("counts", [(30, 5, 12), (1, 1, 40), (7, 7, 7)])
    def test_classes_carry_equal_weight(self, faces, counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        frame = score_faces(faces[0][: len(labels)], labels=labels)
        totals = frame.groupby(labels)["sample_weight"].sum()
        np.testing.assert_allclose(totals, len(labels) / len(counts))
        assert frame["sample_weight"].mean() == pytest.approx(1.0)

    def test_real_labels_and_names(self, faces, scores):
        totals = scores.groupby(faces[1])["sample_weight"].sum()
        np.testing.assert_allclose(totals, totals.iloc[0])
        names = np.array(EMOTIONS)[faces[1]]
        by_name = score_faces(faces[0], labels=names)["sample_weight"]
        np.testing.assert_allclose(by_name, scores["sample_weight"])


class TestBadInput:
    @pytest.mark.parametrize(
        "images, error, match",
        [
            (np.zeros((2, 48, 48), np.float32), ValueError, "uint8"),
            (np.zeros((2, 48, 48), np.int64), ValueError, "uint8"),
            (np.zeros((2, 48, 48, 1), np.uint8), ValueError, r"shape \(N, H, W\)"),
            (np.zeros(48, np.uint8), ValueError, r"shape \(N, H, W\)"),
            (np.zeros((2, 32, 32), np.uint8), ValueError, "48x48"),
            ([[0] * 48] * 48, TypeError, "numpy array"),
        ],
        ids=["float32", "int64", "4d", "1d", "32x32", "list"],
    )
    def test_bad_images(self, images, error, match):
        with pytest.raises(error, match=match):
            score_faces(images)

    def test_labels_of_wrong_length(self):
        with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
            score_faces(np.zeros((3, 48, 48), np.uint8), labels=np.array([0, 1]))

    def test_incomplete_calibration(self):
        with pytest.raises(ValueError, match="calibration lacks"):
            score_faces(np.zeros((1, 48, 48), np.uint8), calibration={"edge_raw_p1": 1.0})


class TestCalibrate:
    def test_recomputes_constants(self, faces):
        calibration = calibrate(faces[0])
        assert list(calibration) == list(QUALITY_CALIBRATION)
        for stat in ("edge_raw", "pixel_std", "log_focus_raw"):
            assert calibration[f"{stat}_p1"] < calibration[f"{stat}_p99"]
            # A val sample lands near the train constants.
            span = QUALITY_CALIBRATION[f"{stat}_p99"] - QUALITY_CALIBRATION[f"{stat}_p1"]
            assert abs(calibration[f"{stat}_p1"] - QUALITY_CALIBRATION[f"{stat}_p1"]) < 0.3 * span
        frame = score_faces(faces[0], calibration=calibration)
        assert frame[list(SCORE_COLUMNS)].to_numpy().min() >= 0.0
        assert frame[list(SCORE_COLUMNS)].to_numpy().max() <= 1.0

    def test_too_few_faces(self, faces):
        with pytest.raises(ValueError, match="at least 100"):
            calibrate(faces[0][:20])


class TestPercentiles:
    def test_table(self, scores):
        table = quality_percentiles(scores)
        assert list(table.index) == list(SCORE_COLUMNS)
        assert list(table.columns) == ["p1", "p5", "p25", "p50", "p75", "p95", "p99"]
        assert (np.diff(table.to_numpy(), axis=1) >= 0).all()

    def test_missing_columns(self):
        with pytest.raises(ValueError, match="lacks quality columns"):
            quality_percentiles(pd.DataFrame({"edge_score": [0.5]}))


class TestCommand:
    @pytest.mark.parametrize(
        "text, expected",
        [("70/15/15", (0.7, 0.15, 0.15)), (" 80/10/10 ", (0.8, 0.1, 0.1)), ("100/0/0", (1.0, 0.0, 0.0)),
         ("33.4/33.3/33.3", (0.334, 0.333, 0.333))],
    )
    def test_parse_split(self, text, expected):
        assert _parse_split(text) == pytest.approx(expected)

    @pytest.mark.parametrize(
        "text, match",
        [("70/30", "three percentages"), ("70/15/15/0", "three percentages"), ("a/b/c", "numbers"),
         ("70/20/20", "sum to 100"), ("0.7/0.15/0.15", "sum to 100"), ("110/-5/-5", "between 0 and 100"),
         ("0/50/50", "train percentage")],
    )
    def test_parse_split_rejects(self, text, match):
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            _parse_split(text)

    def test_parser_reports_bad_split(self, capsys):
        with pytest.raises(SystemExit) as exit_info:
            get_args_parser().parse_args(["data", "--out", "x.csv", "--split-stratified", "70/20"])
        assert exit_info.value.code == 2
        assert "three percentages" in capsys.readouterr().err

    def test_parser_defaults(self):
        args = get_args_parser().parse_args(["data", "--bench"])
        assert args.out is None and args.split_stratified is None and args.seed == 0 and args.bench

    def test_out_required(self, capsys):
        assert main(get_args_parser().parse_args(["data"])) == 2
        assert "error: --out" in capsys.readouterr().err


def _datasets():
    try:
        from fer_core.datasets import load_faces, save_table  # noqa: F401
    except ImportError:
        pytest.skip("fer_core.datasets is not there yet")


class TestCommandOnData:
    @pytest.fixture(autouse=True)
    def _cache_in_tmp(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))

    @pytest.fixture()
    def tree(self, tmp_path):
        _datasets()
        images, labels, paths = _load_val_faces(per_class=10)
        for path in paths:
            target = tmp_path / "faces" / "val" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
        return tmp_path / "faces"

    @pytest.mark.parametrize(
        "extra, splits", [([], {"val"}), (["--split-stratified", "70/15/15"], {"train", "val", "test"})]
    )
    def test_writes_enhanced_csv(self, tree, tmp_path, capsys, extra, splits):
        out = tmp_path / "enhanced.csv"
        assert main(get_args_parser().parse_args([str(tree), "--out", str(out), *extra])) == 0
        frame = pd.read_csv(out)
        assert len(frame) == 70
        assert set(QUALITY_COLUMNS) <= set(frame.columns)
        assert set(frame["split"]) == splits
        assert frame[list(SCORE_COLUMNS)].to_numpy().min() >= 0
        assert "quality_score" in capsys.readouterr().out

    def test_missing_data_is_a_clean_error(self, tmp_path, capsys):
        _datasets()
        rc = main(get_args_parser().parse_args([str(tmp_path / "nothing"), "--out", str(tmp_path / "o.csv")]))
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
