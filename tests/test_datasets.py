"""Loading FER2013 in its three real forms into one table, and writing tables back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, SHARED_FER, needs_shared
from fer_core.datasets import DatasetError, FaceTable, load_faces, save_table, stratified_split
from fer_core.labels import EMOTIONS


def _write_folder_tree(root: Path, images: np.ndarray, labels: np.ndarray, *, split: str | None,
                       names: dict[str, str] | None = None, ext: str = ".png") -> None:
    """A Kaggle-style tree; ``names`` renames emotion folders (``angry`` -> ``Anger``)."""
    names = names or {}
    for i, (face, label) in enumerate(zip(images, labels)):
        folder = root / (split or "") / names.get(EMOTIONS[label], EMOTIONS[label])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(folder / f"face_{i:03d}{ext}")


def _write_csv(path: Path, images: np.ndarray, labels: np.ndarray, usages: list[str]) -> None:
    pixels = [" ".join(map(str, f.ravel())) for f in images]
    pd.DataFrame({"emotion": labels, "pixels": pixels, "Usage": usages}).to_csv(path, index=False)


class TestFolderLayout:
    def test_split_level_tree(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path, images[:20], labels[:20], split="train")
        _write_folder_tree(tmp_path, images[20:], labels[20:], split="PublicTest")
        table = load_faces(tmp_path)
        assert len(table) == 35
        assert table.split_counts() == {"train": 20, "val": 15}
        assert table.images.shape == (35, 48, 48) and table.images.dtype == np.uint8
        assert table.frame["sample_id"].is_unique
        # Every face comes back with its pixels and its label.
        by_id = dict(zip(table.frame["sample_id"], range(len(table))))
        first = by_id[f"train/{EMOTIONS[labels[0]]}/face_000"]
        np.testing.assert_array_equal(table.images[first], images[0])
        assert table.frame["emotion"].iloc[first] == labels[0]
        assert list(table.frame.columns[:5]) == ["sample_id", "emotion", "emotion_name", "split", "source"]

    def test_single_split_with_synonym_folders_and_an_unknown_class(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        names = {"angry": "Anger", "happy": "happiness", "surprise": "Surprised"}
        _write_folder_tree(tmp_path, images, labels, split=None, names=names)
        contempt = tmp_path / "contempt"
        contempt.mkdir()
        for i in range(3):
            Image.fromarray(images[i]).save(contempt / f"c{i}.png")
        with pytest.warns(UserWarning, match=r"outside the seven emotions: contempt \(3 images\)"):
            table = load_faces(tmp_path)
        assert len(table) == 35
        assert table.split_counts() == {"unsplit": 35}
        assert table.skipped == {"unknown_class:contempt": 3}
        assert sorted(table.frame["emotion_name"].astype(str).unique()) == sorted(EMOTIONS)

    def test_a_split_folder_given_directly_keeps_its_split(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path, images, labels, split="val")
        whole = load_faces(tmp_path)
        part = load_faces(tmp_path / "val")
        assert part.split_counts() == {"val": 35}
        assert list(part.frame["sample_id"]) == list(whole.frame["sample_id"])

    @pytest.mark.parametrize("ext", [".jpg", ".bmp", ".tiff", ".png"])
    def test_image_formats(self, tmp_path: Path, val_faces, ext: str) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path, images[:7], labels[:7], split="train", ext=ext)
        table = load_faces(tmp_path)
        assert len(table) == 7
        tolerance = 12 if ext == ".jpg" else 0  # JPEG is lossy
        assert np.abs(table.images.astype(int) - images[:7].astype(int)).mean() <= tolerance

    def test_colour_and_large_images_become_48x48_grey(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        folder = tmp_path / "happy"
        folder.mkdir()
        Image.fromarray(np.stack([images[0]] * 3, axis=-1)).resize((96, 96)).save(folder / "rgb.png")
        Image.fromarray(images[0].astype(np.uint16) * 257).save(folder / "sixteen.png")
        table = load_faces(tmp_path)
        assert table.images.shape == (2, 48, 48)
        assert np.abs(table.images.astype(int) - images[0].astype(int)).max() <= 40
        assert np.abs(table.images.astype(int) - images[0].astype(int)).mean() <= 3

    def test_corrupt_and_non_image_files_are_skipped_and_counted(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path, images[:5], labels[:5], split="train")
        angry = tmp_path / "train" / "angry"
        (angry / "notes.txt").write_text("not an image")  # not an image extension: ignored
        (angry / "renamed.png").write_text("this is text, not a PNG")
        (angry / "empty.jpg").write_bytes(b"")
        good = (angry / "face_000.png").read_bytes()
        (angry / "truncated.png").write_bytes(good[: len(good) // 3])
        with pytest.warns(UserWarning, match="skipped 3 files that are not readable images"):
            table = load_faces(tmp_path)
        assert len(table) == 5
        assert table.skipped["corrupt_files"] == 3

    def test_same_file_name_in_two_class_folders(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        for emotion, face in (("sad", images[0]), ("fear", images[1])):
            (tmp_path / "train" / emotion).mkdir(parents=True)
            Image.fromarray(face).save(tmp_path / "train" / emotion / "Training_1.png")
        Image.fromarray(images[2]).save(tmp_path / "train" / "sad" / "Training_1.jpg")
        table = load_faces(tmp_path)
        assert len(table) == 3
        assert table.frame["sample_id"].is_unique
        expected = {"train/fear/Training_1", "train/sad/Training_1.jpg", "train/sad/Training_1.png"}
        assert set(table.frame["sample_id"]) == expected


class TestBadInput:
    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetError, match="does not exist"):
            load_faces(tmp_path / "nowhere")

    def test_empty_folder(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetError, match="is empty"):
            load_faces(tmp_path)

    def test_folder_without_faces(self, tmp_path: Path) -> None:
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "readme.txt").write_text("hello")
        with pytest.raises(DatasetError, match="no face images found"):
            load_faces(tmp_path)

    def test_unsupported_file(self, tmp_path: Path) -> None:
        path = tmp_path / "faces.xlsx"
        path.write_bytes(b"PK")
        with pytest.raises(DatasetError, match="unsupported file type .xlsx"):
            load_faces(path)

    def test_errors_are_value_errors(self) -> None:
        assert issubclass(DatasetError, ValueError)

    def test_command_line_reports_the_message(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "fer_core.datasets", str(tmp_path / "nowhere")],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2
        assert "error: data set not found" in result.stderr
        assert "Traceback" not in result.stderr


class TestCsv:
    def test_fer2013_csv_with_usage(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        usages = ["Training"] * 20 + ["PublicTest"] * 10 + ["PrivateTest"] * 5
        path = tmp_path / "fer2013.csv"
        _write_csv(path, images, labels, usages)
        table = load_faces(path)
        assert len(table) == 35
        assert table.split_counts() == {"train": 20, "val": 10, "test": 5}
        np.testing.assert_array_equal(table.images, images)
        np.testing.assert_array_equal(table.labels, labels)
        assert table.frame["source"].iloc[0] == "fer2013.csv:1"

    def test_bad_pixel_rows_are_reported_and_the_rest_load(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        path = tmp_path / "fer2013.csv"
        _write_csv(path, images[:6], labels[:6], ["Training"] * 6)
        frame = pd.read_csv(path, dtype=str)
        frame.loc[1, "pixels"] = " ".join(["7"] * 2303)  # one number short
        pixels = frame.loc[3, "pixels"]
        frame.loc[3, "pixels"] = pixels.replace("1", "x", 1) if "1" in pixels else "x " * 2304
        frame.loc[4, "pixels"] = " ".join(["300"] * 2304)  # out of range
        frame.to_csv(path, index=False)
        with pytest.warns(UserWarning, match=r"skipped 3 rows whose pixels are not 2304 numbers .*\(rows 2, 4, 5\)"):
            table = load_faces(path)
        assert len(table) == 3
        assert table.skipped["bad_pixels_rows"] == 3
        np.testing.assert_array_equal(table.images, images[[0, 2, 5]])

    def test_pixel_value_beyond_int32_is_a_bad_row(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        path = tmp_path / "fer2013.csv"
        _write_csv(path, images[:3], labels[:3], ["Training"] * 3)
        frame = pd.read_csv(path, dtype=str)
        frame.loc[1, "pixels"] = " ".join(["3000000000"] + ["7"] * 2303)  # overflows int32
        frame.loc[2, "pixels"] = " ".join(["-99999999999999999999"] + ["7"] * 2303)
        frame.to_csv(path, index=False)
        with pytest.warns(UserWarning, match=r"skipped 2 rows whose pixels are not 2304 numbers .*\(rows 2, 3\)"):
            table = load_faces(path)
        assert len(table) == 1 and table.skipped["bad_pixels_rows"] == 2
        np.testing.assert_array_equal(table.images, images[:1])

    def test_missing_columns(self, tmp_path: Path) -> None:
        path = tmp_path / "faces.csv"
        path.write_text("label,image\n1,abc\n")
        with pytest.raises(DatasetError, match=r"lacks the column\(s\) \['emotion', 'pixels'\]"):
            load_faces(path)

    def test_named_labels_and_unknown_classes(self, tmp_path: Path, val_faces) -> None:
        images, _, _ = val_faces
        path = tmp_path / "named.csv"
        pixels = [" ".join(map(str, f.ravel())) for f in images[:3]]
        pd.DataFrame({"Emotion": ["Happiness", "contempt", "sadness"], " Pixels": pixels}).to_csv(path, index=False)
        with pytest.warns(UserWarning, match=r"contempt \(1 rows\)"):
            table = load_faces(path)
        assert list(table.frame["emotion_name"].astype(str)) == ["happy", "sad"]
        assert table.split_counts() == {"unsplit": 2}


class TestParquet:
    def test_hub_style_parquet_with_alphabetical_class_label(self, tmp_path: Path, val_faces) -> None:
        """Copies on the hub often order class names alphabetically: codes must map through the names."""
        import io

        import datasets as hf

        images, labels, _ = val_faces
        alphabetical = sorted(EMOTIONS)
        pngs = []
        for face in images:
            buffer = io.BytesIO()
            Image.fromarray(face).save(buffer, format="PNG")
            pngs.append({"bytes": buffer.getvalue(), "path": None})
        features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=alphabetical)})
        hub_labels = [alphabetical.index(EMOTIONS[label]) for label in labels]
        dataset = hf.Dataset.from_dict({"image": pngs, "label": hub_labels}, features=features)
        (tmp_path / "data").mkdir()
        dataset.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
        dataset.select(range(5)).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
        table = load_faces(tmp_path)
        assert table.split_counts() == {"train": 35, "test": 5}
        train = table.split("train")
        np.testing.assert_array_equal(train.labels, labels)
        np.testing.assert_array_equal(train.images, images)

    def test_parquet_without_label_column(self, tmp_path: Path) -> None:
        pd.DataFrame({"image": [b"x"], "other": [1]}).to_parquet(tmp_path / "x.parquet")
        with pytest.raises(DatasetError, match="'emotion' or 'label' column"):
            load_faces(tmp_path / "x.parquet")

    def test_broken_parquet_file(self, tmp_path: Path) -> None:
        (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(DatasetError, match="cannot read Parquet"):
            load_faces(tmp_path / "broken.parquet")

    def test_hub_id_without_network_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        # The libraries read those variables once, on import: set their flags too, or a session that
        # imported them online waits for the network's timeouts.
        import datasets.config
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        with pytest.raises(DatasetError, match="cannot load the hub data set 'nobody/no-such-fer-copy'"):
            load_faces("nobody/no-such-fer-copy")


class TestSaveAndReload:
    @pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
    @pytest.mark.parametrize("chunk_rows", [2048, 8])  # 8: the 35 faces are written in 5 chunks
    def test_round_trip(self, tmp_path: Path, val_faces, suffix: str, chunk_rows: int,
                        monkeypatch: pytest.MonkeyPatch) -> None:
        import fer_core.datasets._export as export

        monkeypatch.setattr(export, "TEXT_CHUNK_ROWS", chunk_rows)
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path / "src", images, labels, split="train")
        table = load_faces(tmp_path / "src")
        table = table.with_columns(pd.DataFrame({"quality_score": np.linspace(0, 1, len(table))}))
        out = save_table(table, tmp_path / f"out{suffix}")
        again = load_faces(out)
        np.testing.assert_array_equal(again.images, table.images)
        np.testing.assert_array_equal(again.labels, table.labels)
        assert list(again.frame["sample_id"]) == list(table.frame["sample_id"])
        assert list(again.frame["split"]) == ["train"] * len(table)
        np.testing.assert_allclose(again.frame["quality_score"], table.frame["quality_score"])

    def test_csv_is_an_original_fer2013_csv(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        table = FaceTable(images=images, frame=load_faces_frame(labels))
        save_table(table, tmp_path / "out.csv")
        head = pd.read_csv(tmp_path / "out.csv", nrows=2)
        assert list(head.columns[:3]) == ["emotion", "pixels", "Usage"]
        assert head["Usage"].iloc[0] == "PublicTest"
        assert len(head["pixels"].iloc[0].split()) == 2304

    def test_unknown_extension_is_refused(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        with pytest.raises(DatasetError, match="choose a .parquet, .csv or .jsonl"):
            save_table(FaceTable(images=images, frame=load_faces_frame(labels)), tmp_path / "out.xlsx")


def load_faces_frame(labels: np.ndarray) -> pd.DataFrame:
    from fer_core.datasets._table import build_frame

    return build_frame([f"val/{i}" for i in range(len(labels))], labels, ["val"] * len(labels), ["test"] * len(labels))


class TestStratifiedSplit:
    def test_proportions_per_class_and_seed(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(7), [40, 20, 40, 60, 40, 40, 60])
        images = rng.integers(0, 255, (len(labels), 48, 48), dtype=np.uint8)
        table = FaceTable(images=images, frame=load_faces_frame(labels))
        split = stratified_split(table, (0.7, 0.15, 0.15), seed=3)
        counts = pd.crosstab(split.frame["emotion"], split.frame["split"])
        assert counts.loc[3, "train"] == 42 and counts.loc[3, "val"] == 9 and counts.loc[3, "test"] == 9
        assert counts["train"].sum() == 210
        again = stratified_split(table, (0.7, 0.15, 0.15), seed=3)
        assert list(again.frame["split"]) == list(split.frame["split"])
        assert list(table.frame["split"]) == ["val"] * len(labels)  # input untouched

    def test_bad_fractions(self, val_faces) -> None:
        images, labels, _ = val_faces
        with pytest.raises(ValueError, match="summing to 1"):
            stratified_split(FaceTable(images=images, frame=load_faces_frame(labels)), (0.5, 0.2, 0.2))


class TestCache:
    def test_second_load_comes_from_the_cache(self, tmp_path: Path, val_faces, monkeypatch: pytest.MonkeyPatch) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path / "data", images, labels, split="train")
        first = load_faces(tmp_path / "data", cache_dir=tmp_path / "cache")

        def must_not_decode(*args, **kwargs):
            raise AssertionError("decoded again instead of reading the cache")

        monkeypatch.setattr("fer_core.datasets.read_folder", must_not_decode)
        second = load_faces(tmp_path / "data", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(second.images, first.images)
        pd.testing.assert_frame_equal(second.frame, first.frame)

    def test_changed_content_is_read_again(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path / "data", images[:7], labels[:7], split="train")
        load_faces(tmp_path / "data", cache_dir=tmp_path / "cache")
        target = tmp_path / "data" / "train" / EMOTIONS[labels[0]] / "face_000.png"
        Image.fromarray(255 - images[0]).save(target)  # same name and size class, new content
        again = load_faces(tmp_path / "data", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(again.images[0], 255 - images[0])

    def test_unwritable_cache_only_warns(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        _write_folder_tree(tmp_path / "data", images[:7], labels[:7], split="train")
        blocker = tmp_path / "cache"
        blocker.write_text("a file where the cache folder should be")
        with pytest.warns(UserWarning, match="could not write the cache entry"):
            table = load_faces(tmp_path / "data", cache_dir=blocker)
        assert len(table) == 7


@needs_shared
@pytest.mark.slow
class TestSharedFer2013:
    def test_full_data_set(self, tmp_path: Path) -> None:
        table = load_faces(SHARED_FER, cache_dir=tmp_path, progress=False)
        assert table.split_counts() == {"train": 28486, "val": 3578}
        counts = table.split("train").frame["emotion_name"].astype(str).value_counts().to_dict()
        assert counts == {"happy": 7173, "neutral": 4926, "sad": 4790, "fear": 4069, "angry": 3965,
                          "surprise": 3128, "disgust": 435}
        assert table.frame["sample_id"].is_unique
        start = time.perf_counter()
        again = load_faces(SHARED_FER, cache_dir=tmp_path, progress=False)
        cached_seconds = time.perf_counter() - start
        assert len(again) == len(table)
        # Not a timing test (the bench command reports speed): a cached load is just far cheaper than decoding.
        assert cached_seconds < 30
