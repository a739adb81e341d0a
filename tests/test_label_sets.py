"""fer_core.label_sets (sample_id,label files) and ``python -m annotate.ferplus``, which writes the FER+ ones."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annotate.ferplus import main as ferplus_main
from fer_core._validation import FERError
from fer_core.config import SAMPLE_PATH
from fer_core.datasets import FaceTable, load_faces
from fer_core.label_sets import load_label_set, read_label_file, relabel_table, write_label_file
from fer_core.labels import EMOTIONS
from tests.conftest import REPO, SHARED_FER, needs_shared

VOTES = REPO.parent / "shared" / "ferplus" / "fer2013_votes.csv"
#: FER+ vote column -> FER2013 emotion (contempt, unknown and NF are none of the seven).
FERPLUS_TO_EMOTION = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
                      "anger": "angry", "disgust": "disgust", "fear": "fear"}
FERPLUS_ORDER = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                 "NF"]


@pytest.fixture(scope="module")
def table() -> FaceTable:
    """The bundled sample: 350 real FER2013 training faces."""
    return load_faces(SAMPLE_PATH, progress=False)


def _write(path: Path, rows: list[tuple[str, str]], header: str = "sample_id,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


class TestReadLabelFile:
    def test_names_in_any_spelling_empty_labels_and_faces_without_a_row(self, table: FaceTable, tmp_path: Path) -> None:
        ids = table.frame["sample_id"].astype(str).tolist()
        file = _write(tmp_path / "l.csv", [(ids[0], "Anger"), (ids[1], "happiness"), (ids[2], "3"), (ids[3], " sad "),
                                           (ids[4], "")])
        labels = read_label_file(file, table)
        assert labels.shape == (len(table),) and labels.dtype == np.int64
        assert labels[:5].tolist() == [0, 3, 3, 4, -1]
        assert (labels[5:] == -1).all()  # no row: no label

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_written_files_read_back(self, table: FaceTable, tmp_path: Path, suffix: str) -> None:
        labels = (table.labels + 1) % 7
        labels[::4] = -1
        before = labels.copy()
        file = write_label_file(tmp_path / f"l{suffix}", table.frame["sample_id"].tolist(), labels)
        np.testing.assert_array_equal(read_label_file(file, table), labels)
        np.testing.assert_array_equal(labels, before)  # input untouched
        found = load_label_set(file, table)
        assert found.name == "l" and found.summary()["left_out"] == int((labels < 0).sum())
        assert load_label_set(file, table, name="ferplus").name == "ferplus"

    @pytest.mark.parametrize(("rows", "message"), [
        ([("ID0", "contempt"), ("ID1", "happy"), ("ID2", "unknown")],
         r"line 2: unknown emotion 'contempt'; line 4: unknown emotion 'unknown'"),
        ([("ID0", "happy"), ("ID1", "sad"), ("ID0", "sad")], r"line 4: sample_id '.*' repeats an earlier row"),
        ([("", "happy"), ("ID1", "sad")], r"line 2: empty sample_id"),
    ])
    def test_bad_rows_are_named_by_line(self, table: FaceTable, tmp_path: Path, rows: list, message: str) -> None:
        ids = table.frame["sample_id"].astype(str).tolist()
        rows = [(ids[int(a[2:])] if a else a, b) for a, b in rows]
        with pytest.raises(FERError, match=message):
            read_label_file(_write(tmp_path / "bad.csv", rows), table)

    def test_missing_columns_and_files_are_refused(self, table: FaceTable, tmp_path: Path) -> None:
        with pytest.raises(FERError, match="lacks the column.s. label"):
            read_label_file(_write(tmp_path / "c.csv", [("a", "happy")], header="sample_id,emotion"), table)
        with pytest.raises(FERError, match="does not exist"):
            read_label_file(tmp_path / "none.csv", table)

    def test_rows_of_other_faces_are_ignored_with_a_count(self, table: FaceTable, tmp_path: Path) -> None:
        ids = table.frame["sample_id"].astype(str).tolist()
        file = _write(tmp_path / "l.csv", [(ids[0], "fear"), ("val/angry/PublicTest_1", "sad"),
                                           ("val/sad/PublicTest_2", "")])
        with pytest.warns(UserWarning, match="2 rows of label file 'l.csv' name faces outside"):
            labels = read_label_file(file, table)
        assert labels[0] == EMOTIONS.index("fear") and (labels[1:] == -1).all()

    def test_a_file_for_other_faces_altogether_is_an_error(self, table: FaceTable, tmp_path: Path) -> None:
        file = _write(tmp_path / "l.csv", [("val/angry/PublicTest_1", "sad")])
        with pytest.raises(FERError, match="none of the 1 sample ids .* is a face of 'fer2013_sample'"):
            read_label_file(file, table)


class TestRelabelTable:
    def test_keeps_the_labelled_faces_with_their_new_labels(self, table: FaceTable) -> None:
        labels = np.full(len(table), -1)
        labels[[3, 10, 200]] = [6, 0, 2]
        before = table.frame.copy()
        kept = relabel_table(table, labels)
        assert len(kept) == 3 and kept.labels.tolist() == [6, 0, 2]
        assert kept.frame["emotion_name"].astype(str).tolist() == ["neutral", "angry", "fear"]
        np.testing.assert_array_equal(kept.images, table.images[[3, 10, 200]])
        pd.testing.assert_frame_equal(table.frame, before)  # the table is untouched

    def test_write_refuses_ids_outside_the_seven(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="FER2013 ids 0-6 or -1"):
            write_label_file(tmp_path / "x.csv", ["a", "b"], np.array([0, 7]))


def _majority(counts: pd.Series) -> str:
    """The FER+ majority label as the FER+ paper defines it: the single most voted of the seven, else ''."""
    top = counts.max()
    winners = [c for c in FERPLUS_ORDER if counts[c] == top]
    return FERPLUS_TO_EMOTION.get(winners[0], "") if len(winners) == 1 else ""


needs_votes = pytest.mark.skipif(not VOTES.is_file(), reason="../shared/ferplus is not present")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A Kaggle-layout copy of 9 real val faces per class plus 7 without a FER+ majority, and their vote rows."""
    if not SHARED_FER.is_dir() or not VOTES.is_file():
        pytest.skip("../shared/fer2013 or ../shared/ferplus is not present")
    root = tmp_path_factory.mktemp("ferplus_labels") / "fer_small"
    votes = pd.read_csv(VOTES)
    val = votes[votes["path"].str.startswith("val/")]
    picked = val.groupby(val["path"].str.split("/").str[1], group_keys=False).head(9)
    none = val[[_majority(r) == "" for _, r in val[FERPLUS_ORDER].iterrows()]]
    picked = pd.concat([picked, none[~none.index.isin(picked.index)].head(7)])
    for rel in picked["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FER / rel, root / rel)
    return root, picked


@needs_shared
@needs_votes
class TestFerplusCommand:

    def test_writes_the_majority_of_each_face_the_votes_cover(self, small_set, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
        root, picked = small_set
        # A vote table without the last three faces: they get no row.
        votes = tmp_path / "votes.csv"
        pd.read_csv(VOTES).loc[lambda f: f["path"].isin(picked["path"].iloc[:-3])].to_csv(votes, index=False)
        out = tmp_path / "ferplus.csv"
        assert ferplus_main([str(votes), "--data", str(root), "--out", str(out)]) == 0
        assert "3 faces of the data have no votes" in capsys.readouterr().out
        written = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert list(written.columns) == ["sample_id", "label"]
        expected = {Path(p).with_suffix("").as_posix(): _majority(r[FERPLUS_ORDER])
                    for p, (_, r) in zip(picked["path"].iloc[:-3], picked.iloc[:-3].iterrows())}
        assert dict(zip(written["sample_id"], written["label"])) == expected
        assert (written["label"] == "").sum() >= 4 and (written["label"] != "").sum() >= 50
        # What fer_core reads back: the same labels, aligned with the faces as loaded.
        table = load_faces(root, use_cache=False, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every row is a face of the data
            labels = read_label_file(out, table)
        by_id = dict(zip(table.frame["sample_id"].astype(str), labels))
        assert {s: (EMOTIONS[by_id[s]] if by_id[s] >= 0 else "") for s in expected} == expected

    def test_one_split_folder_with_the_votes_root(self, small_set, tmp_path: Path) -> None:
        root, picked = small_set
        out = tmp_path / "val.csv"
        assert ferplus_main([str(VOTES), "--data", str(root / "val"), "--votes-root", str(root),
                             "--out", str(out)]) == 0
        assert len(pd.read_csv(out)) == len(picked)

    def test_data_the_votes_do_not_cover_is_an_error(self, small_set, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
        root, picked = small_set
        votes = tmp_path / "votes.csv"
        pd.read_csv(VOTES).loc[lambda f: f["path"].str.startswith("train/")].head(50).to_csv(votes, index=False)
        assert ferplus_main([str(votes), "--data", str(root), "--out", str(tmp_path / "x.csv")]) == 2
        assert "no face of" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
