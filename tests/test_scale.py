"""The large-data path gives the in-memory path's answers: memory-mapped faces, streamed passes, multi-index search.

A few thousand faces are made from the bundled real faces with :mod:`tools.make_large` (repeated,
lightly transformed) in ``tmp_path``, as Parquet shards and as a folder tree; the in-memory limit
of :mod:`fer_core.datasets._stream` is lowered so that these small data sets take the path a
million faces take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_core._cache import cache_key
from fer_core.browse import SORTS, BrowseQuery, enrich, filter_faces
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import FaceTable, _stream, load_faces
from fer_core.datasets._stream import FaceWriter, is_mapped, iter_batches
from fer_core.duplicates import _close_pairs, find_duplicates, perceptual_hashes
from fer_core.labels import EMOTIONS
from fer_core.quality import score_faces
from tools.make_large import make_faces, write_folder, write_parquet

FACES = 3000


@pytest.fixture(scope="module")
def source() -> FaceTable:
    """The bundled real faces (a few hundred), pixels in memory."""
    table = load_faces(SAMPLE_PATH, use_cache=False, progress=False)
    return FaceTable(images=np.ascontiguousarray(table.images), frame=table.frame, name="sample")


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory, source: FaceTable) -> dict[str, Path]:
    """The same 3,000 made faces as Parquet shards and as a folder tree."""
    root = tmp_path_factory.mktemp("large")
    (root / "parquet").mkdir()
    write_parquet(source, FACES, root / "parquet", seed=0)
    write_folder(source, FACES, root / "folder", seed=0)
    return {"parquet": root / "parquet", "folder": root / "folder"}


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faces over 1 MB (about 450) go to a memory-mapped file, as a million faces do."""
    monkeypatch.setattr(_stream, "IN_MEMORY_BYTES", 1 << 20)


def _in_memory(table: FaceTable) -> FaceTable:
    return FaceTable(images=np.array(table.images), frame=table.frame, name=table.name, skipped=table.skipped)


class TestMakeLarge:
    def test_copies_are_seeded_and_the_first_is_the_real_face(self, source: FaceTable) -> None:
        m = len(source)
        index = np.arange(0, 3 * m, 7)
        first, again = make_faces(source.images, index, seed=0), make_faces(source.images, index, seed=0)
        np.testing.assert_array_equal(first, again)
        real = index < m
        np.testing.assert_array_equal(first[real], source.images[index[real]])
        assert not np.array_equal(make_faces(source.images, index, seed=1)[~real], first[~real])
        changed = np.abs(first[~real].astype(int) - source.images[index[~real] % m].astype(int)).mean(axis=(1, 2))
        assert (changed > 0).all() and np.median(changed) < 40  # light changes, never the same face

    def test_both_forms_hold_the_same_faces(self, large: dict[str, Path]) -> None:
        parquet = load_faces(large["parquet"], use_cache=False, progress=False)
        folder = load_faces(large["folder"], use_cache=False, progress=False)
        assert len(parquet) == len(folder) == FACES
        digest = {name: sorted(face.tobytes() for face in t.images) for name, t in (("p", parquet), ("f", folder))}
        assert digest["p"] == digest["f"]
        assert parquet.frame["sample_id"].is_unique and parquet.frame["sample_id"].str.contains("~c").any()

    def test_copies_are_near_duplicates_but_not_all(self, large: dict[str, Path]) -> None:
        table = load_faces(large["parquet"], use_cache=False, progress=False)
        summary = find_duplicates(table, use_cache=False).summary()
        assert summary["near_pairs"] > 100 and summary["mirrored_pairs"] > 10
        assert summary["faces_in_groups"] < FACES  # a repeat is not always found


@pytest.mark.parametrize("form", ["parquet", "folder"])
class TestMemoryMappedPath:
    def test_load_is_mapped_and_equal(self, large: dict[str, Path], form: str, small_limit: None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
        mapped = load_faces(large[form], use_cache=False, progress=False)
        assert is_mapped(mapped.images) and not mapped.images.flags.writeable
        monkeypatch.setattr(_stream, "IN_MEMORY_BYTES", 1 << 30)
        plain = load_faces(large[form], use_cache=False, progress=False)
        assert not is_mapped(plain.images)
        np.testing.assert_array_equal(mapped.images, plain.images)
        pd.testing.assert_frame_equal(mapped.frame, plain.frame)

    def test_cache_entry_is_read_mapped(self, large: dict[str, Path], form: str, small_limit: None,
                                        tmp_path: Path) -> None:
        first = load_faces(large[form], cache_dir=tmp_path, progress=False)
        again = load_faces(large[form], cache_dir=tmp_path, progress=False)
        (entry,) = (tmp_path / "datasets").glob("*.npy")
        assert is_mapped(again.images)
        np.testing.assert_array_equal(np.load(entry), first.images)  # the entry is a plain .npy of the faces
        np.testing.assert_array_equal(again.images, first.images)
        pd.testing.assert_frame_equal(again.frame, first.frame)
        assert again.name == first.name and again.skipped == first.skipped


@pytest.fixture(scope="module")
def tables(large: dict[str, Path]) -> tuple[FaceTable, FaceTable]:
    """The Parquet faces memory-mapped (through a writer with a 1 MB limit) and in memory."""
    plain = load_faces(large["parquet"], use_cache=False, progress=False)
    writer = FaceWriter(in_memory_bytes=1 << 20)
    for start in range(0, len(plain), 700):
        writer.append(plain.images[start : start + 700])
    mapped = FaceTable(images=writer.finish(), frame=plain.frame, name=plain.name)
    assert is_mapped(mapped.images)
    return mapped, plain


class TestStreamedAnswers:

    def test_batches_cover_every_face_once(self, tables: tuple[FaceTable, FaceTable]) -> None:
        mapped, plain = tables
        walked = np.concatenate([np.array(batch) for _, batch in iter_batches(mapped.images, size=999)])
        np.testing.assert_array_equal(walked, plain.images)

    def test_quality_scores_are_equal(self, tables: tuple[FaceTable, FaceTable]) -> None:
        mapped, plain = tables
        pd.testing.assert_frame_equal(score_faces(mapped.images, labels=mapped.labels),
                                      score_faces(plain.images, labels=plain.labels))

    def test_cache_keys_are_equal(self, tables: tuple[FaceTable, FaceTable]) -> None:
        mapped, plain = tables
        assert cache_key("x", mapped.images) == cache_key("x", plain.images)

    def test_duplicate_pairs_are_equal(self, tables: tuple[FaceTable, FaceTable]) -> None:
        mapped, plain = tables
        pd.testing.assert_frame_equal(find_duplicates(mapped, use_cache=False).pairs,
                                      find_duplicates(plain, use_cache=False).pairs)

    @pytest.mark.parametrize("max_distance", [2, 4, 6])
    def test_multi_index_search_finds_the_band_search_pairs(self, tables: tuple[FaceTable, FaceTable],
                                                            max_distance: int) -> None:
        hashes, mirrored = perceptual_hashes(tables[1].images)
        bands = _close_pairs(hashes, mirrored, max_distance, method="bands")
        mih = _close_pairs(hashes, mirrored, max_distance, method="mih")
        for a, b in zip(bands, mih):
            assert len(a) > 0
            np.testing.assert_array_equal(a[np.lexsort((a[:, 1], a[:, 0]))], b[np.lexsort((b[:, 1], b[:, 0]))])

    def test_browse_filters_are_equal(self, tables: tuple[FaceTable, FaceTable]) -> None:
        mapped, plain = tables
        frames = [enrich(t, model=False, use_cache=False).frame for t in (mapped, plain)]
        pd.testing.assert_frame_equal(*frames)
        queries = [BrowseQuery(), BrowseQuery(split="train", emotions=(EMOTIONS[3],), quality=(0.3, 0.9)),
                   BrowseQuery(duplicates="duplicated", sort=SORTS[1]), BrowseQuery(duplicates="unique", sort="random"),
                   BrowseQuery(components={"focus_score": (0.0, 0.5)}, sort=SORTS[-1])]
        for query in queries:
            np.testing.assert_array_equal(filter_faces(frames[0], query), filter_faces(frames[1], query))
