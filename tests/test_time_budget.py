"""``--time-budget``: the run plans its epochs from measured epoch costs and ends within the wall time it is given."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from fer_core.config import SAMPLE_PATH
from fer_core.time_budget import EpochCost, estimate_epoch_seconds, finish_reserve, parse_duration, plan_epochs
from fer_core.train import get_args_parser
from fer_core.weights import load_model
from test_train import TINY, _log, _run


class TestDurations:
    @pytest.mark.parametrize(("text", "seconds"), [("7200", 7200), ("45s", 45), ("90m", 5400), ("90min", 5400),
                                                   ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("1h0m30s", 3630),
                                                   (" 2H ", 7200)])
    def test_reads_hours_minutes_and_seconds(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "h", "abc", "-5", "2 h", "1h30", "2d", "m30"])
    def test_refuses_what_is_not_a_duration(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="is not a duration"):
            parse_duration(text)

    @pytest.mark.parametrize("text", ["0", "0h", "0m0s"])
    def test_refuses_a_zero_budget(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="longer than zero"):
            parse_duration(text)

    def test_the_command_line_names_the_option(self, capsys: pytest.CaptureFixture) -> None:
        with pytest.raises(SystemExit) as exit_info:
            get_args_parser().parse_args(["data", "--out", "o", "--time-budget", "1h30"])
        assert exit_info.value.code == 2
        assert "argument --time-budget: '1h30' is not a duration" in capsys.readouterr().err


class TestPlanning:
    def test_an_epoch_is_estimated_per_step_from_the_recent_epochs(self) -> None:
        # Short curriculum epochs (50 steps) cost as much per step as full ones (100 steps).
        costs = [EpochCost(100, 90.0, 5.0)] * 3 + [EpochCost(50, 10.0, 1.0)] * 2 + [EpochCost(100, 20.0, 1.0)] * 3
        # Only the last five count: 2 x (50 steps, 10 s) + 3 x (100 steps, 20 s): 0.2 s a step, 1 s of val.
        assert estimate_epoch_seconds(costs, 100) == pytest.approx(21.0)
        assert finish_reserve(costs) == pytest.approx(13.0)
        with pytest.raises(ValueError, match="no epoch measured"):
            estimate_epoch_seconds([], 100)

    def test_plans_the_epochs_that_fit_at_most_the_maximum_and_never_fewer_than_done(self) -> None:
        assert plan_epochs(done=1, max_epochs=100, seconds_left=950, epoch_seconds=100) == 10
        assert plan_epochs(done=1, max_epochs=5, seconds_left=950, epoch_seconds=100) == 5
        assert plan_epochs(done=7, max_epochs=100, seconds_left=99, epoch_seconds=100) == 7
        assert plan_epochs(done=7, max_epochs=100, seconds_left=-300, epoch_seconds=100) == 7
        with pytest.raises(ValueError):
            plan_epochs(done=1, max_epochs=5, seconds_left=10, epoch_seconds=0)


class TestBudgetedTraining:
    @pytest.mark.slow
    def test_a_budget_the_run_fits_in_changes_nothing(self, tmp_path: Path) -> None:
        assert _run(tmp_path, "--epochs", "3", out="plain")[0] == 0
        assert _run(tmp_path, "--epochs", "3", "--time-budget", "1h", out="budget")[0] == 0
        plain, budget = _log(tmp_path / "plain"), _log(tmp_path / "budget")
        assert [r["planned_epochs"] for r in budget] == [3, 3, 3]
        assert [r["train_loss"] for r in budget] == pytest.approx([r["train_loss"] for r in plain], rel=1e-4)
        assert [r["lr"] for r in budget] == pytest.approx([r["lr"] for r in plain])
        _, card = load_model(tmp_path / "budget" / "model.safetensors")
        assert card["training"]["epochs"] == 3
        assert card["training"]["time_budget"]["seconds"] == 3600
        assert card["training"]["time_budget"]["max_epochs"] == 3
        assert 0 < card["training"]["time_budget"]["wall_seconds_used"] < 3600
        _, plain_card = load_model(tmp_path / "plain" / "model.safetensors")
        assert plain_card["training"]["time_budget"] is None

    @pytest.mark.slow
    def test_the_schedule_shrinks_to_the_planned_epochs_and_still_decays_to_zero(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        # As if every epoch took 100 s: the estimate says so, and each finished epoch holds back
        # 100 s of the 1,000 s budget. With the few real seconds used, 9 of at most 30 epochs fit.
        monkeypatch.setattr("fer_core.train.estimate_epoch_seconds", lambda costs, steps: 100.0)
        monkeypatch.setattr("fer_core.train.finish_reserve", lambda costs: 100.0 * len(costs))
        code, out = _run(tmp_path, "--epochs", "30", "--time-budget", "1000")
        assert code == 0
        log = _log(out)
        assert [r["epoch"] for r in log] == list(range(1, 10))
        assert log[0]["planned_epochs"] == 30 and {r["planned_epochs"] for r in log[1:]} == {9}
        peak = max(r["lr"] for r in log)
        assert peak == pytest.approx(0.005, rel=0.05)
        assert log[-1]["lr"] < 0.01 * peak  # the cosine ends at the ninth epoch, not the thirtieth
        assert all(a["lr"] >= b["lr"] for a, b in zip(log[1:], log[2:]))
        _, card = load_model(out / "model.safetensors")
        assert card["training"]["epochs"] == 9 and card["training"]["time_budget"]["max_epochs"] == 30
        assert "time budget: 9 of at most 30 epochs fit in 0:16:40" in capsys.readouterr().out

    @pytest.mark.slow  # a few seconds of training: the full suite runs it
    def test_a_budget_too_short_for_a_second_epoch_trains_one(self, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
        code, out = _run(tmp_path, "--epochs", "20", "--time-budget", "1s")
        assert code == 0
        assert len(_log(out)) == 1
        assert (out / "model.safetensors").is_file()
        assert "time budget: 1 of at most 20 epochs fit in 0:00:01" in capsys.readouterr().out

    def test_refused_with_folds(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert _run(tmp_path, "--epochs", "2", "--time-budget", "1h", "--folds", "2")[0] == 2
        assert "--time-budget plans one run's epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_budgeted_run_resumes_with_the_time_it_used(tmp_path: Path) -> None:
    """The wall time of the killed run is carried over: the two runs together stay within the budget."""
    budget = 25.0
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fer_core.train", str(SAMPLE_PATH), "--val", str(SAMPLE_PATH), *TINY,
               "--epochs", "500", "--time-budget", f"{budget:g}", "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoint.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (
            checkpoint.is_file() and json.loads(checkpoint.read_text())["epoch"] >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = json.loads(checkpoint.read_text())
    assert killed["epoch"] < killed["planned_epochs"] < 500, "the run finished before it could be killed"
    time.sleep(2)  # time between the runs is not the run's: it must not be counted
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = _log(out)
    assert [r["epoch"] for r in log] == list(range(1, len(log) + 1))
    assert len(log) > killed["epoch"]
    _, card = load_model(out / "model.safetensors")
    used = card["training"]["time_budget"]["wall_seconds_used"]
    assert killed["wall_seconds_used"] < used <= budget
    assert "time budget: the run took" in resumed.stdout
