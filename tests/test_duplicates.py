"""Duplicate faces: a known table of real FER2013 faces with planted exact, near and mirrored
copies (exact counts of pairs, groups, cross-split pairs and label disagreements), the hash
against imagehash, the two pair searches, the cache and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import needs_shared
from fer_core import duplicates
from fer_core._validation import FERError
from fer_core.config import default_cache_dir
from fer_core.datasets import FaceTable
from fer_core.datasets._table import build_frame
from fer_core.duplicates import (
    FACE_COLUMNS,
    MAX_DISTANCE,
    PAIR_COLUMNS,
    _close_pairs,
    _groups,
    find_duplicates,
    get_args_parser,
    main,
    perceptual_hashes,
    pixel_digests,
)
from fer_core.labels import EMOTIONS

REAL = 35  # the val_faces fixture: the first 5 files of each emotion of ../shared/fer2013/val


def _noisy(face: np.ndarray) -> np.ndarray:
    """``face`` with +/-2 grey levels of noise on every pixel."""
    rng = np.random.default_rng(0)
    return np.clip(face.astype(np.int16) + rng.integers(-2, 3, face.shape), 0, 255).astype(np.uint8)


def _jpeg(face: np.ndarray) -> np.ndarray:
    """``face`` after a JPEG round trip at quality 90."""
    ok, buffer = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)


def _mirror(face: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(face[:, ::-1])


def _other(label: int) -> int:
    return (int(label) + 1) % len(EMOTIONS)


@pytest.fixture(scope="module")
def known(val_faces) -> FaceTable:
    """35 distinct real faces (rows 0-34, all train), then 7 planted copies (rows 35-41).

    ==== ============================= ===== ===========
    row  copy of                       split label
    ==== ============================= ===== ===========
    35   face 0, exact                 val   same
    36   face 0, exact                 train same
    37   face 1, exact                 train other
    38   face 2, +/-2 grey levels      val   same
    39   face 3, JPEG quality 90       train other
    40   face 4, mirrored              val   same
    41   face 5, mirrored              train other
    ==== ============================= ===== ===========
    """
    images, labels, _ = val_faces
    copies = [
        (images[0], "val", labels[0]),
        (images[0], "train", labels[0]),
        (images[1], "train", _other(labels[1])),
        (_noisy(images[2]), "val", labels[2]),
        (_jpeg(images[3]), "train", _other(labels[3])),
        (_mirror(images[4]), "val", labels[4]),
        (_mirror(images[5]), "train", _other(labels[5])),
    ]
    all_images = np.concatenate([images, np.stack([c[0] for c in copies])])
    all_labels = [*map(int, labels), *(int(c[2]) for c in copies)]
    splits = ["train"] * REAL + [c[1] for c in copies]
    ids = [f"real{i}" for i in range(REAL)] + [f"copy{i}" for i in range(REAL, REAL + len(copies))]
    frame = build_frame(ids, all_labels, splits, ids)
    return FaceTable(images=all_images, frame=frame, name="known")


#: (row_a, row_b) -> kind of every pair the known table holds.
EXPECTED_PAIRS = {
    (0, 35): "exact",
    (0, 36): "exact",
    (35, 36): "exact",
    (1, 37): "exact",
    (2, 38): "near",
    (3, 39): "near",
    (4, 40): "mirrored",
    (5, 41): "mirrored",
}


@needs_shared
class TestKnownTable:
    def test_planted_copies_are_what_they_claim(self, known) -> None:
        images = known.images
        assert np.array_equal(images[35], images[0]) and np.array_equal(images[37], images[1])
        for row, real in ((38, 2), (39, 3)):  # altered: not exact, yet the same face
            assert not np.array_equal(images[row], images[real])
            assert np.abs(images[row].astype(int) - images[real]).mean() < 3
        assert np.abs(images[38].astype(int) - images[2]).max() == 2

    def test_exact_pairs_kinds_and_distances(self, known) -> None:
        report = find_duplicates(known, use_cache=False)
        pairs = report.pairs
        assert tuple(pairs.columns) == PAIR_COLUMNS
        found = {(int(a), int(b)): kind for a, b, kind in pairs[["row_a", "row_b", "kind"]].itertuples(index=False)}
        assert found == EXPECTED_PAIRS  # distinct real faces are never paired
        by_kind = pairs.groupby("kind")["distance"]
        assert (by_kind.max() <= MAX_DISTANCE).all()
        assert pairs.loc[pairs["kind"] == "exact", "distance"].eq(0).all()
        # A mirror image hashes exactly as the flip of the original.
        assert pairs.loc[pairs["kind"] == "mirrored", "distance"].eq(0).all()
        assert list(pairs["sample_id_a"].head(2)) == ["real0", "real0"]
        assert list(pairs["sample_id_b"].head(2)) == ["copy35", "copy36"]

    def test_cross_split_and_label_flags(self, known) -> None:
        pairs = find_duplicates(known, use_cache=False).pairs.set_index(["row_a", "row_b"])
        cross = {key for key, value in pairs["cross_split"].items() if value}
        assert cross == {(0, 35), (35, 36), (2, 38), (4, 40)}
        disagree = {key for key, value in pairs["labels_agree"].items() if not value}
        assert disagree == {(1, 37), (3, 39), (5, 41)}
        assert pairs.loc[(0, 35), ["split_a", "split_b"]].tolist() == ["train", "val"]
        assert pairs.loc[(1, 37), "label_b"] == _other(pairs.loc[(1, 37), "label_a"])

    def test_groups_of_faces(self, known) -> None:
        faces = find_duplicates(known, use_cache=False).faces
        assert tuple(faces.columns) == FACE_COLUMNS
        assert len(faces) == len(known)
        assert list(faces["sample_id"]) == list(known.frame["sample_id"])
        # Groups numbered by their first face: real faces 0-5 head groups 0-5.
        assert faces["dup_group"].tolist() == [0, 1, 2, 3, 4, 5] + [-1] * (REAL - 6) + [0, 0, 1, 2, 3, 4, 5]
        assert faces["dup_group_size"].tolist() == [3, 2, 2, 2, 2, 2] + [1] * (REAL - 6) + [3, 3, 2, 2, 2, 2, 2]
        kinds = ["exact", "exact", "near", "near", "mirrored", "mirrored"]
        assert faces["dup_kind"].tolist() == kinds + [""] * (REAL - 6) + ["exact", "exact", *kinds[1:]]
        cross_rows = set(np.flatnonzero(faces["cross_split"].to_numpy()))
        assert cross_rows == {0, 35, 36, 2, 38, 4, 40}
        assert set(np.flatnonzero(~faces["group_labels_agree"].to_numpy())) == {1, 37, 3, 39, 5, 41}

    def test_summary_counts(self, known) -> None:
        summary = find_duplicates(known, use_cache=False).summary()
        assert summary == {
            "faces": 42,
            "max_distance": MAX_DISTANCE,
            "mirrors": True,
            "pairs": 8,
            "exact_pairs": 4,
            "near_pairs": 2,
            "mirrored_pairs": 2,
            "groups": 6,
            "faces_in_groups": 13,
            "largest_group": 3,
            "cross_split_pairs": 4,
            "cross_split_faces": 7,
            "cross_split": {"train-val": {"exact": 2, "near": 1, "mirrored": 1, "total": 4}},
            "label_disagreements": {"exact": 1, "near": 1, "mirrored": 1, "total": 3},
            "groups_with_label_disagreement": 3,
        }
        json.dumps(summary)  # plain Python values

    def test_without_mirrors_and_at_distance_zero(self, known) -> None:
        no_mirrors = find_duplicates(known, mirrors=False, use_cache=False)
        assert no_mirrors.summary()["mirrored_pairs"] == 0
        assert set(no_mirrors.pairs["kind"]) == {"exact", "near"}
        assert no_mirrors.faces.loc[[4, 40], "dup_group"].tolist() == [-1, -1]
        strict = find_duplicates(known, max_distance=0, use_cache=False)
        assert (strict.pairs["distance"] == 0).all()
        assert strict.summary()["exact_pairs"] == 4  # exact copies are found at any distance

    def test_bad_arguments(self, known) -> None:
        for bad in (-1, 65, 2.5, True, "4"):
            with pytest.raises(FERError, match="max_distance"):
                find_duplicates(known, max_distance=bad, use_cache=False)
        with pytest.raises(TypeError, match="FaceTable"):
            find_duplicates(known.images)


class TestHashes:
    @needs_shared
    def test_same_bits_as_imagehash_for_faces_and_mirrors(self, val_faces) -> None:
        images = val_faces[0]
        hashes, mirrored = perceptual_hashes(images)
        assert hashes.dtype == mirrored.dtype == np.uint64 and hashes.shape == (len(images),)

        def reference(face: np.ndarray) -> np.uint64:
            bits = imagehash.phash(Image.fromarray(face)).hash.ravel()
            return np.packbits(bits).view(">u8")[0]

        assert [reference(face) for face in images] == hashes.tolist()
        assert [reference(_mirror(face)) for face in images] == mirrored.tolist()
        assert perceptual_hashes(images[0])[0].tolist() == hashes[:1].tolist()  # one face accepted

    @needs_shared
    def test_digests_equal_only_for_identical_pixels(self, known) -> None:
        digests = pixel_digests(known.images)
        assert digests[0] == digests[35] == digests[36] and digests[1] == digests[37]
        assert len(set(digests.tolist())) == len(known) - 3

    def test_empty_table(self) -> None:
        empty = FaceTable(images=np.zeros((0, 48, 48), np.uint8), frame=build_frame([], [], [], []))
        report = find_duplicates(empty, use_cache=False)
        assert report.pairs.empty and report.faces.empty
        summary = report.summary()
        assert summary["pairs"] == summary["groups"] == summary["largest_group"] == 0
        assert summary["cross_split"] == {}

    @pytest.mark.parametrize("max_distance", [0, 1, 2, 4, 6, 9])
    def test_bands_mih_and_brute_force_find_the_same_pairs(self, max_distance: int) -> None:
        rng = np.random.default_rng(max_distance)
        base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)

        def flipped(hashes: np.ndarray) -> np.ndarray:  # each hash with 0 to 8 random bits flipped
            masks = [np.bitwise_or.reduce(np.uint64(1) << rng.choice(64, k, replace=False).astype(np.uint64))
                     if k else np.uint64(0) for k in rng.integers(0, 9, len(hashes))]
            return hashes ^ np.array(masks, dtype=np.uint64)

        # The "mirror image" of a hash: a fixed mask XOR-ed in, so both directions of a pair agree.
        mask = rng.integers(0, 2**63, dtype=np.int64).astype(np.uint64)
        near = flipped(base[rng.integers(0, 300, 200)])
        mirror_copies = flipped(base[rng.integers(0, 300, 200)] ^ mask)
        hashes = rng.permutation(np.concatenate([base, near, mirror_copies]))
        mirrored = hashes ^ mask
        bands = _close_pairs(hashes, mirrored, max_distance, method="bands")
        brute = _close_pairs(hashes, mirrored, max_distance, method="brute")
        assert _close_pairs(hashes, mirrored, max_distance)[0].shape == brute[0].shape  # auto
        mih = _close_pairs(hashes, mirrored, max_distance, method="mih")
        for found_bands, found_brute in [*zip(bands, brute), *zip(mih, brute)]:
            assert len(found_bands) >= 10

            def ordered(rows: np.ndarray) -> np.ndarray:
                return rows[np.lexsort((rows[:, 1], rows[:, 0]))]

            assert np.array_equal(ordered(found_bands), ordered(found_brute))
            assert (found_bands[:, 0] < found_bands[:, 1]).all() and (found_bands[:, 2] <= max_distance).all()


class TestGroups:
    @staticmethod
    def reference(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Groups by a plain union-find, one pair at a time: 0, 1, ... by first face, -1 alone."""
        parent = list(range(n))

        def root(x: int) -> int:
            while parent[x] != x:
                x = parent[x]
            return x

        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = root(x), root(y)
            parent[max(rx, ry)] = min(rx, ry)
        roots = np.array([root(x) for x in range(n)])
        sizes = np.bincount(roots, minlength=n)
        firsts = {r: k for k, r in enumerate(sorted({r for r in roots.tolist() if sizes[r] > 1}))}
        return np.array([firsts.get(r, -1) if sizes[r] > 1 else -1 for r in roots.tolist()])

    @pytest.mark.parametrize("pairs", [0, 50, 400, 3000])
    def test_whole_array_union_find_matches_one_pair_at_a_time(self, pairs: int) -> None:
        rng = np.random.default_rng(pairs)
        n = 1000
        a, b = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
        a, b = np.minimum(a, b)[a != b], np.maximum(a, b)[a != b]
        chain = np.arange(500, 999)  # a long chain, as copies of copies make
        a, b = np.concatenate([a, chain]), np.concatenate([b, chain + 1])
        np.testing.assert_array_equal(_groups(n, a, b), self.reference(n, a, b))


@needs_shared
class TestCache:
    def test_second_call_reads_the_cache(self, known, monkeypatch) -> None:
        first = find_duplicates(known)
        assert not first.from_cache
        entries = list((default_cache_dir() / "duplicates").glob("*.parquet"))
        assert len(entries) == 1

        def fail(*args, **kwargs):
            raise AssertionError("hashed again instead of reading the cache")

        monkeypatch.setattr(duplicates, "perceptual_hashes", fail)
        again = find_duplicates(known)
        assert again.from_cache
        pd.testing.assert_frame_equal(again.pairs, first.pairs)
        pd.testing.assert_frame_equal(again.faces, first.faces)
        # Another threshold, mirrors off or no cache: computed again.
        for kwargs in ({"max_distance": 2}, {"mirrors": False}, {"use_cache": False}):
            with pytest.raises(AssertionError, match="hashed again"):
                find_duplicates(known, **kwargs)

    def test_relabelled_faces_reuse_the_entry_with_their_labels(self, known, monkeypatch) -> None:
        find_duplicates(known)
        frame = known.frame.copy()
        frame.loc[37, "emotion"] = frame.loc[1, "emotion"]  # the exact copy now agrees
        relabelled = FaceTable(images=known.images, frame=frame, name="relabelled")
        monkeypatch.setattr(duplicates, "perceptual_hashes", lambda *a: pytest.fail("not from the cache"))
        report = find_duplicates(relabelled)
        assert report.from_cache
        assert report.summary()["label_disagreements"] == {"exact": 0, "near": 1, "mirrored": 1, "total": 2}

    def test_damaged_entry_is_recomputed(self, known) -> None:
        find_duplicates(known)
        entry = next((default_cache_dir() / "duplicates").glob("*.parquet"))
        entry.write_bytes(b"not parquet")
        report = find_duplicates(known)
        assert not report.from_cache and report.summary()["pairs"] == 8
        assert find_duplicates(known).from_cache  # written again


@needs_shared
class TestCommandLine:
    @pytest.fixture()
    def tree(self, tmp_path: Path, val_faces) -> Path:
        """A tiny Kaggle tree: face 0 in train and (copied) in val, face 1 in train and mirrored in
        val with another label, face 2 alone."""
        images, labels, _ = val_faces
        root = tmp_path / "data"
        files = [
            ("train", labels[0], "a", images[0]),
            ("val", labels[0], "b", images[0]),
            ("train", labels[1], "c", images[1]),
            ("val", _other(labels[1]), "d", _mirror(images[1])),
            ("train", labels[2], "e", images[2]),
        ]
        for split, label, name, face in files:
            folder = root / split / EMOTIONS[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(face).save(folder / f"{name}.png")
        return root

    def test_prints_summary_and_writes_json_and_pairs(self, tree: Path, tmp_path: Path, capsys) -> None:
        out_json, out_csv = tmp_path / "summary.json", tmp_path / "pairs.csv"
        args = get_args_parser().parse_args([str(tree), "--json", str(out_json), "--pairs", str(out_csv)])
        assert main(args) == 0
        text = capsys.readouterr().out
        assert "5 faces" in text
        assert "2 pairs (1 exact, 0 near, 1 mirrored)" in text
        assert "cross-split duplicates: 2 pairs, 4 faces" in text
        assert "train-val: 2 pairs" in text
        assert "label disagreements: 1 pairs" in text
        summary = json.loads(out_json.read_text())
        assert summary["cross_split"] == {"train-val": {"exact": 1, "near": 0, "mirrored": 1, "total": 2}}
        pairs = pd.read_csv(out_csv)
        assert sorted(pairs["kind"]) == ["exact", "mirrored"] and pairs["cross_split"].all()

        assert main(get_args_parser().parse_args([str(tree)])) == 0
        assert "read from the cache" in capsys.readouterr().out
        parquet = tmp_path / "pairs.parquet"
        assert main(get_args_parser().parse_args([str(tree), "--no-mirrors", "--pairs", str(parquet)])) == 0
        assert "cross-split duplicates: 1 pairs" in capsys.readouterr().out
        assert len(pd.read_parquet(parquet)) == 1

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ([], "not found"),
            (["--max-distance", "70"], "max_distance"),
            (["--pairs", "pairs.txt"], ".csv or .parquet"),
        ],
    )
    def test_errors_exit_2(self, tree: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
        data = str(tmp_path / "missing") if not extra else str(tree)
        extra = [str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
        assert main(get_args_parser().parse_args([data, *extra])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
