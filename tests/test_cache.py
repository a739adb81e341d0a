"""The keyed disk cache (fer_core._cache): keys follow their inputs; damaged entries and unwritable folders cost
only time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import needs_shared
from fer_core._cache import cache_key, cached, entry_path, write_frame
from fer_core.config import default_cache_dir
from fer_core.datasets import FaceTable, load_faces, save_table
from fer_core.datasets._table import build_frame


class Counter:
    """``compute`` for :func:`cached` that counts its calls."""

    def __init__(self, value: pd.DataFrame) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> pd.DataFrame:
        self.calls += 1
        return self.value


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(5), "score": np.linspace(0, 1, 5)})


def run(compute: Counter, **kwargs) -> tuple[pd.DataFrame, bool]:
    return cached("test", "key", compute, suffix=".parquet", read=pd.read_parquet, write=write_frame, **kwargs)


class TestCacheKey:
    def test_same_inputs_same_key(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"content")
        parts = ("v", 1, b"raw", np.arange(6, dtype=np.int64).reshape(2, 3), tmp_path / "f")
        key = cache_key(*parts)
        assert key == cache_key(*parts) and len(key) == 40 and int(key, 16) >= 0

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            (("ab", "c"), ("a", "bc")),  # framing: parts do not run into each other
            (("x", 1), ("x", 2)),
            (("x", True), ("x", False)),
            (("1",), (1,)),  # the type counts
            ((np.zeros(4, np.uint8),), (np.zeros(4, np.int8),)),  # the dtype counts
            ((np.zeros((2, 2), np.uint8),), (np.zeros(4, np.uint8),)),  # the shape counts
            ((np.zeros(4, np.uint8),), (np.array([0, 0, 0, 1], np.uint8),)),
            ((np.zeros((0, 48, 48), np.uint8),), (np.zeros((1, 48, 48), np.uint8),)),
        ],
    )
    def test_key_changes_with_inputs(self, a: tuple, b: tuple) -> None:
        assert cache_key(*a) != cache_key(*b)

    def test_a_path_counts_by_its_content(self, tmp_path: Path) -> None:
        one, two = tmp_path / "one", tmp_path / "two"
        one.write_bytes(b"same")
        two.write_bytes(b"same")
        assert cache_key(one) == cache_key(two)
        two.write_bytes(b"other")
        assert cache_key(one) != cache_key(two)

    def test_unknown_part_type(self) -> None:
        with pytest.raises(TypeError, match="got float"):
            cache_key(1.5)


class TestCached:
    def test_second_call_reads_the_entry(self, frame: pd.DataFrame) -> None:
        compute = Counter(frame)
        first, from_cache = run(compute)
        assert not from_cache and compute.calls == 1
        again, from_cache = run(compute)
        assert from_cache and compute.calls == 1
        pd.testing.assert_frame_equal(again, first)
        folder = default_cache_dir() / "test"
        assert [p.name for p in folder.iterdir()] == ["key.parquet"]  # no temporary file left

    def test_use_cache_false_neither_reads_nor_writes(self, frame: pd.DataFrame) -> None:
        compute = Counter(frame)
        run(compute)
        _, from_cache = run(compute, use_cache=False)
        assert not from_cache and compute.calls == 2
        entry_path("test", "key", suffix=".parquet").unlink()
        run(compute, use_cache=False)
        assert not entry_path("test", "key", suffix=".parquet").exists()

    @pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
    def test_corrupt_entry_is_recomputed_and_replaced(self, frame: pd.DataFrame, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
        compute = Counter(frame)
        run(compute)
        entry = entry_path("test", "key", suffix=".parquet")
        data = entry.read_bytes()
        entry.write_bytes({"garbage": b"not parquet", "truncated": data[: len(data) // 2], "empty": b""}[damage])
        value, from_cache = run(compute)
        assert not from_cache and compute.calls == 2
        pd.testing.assert_frame_equal(value, frame)
        assert "damaged cache entry" in caplog.text
        assert entry.read_bytes() == data  # written again
        assert run(compute)[1]

    def test_entry_that_does_not_fit_is_recomputed(self, frame: pd.DataFrame) -> None:
        compute = Counter(frame)
        run(compute)
        kwargs = {"suffix": ".parquet", "write": write_frame}
        _, from_cache = cached("test", "key", compute, read=lambda path: None, **kwargs)
        assert not from_cache and compute.calls == 2

    def test_file_where_the_folder_should_be(self, tmp_path: Path, frame: pd.DataFrame) -> None:
        blocker = tmp_path / "cache"
        blocker.write_text("a file, not a folder")
        compute = Counter(frame)
        for _ in range(2):
            with pytest.warns(UserWarning, match="could not write the cache entry"):
                value, from_cache = run(compute, folder=blocker)
            assert not from_cache
            pd.testing.assert_frame_equal(value, frame)
        assert compute.calls == 2 and blocker.read_text() == "a file, not a folder"

    def test_read_only_folder(self, tmp_path: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "test").mkdir()

        def refuse(*args, **kwargs):  # as creating a file in a read-only folder does (root may write anyway)
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("fer_core._io._new_temp_file", refuse)
        with pytest.warns(UserWarning, match="Permission denied"):
            value, from_cache = run(Counter(frame), folder=tmp_path)
        assert not from_cache and list((tmp_path / "test").iterdir()) == []
        pd.testing.assert_frame_equal(value, frame)


@needs_shared
class TestDataSetEntries:
    def test_damaged_table_entry_is_read_again(self, tmp_path: Path, val_faces) -> None:
        images, labels, _ = val_faces
        n = len(images)
        frame = build_frame([f"f{i}" for i in range(n)], labels, ["val"] * n, [f"f{i}.png" for i in range(n)])
        source = save_table(FaceTable(images=images, frame=frame, name="t"), tmp_path / "faces.parquet")
        first = load_faces(source, cache_dir=tmp_path / "cache", progress=False)
        (entry,) = (tmp_path / "cache" / "datasets").glob("*.npy")
        entry.write_bytes(entry.read_bytes()[:1000])
        again = load_faces(source, cache_dir=tmp_path / "cache", progress=False)
        np.testing.assert_array_equal(again.images, first.images)
        pd.testing.assert_frame_equal(again.frame, first.frame)
        assert again.name == first.name and again.skipped == first.skipped
