"""annotate.campaign / annotate.simulate: a relabel campaign answered from FER+ votes, through the real store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annotate.campaign import VoteAnswers, run_campaign
from annotate.errors import AnnotateError
from annotate.ferplus import majority_labels
from annotate.labels import VOTE_LABELS
from annotate.simulate import campaign_queue, parse_budgets, vote_counts
from annotate.store import open_store
from fer_core.datasets import load_faces
from fer_core.labels import EMOTIONS
from tests.conftest import REPO, SHARED_FER, needs_shared

VOTES = REPO.parent / "shared" / "ferplus" / "fer2013_votes.csv"
pytestmark = [needs_shared, pytest.mark.skipif(not VOTES.is_file(), reason="../shared/ferplus is not present")]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout copy of 40 real train faces per class and 10 val faces per class."""
    root = tmp_path_factory.mktemp("sim") / "fer_small"
    votes = pd.read_csv(VOTES)
    emotion = votes["path"].str.split("/").str[1]
    split = votes["path"].str.split("/").str[0]
    picked = pd.concat([votes[split == "train"].groupby(emotion, group_keys=False).head(40),
                        votes[split == "val"].groupby(emotion, group_keys=False).head(10)])
    for rel in picked["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FER / rel, root / rel)
    return root


@pytest.fixture
def campaign_parts(small_set: Path, tmp_path: Path):
    table = load_faces(small_set, use_cache=False, progress=False)
    train = table.select(table.frame["split"].to_numpy() == "train")
    counts = vote_counts(train, VOTES, small_set)
    store = open_store(str(tmp_path / "campaign.db"))
    yield store, train, counts
    store.close()


def test_majority_answers_change_the_labels_as_the_votes_say(campaign_parts):
    store, train, counts = campaign_parts
    queue = campaign_queue(store, train, "fer_small", seed=0)
    # The shipped out-of-fold probabilities cover these real training faces.
    assert not np.isnan(queue.probabilities).any()
    expected_order = [queue.sample_ids[r] for r in queue.order("likely_label_error")]
    result = run_campaign(queue, VoteAnswers(counts, "majority", seed=0), strategy="likely_label_error",
                          budget=25, progress=False)
    assert result.faces_seen == 25 and result.answers == 25 and not result.exhausted
    assert result.sample_ids == expected_order[:25]  # the queue's order, face by face

    resolved = store.resolved_labels("fer_small").set_index("sample_id")
    assert set(resolved.index) == set(result.sample_ids)
    for sid in result.sample_ids:
        row = queue.sample_ids.index(sid)
        top = np.flatnonzero(counts[row] == counts[row].max())
        answer = VOTE_LABELS[top[0]]
        if len(top) == 1 and answer in EMOTIONS:
            assert resolved.loc[sid, "resolved_label"] == answer
            assert resolved.loc[sid, "changed"] == (answer != EMOTIONS[train.labels[row]])
    # Every answer went through a lease and left none behind.
    decisions = store.decisions("fer_small")
    assert list(decisions["annotator"].unique()) == ["sim-1"] and len(decisions) == 25
    assert len(store.leases("fer_small")) == 0


def test_k_votes_per_face_are_drawn_from_that_faces_votes(campaign_parts):
    store, train, counts = campaign_parts
    queue = campaign_queue(store, train, "fer_small", seed=1)
    result = run_campaign(queue, VoteAnswers(counts, "k", k=3, seed=1), strategy="random", budget=15, progress=False)
    assert result.answers == 45
    decisions = store.decisions("fer_small")
    assert sorted(decisions["annotator"].unique()) == ["sim-1", "sim-2", "sim-3"]
    for sid, answers in decisions.groupby("sample_id")["label"]:
        row = queue.sample_ids.index(sid)
        drawn = pd.Series(list(answers)).value_counts()
        assert all(counts[row][VOTE_LABELS.index(label)] >= n for label, n in drawn.items())
    # random: the seeded permutation, as the Relabel tab's random queue gives it.
    assert result.sample_ids == [queue.sample_ids[r] for r in queue.order("random")[:15]]


def test_one_vote_answers_are_real_votes_and_the_queue_can_run_dry(campaign_parts):
    store, train, counts = campaign_parts
    queue = campaign_queue(store, train, "fer_small", seed=0)
    flagged = len(queue.order("model_disagrees"))
    result = run_campaign(queue, VoteAnswers(counts, "one", seed=2), strategy="model_disagrees", budget=None,
                          progress=False)
    assert result.exhausted and result.faces_seen == flagged
    for sid, label in store.decisions("fer_small")[["sample_id", "label"]].itertuples(index=False):
        assert counts[queue.sample_ids.index(sid)][VOTE_LABELS.index(label)] > 0


def test_ferplus_majority_leaves_out_ties_and_non_emotions():
    votes = pd.DataFrame([
        # neutral happiness surprise sadness anger disgust fear contempt unknown NF
        [6, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 5, 5, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 6, 4, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
        [1, 0, 0, 0, 0, 0, 2, 0, 0, 0],
    ], columns=["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                "NF"])
    assert majority_labels(votes).tolist() == [EMOTIONS.index("neutral"), -1, -1, -1, EMOTIONS.index("fear")]


def test_budgets_parse_and_bad_ones_are_refused():
    assert parse_budgets(["0,500", "all", "100"]) == [0, 100, 500, None]
    for bad in (["-5"], ["lots"], [""]):
        with pytest.raises(AnnotateError):
            parse_budgets(bad)
    with pytest.raises(AnnotateError, match="answer mode"):
        VoteAnswers(np.ones((2, 9), dtype=int), "psychic")


@pytest.mark.slow
def test_the_command_runs_the_campaign_trains_each_budget_and_the_card_counts_the_corrections(small_set, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "annotate.simulate", str(small_set), "--votes", str(VOTES),
               "--strategy", "likely_label_error", "--budget", "0", "15", "--epochs", "1", "--max-steps", "1",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "campaign: 15 faces shown, 15 answers" in done.stdout
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [p["budget"] for p in lines] == ["0", "15"]
    point = lines[1]
    assert point["faces_seen"] == 15 and 0 < point["labels_changed"] <= 15
    for p in lines:
        assert set(p["val"]) == {"original", "ferplus"}
        assert 0 <= p["val"]["ferplus"]["accuracy"] <= 1 and p["val"]["ferplus"]["n"] > 0
    # The trained model's card counts the corrections it was given; budget 0 trained on none.
    card = json.loads((out / "likely_label_error-majority-seed0-b15" / "model.json").read_text())
    assert card["training"]["corrections"]["relabelled"] == point["labels_changed"]
    assert card["training"]["init"]["file"] == "fer_model.safetensors"
    card0 = json.loads((out / "baseline-seed0" / "model.json").read_text())
    assert card0["training"]["corrections"] is None

    # The learning curve reads the results: a table and a plot.
    curve = subprocess.run([sys.executable, "-m", "annotate.learning_curve", str(out / "results.jsonl"),
                            "--plot", str(tmp_path / "curve.png")], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
    assert curve.returncode == 0, curve.stderr
    assert "| likely_label_error | majority | 15 |" in curve.stdout
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_all_votes_imports_every_vote_and_changes_the_labels_the_crowd_changes(small_set, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "all"
    command = [sys.executable, "-m", "annotate.simulate", str(small_set), "--votes", str(VOTES), "--all-votes",
               "--budget", "0", "all", "--no-train", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(p["strategy"], p["budget"]) for p in lines] == [("all-votes", "0"), ("all-votes", "all")]
    # Every training face was answered, and a label changes where the crowd's plurality names another
    # emotion (a tie, contempt, unknown or not-a-face leaves it as given or drops it).
    table = load_faces(small_set, use_cache=False, progress=False)
    train = table.select(table.frame["split"].to_numpy() == "train")
    counts = vote_counts(train, VOTES, small_set)
    single = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) == 1
    winner = counts.argmax(axis=1)  # VOTE_LABELS: the seven emotions first
    changed = int((single & (winner < len(EMOTIONS)) & (winner != train.labels)).sum())
    assert lines[1]["faces_seen"] == len(train) and lines[1]["labels_changed"] == changed > 0
    corrections = pd.read_csv(out / "all-votes-seed0-ball.corrections.csv")
    assert len(corrections) == len(train) and int(corrections["changed"].sum()) == changed


def test_learning_curve_gain_is_a_line_per_seed_and_a_point_trained_again_counts_once(tmp_path) -> None:
    import json

    from annotate.learning_curve import gain_per_thousand, read_results, summarise

    def point(strategy: str, seed: int, faces: int, accuracy: float, budget: str | None = None) -> str:
        val = {"accuracy": accuracy, "macro_f1": accuracy - 0.1}
        return json.dumps({"strategy": strategy, "answer": "majority", "seed": seed, "budget": budget or str(faces),
                           "faces_seen": faces, "labels_changed": faces // 2, "soft_labels": False,
                           "val": {"ferplus": val, "original": val}})

    lines = []
    for seed, per_thousand in ((0, 1.0), (1, 2.0)):  # points of accuracy per 1,000 faces
        lines += [point("queue", seed, n, 0.68 + per_thousand * n / 100_000) for n in (0, 500, 1000, 2000, 5000)]
        lines.append(point("queue", seed, 6490, 0.99, budget="all"))  # past 5,000 faces: not in the line
    lines.append(point("random", 0, 0, 0.50))  # trained twice: the later line counts
    lines += [point("random", 0, 0, 0.68), point("random", 0, 1000, 0.68)]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    results = read_results([path])
    assert len(results) == 14
    gains = gain_per_thousand(results).set_index("strategy")
    assert gains.loc["queue", "points_per_1000"] == pytest.approx(1.5)
    assert gains.loc["queue", "spread"] == pytest.approx(0.5) and gains.loc["queue", "seeds"] == 2
    assert gains.loc["random", "points_per_1000"] == pytest.approx(0.0, abs=1e-9)
    summary = summarise(results).set_index(["strategy", "budget"])
    assert summary.loc[("random", "0"), "ferplus_acc"] == pytest.approx(0.68)
    assert summary.loc[("queue", "5000"), "ferplus_acc"] == pytest.approx(0.68 + 0.075)
    assert summary.loc[("queue", "5000"), "ferplus_acc_spread"] == pytest.approx(0.025)
