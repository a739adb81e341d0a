"""annotate.import_votes: FER+ votes of real shared faces into a real store, and back out.

The import, its all-or-nothing refusal and the command run on both backends (``db_url``: a SQLite
file, then a database on the session's throwaway PostgreSQL server, tests/pg_server.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa

from annotate.errors import AnnotateError
from annotate.export import export_ferplus, ferplus_votes
from annotate.import_votes import import_votes, read_vote_table
from annotate.labels import ANSWER_NAMES, VOTE_LABELS
from annotate.store import open_store
from fer_core.datasets import load_faces
from tests.conftest import REPO, SHARED_FER, needs_shared

VOTES = REPO.parent / "shared" / "ferplus" / "fer2013_votes.csv"
pytestmark = [needs_shared, pytest.mark.skipif(not VOTES.is_file(), reason="../shared/ferplus is not present")]

# FER+ column -> this tool's vote label (contempt and unknown both mean "cannot name it").
FERPLUS_TO_LABEL = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
                    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "unsure",
                    "unknown": "unsure", "NF": "not_a_face"}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A Kaggle-layout copy of 12 real faces per class of the shared val split, and their FER+ rows."""
    root = tmp_path_factory.mktemp("ferplus_small") / "fer_small"
    votes = pd.read_csv(VOTES)
    val = votes[votes["path"].str.startswith("val/")]
    picked = val.groupby(val["path"].str.split("/").str[1], group_keys=False).head(12)
    # Keep faces with contempt / unknown / NF votes in the sample too.
    extra = val[(val[["contempt", "unknown", "NF"]].sum(axis=1) > 0) & ~val.index.isin(picked.index)].head(8)
    picked = pd.concat([picked, extra]).reset_index(drop=True)
    for rel in picked["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FER / rel, root / rel)
    return root, picked


def expected_counts(rows: pd.DataFrame) -> np.ndarray:
    out = np.zeros((len(rows), len(VOTE_LABELS)), dtype=np.int64)
    for column, label in FERPLUS_TO_LABEL.items():
        out[:, VOTE_LABELS.index(label)] += rows[column].to_numpy()
    return out


def run_import(db: Path | str, csv: Path, root: Path, **kw) -> object:
    with open_store(str(db)) as store:
        return import_votes(store, read_vote_table(csv), load_faces(root, use_cache=False, progress=False),
                            data_root=root, progress=False, **kw)


def test_import_records_each_vote_as_a_named_annotators_decision(tmp_path, db_url, small_set):
    root, rows = small_set
    csv = tmp_path / "votes.csv"
    rows.to_csv(csv, index=False)
    report = run_import(db_url, csv, root)
    assert report.faces == len(rows) and report.added == int(rows.iloc[:, 2:].to_numpy().sum())
    assert report.annotators[0] == "ferplus-1" and len(report.annotators) == rows.iloc[:, 2:].sum(axis=1).max()

    with open_store(db_url) as store:
        table = store.resolved_labels("fer_small").set_index("sample_id")
        sample_ids = [p.rsplit(".", 1)[0] for p in rows["path"]]
        got = table.loc[sample_ids, [f"votes_{label}" for label in VOTE_LABELS]].to_numpy()
        np.testing.assert_array_equal(got, expected_counts(rows))
        # The original label is the folder the face sits in.
        assert list(table.loc[sample_ids, "original_label"]) == [p.split("/")[1] for p in rows["path"]]
        # Fleiss' kappa of the store equals statsmodels' on the raw vote counts (10 raters per face).
        agreement = store.agreement("fer_small")
        counts = expected_counts(rows)
        full = counts[counts.sum(axis=1) == agreement.kappa_raters]
        assert agreement.kappa_faces == len(full)
        assert agreement.kappa == pytest.approx(fleiss_kappa(full, method="fleiss"))


def test_a_second_import_adds_nothing_and_a_changed_table_updates_the_votes(tmp_path, db_url, small_set):
    root, rows = small_set
    csv = tmp_path / "votes.csv"
    rows.to_csv(csv, index=False)
    db = db_url
    first = run_import(db, csv, root)
    again = run_import(db, csv, root)
    assert again.added == 0 and again.undone == 0 and again.unchanged == first.added

    # One face loses all of its votes but one (now happy); the others keep theirs.
    changed = rows.copy()
    vote_columns = list(FERPLUS_TO_LABEL)
    changed.loc[0, vote_columns] = 0
    changed.loc[0, "happiness"] = 1
    changed.to_csv(csv, index=False)
    update = run_import(db, csv, root)
    before = int(rows.loc[0, vote_columns].sum())
    assert update.undone == before - 1 and update.added <= 1
    with open_store(str(db)) as store:
        face = store.resolved_labels("fer_small").set_index("sample_id").loc[rows.loc[0, "path"].rsplit(".", 1)[0]]
        assert face["resolved_label"] == "happy" and face["n_annotators"] == 1


def test_the_tools_own_export_reads_back_identically(tmp_path, small_set):
    root, rows = small_set
    csv = tmp_path / "votes.csv"
    rows.to_csv(csv, index=False)
    run_import(tmp_path / "a.db", csv, root)
    for suffix in (".csv", ".parquet"):
        with open_store(str(tmp_path / "a.db")) as store:
            first = ferplus_votes(store, "fer_small")
            export_ferplus(store, tmp_path / f"export{suffix}", "fer_small")
        db = tmp_path / f"b{suffix}.db"
        report = run_import(db, tmp_path / f"export{suffix}", root)
        assert report.added == int(first[list(VOTE_LABELS)].to_numpy().sum())
        with open_store(str(db)) as store:
            pd.testing.assert_frame_equal(ferplus_votes(store, "fer_small"), first)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.assign(path=f["path"].where(f.index != 3, "val/happy/not_there.png")), "line 5: no face"),
    (lambda f: f.assign(anger=f["anger"].astype(object).where(f.index != 0, -1)), "line 2: anger is '-1'"),
    (lambda f: f.assign(fear=f["fear"].astype(object).where(f.index != 6, "2.5")), "line 8: fear is '2.5'"),
    (lambda f: f.assign(NF=f["NF"].astype(object).where(f.index != 1, "")), "line 3: NF is ''"),
    (lambda f: f.drop(columns=["disgust"]), "lacks the column(s) ['disgust']"),
    (lambda f: pd.concat([f, f.iloc[[2]]]), "repeats an earlier row"),
])
def test_a_bad_row_is_reported_by_line_and_nothing_is_written(tmp_path, db_url, small_set, edit, message):
    root, rows = small_set
    csv = tmp_path / "votes.csv"
    edit(rows.copy()).to_csv(csv, index=False)
    db = db_url
    with pytest.raises(AnnotateError, match="nothing was imported|lacks the column") as info:
        run_import(db, csv, root)
    assert message in str(info.value)
    with open_store(str(db)) as store:
        assert len(store.decisions()) == 0 and store.annotators() == []
        assert len(store.resolved_labels(include_undecided=True)) == 0


def test_the_command_imports_and_reports_a_bad_file_without_a_traceback(tmp_path, db_url_pg_slow, small_set):
    root, rows = small_set
    csv = tmp_path / "votes.csv"
    rows.to_csv(csv, index=False)
    command = [sys.executable, "-m", "annotate.import_votes", str(csv), "--db", db_url_pg_slow,
               "--data", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(rows):,} faces" in done.stdout and "ferplus-1 .." in done.stdout

    rows.assign(happiness="many").to_csv(csv, index=False)
    bad = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "error: the vote table has bad rows" in bad.stderr and "happiness is 'many'" in bad.stderr


def test_browse_and_relabel_show_a_faces_imported_votes(tmp_path, small_set):
    from ui.browse_tab import Browser
    from ui.relabel_tab import RelabelDesk, Settings

    root, rows = small_set
    csv = tmp_path / "votes.csv"
    rows.to_csv(csv, index=False)
    run_import(tmp_path / "s.db", csv, root)
    table = load_faces(root, use_cache=False, progress=False)
    with open_store(str(tmp_path / "s.db")) as store:
        browser = Browser(table, votes=lambda sid: store.vote_counts("fer_small", sid))
        row = 0
        path = table.frame["sample_id"].iloc[row] + ".png"
        raw = rows.set_index("path").loc[path]
        shares = browser.votes(row)
        assert shares["Angry"] == pytest.approx(raw["anger"] / raw[list(FERPLUS_TO_LABEL)].sum())
        assert sum(shares.values()) == pytest.approx(1.0)
        assert Browser(table).votes(row) is None  # no store: no votes panel

        # Relabel shows the votes on a second-opinion face (one that already has answers).
        desk = RelabelDesk(store, table, model_version="test-model")
        face = desk.next_face("reviewer", Settings(strategy="random", second_opinion=True, opinions_needed=11))
        text = desk.describe(face)
        counts = store.vote_counts("fer_small", face.sample_id)
        top = max(counts, key=counts.get)
        assert f"{face.opinions} earlier answer(s) by others:" in text
        assert f"{ANSWER_NAMES[top]} {counts[top]}" in text
