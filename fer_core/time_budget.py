"""A wall-time budget for a training run: ``python -m fer_core.train ... --time-budget 2h``.

With a budget, ``--epochs`` is the longest schedule the run may take. After each
epoch the run measures what an epoch costs on this machine (training steps and
the val pass, over the last few epochs) and plans how many epochs fit in the time
left, keeping back what the end of the run needs (the best epoch's val passes,
calibration, the model file). The learning-rate schedule and the
self-distillation ramp are then laid over the planned epochs, so the cosine
still decays to zero at the last one.

Planning after every epoch, rather than once, keeps the budget when the machine
slows down mid-run (another job on the cores) and gives back epochs when it
speeds up. The time counted is the wall time of every run of the output folder
(set-up, epochs, checkpoints), carried across ``--resume`` in the checkpoint;
the time a killed run spent on an epoch it never checkpointed is lost, not
counted, as that epoch is trained again.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "parse_duration", "parse_time_budget", "EpochCost", "estimate_epoch_seconds", "finish_reserve", "plan_epochs",
]

_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")

#: Epochs whose cost predicts the next one: recent enough to follow a change of load
#: on the machine, several so that one slow epoch does not cut the schedule.
RECENT_EPOCHS = 5


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``7200``, ``45s``, ``90m``, ``2h``, ``1h30m``, ``1.5h``.

    Raises ``argparse.ArgumentTypeError`` (so argparse names the option) for anything else.
    """
    text = str(text)
    if _SECONDS.fullmatch(text.strip()):
        seconds = float(text)
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"the time budget must be longer than zero, got {text!r}")
        return seconds
    # Units are required once there is more than a number, so that "1h30" is refused, not read as 1h 30s.
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 2h, 90m, 1h30m or 7200 (seconds)")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    seconds = parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the time budget must be longer than zero, got {text!r}")
    return seconds


def parse_time_budget(text: str) -> float | None:
    """``--time-budget``: seconds of a duration (:func:`parse_duration`), or None for ``none`` / ``off`` (no budget)."""
    if str(text).strip().lower() in ("none", "off"):
        return None
    return parse_duration(text)


@dataclass(frozen=True)
class EpochCost:
    """What one finished epoch took: its optimisation steps, their seconds, and the val pass's seconds."""

    steps: int
    train_seconds: float
    val_seconds: float


def _mean_val_seconds(recent: Sequence[EpochCost]) -> float:
    return sum(c.val_seconds for c in recent) / max(1, len(recent))


def estimate_epoch_seconds(costs: Sequence[EpochCost], steps_per_epoch: int) -> float:
    """Seconds a full epoch of ``steps_per_epoch`` steps should take, from the last few epochs' costs.

    Per step rather than per epoch, so that a short epoch (a last batch left out, a
    capped epoch) does not make a full epoch look cheap.
    """
    if not costs:
        raise ValueError("no epoch measured yet")
    recent = costs[-RECENT_EPOCHS:]
    step_seconds = sum(c.train_seconds for c in recent) / max(1, sum(c.steps for c in recent))
    return step_seconds * steps_per_epoch + _mean_val_seconds(recent)


def finish_reserve(costs: Sequence[EpochCost]) -> float:
    """Seconds kept back for the end of the run: the best epoch's plain val pass and its mirrored one
    (faces and mirrors: two passes' worth), the temperature fit, the model file and the curve."""
    return 3 * _mean_val_seconds(costs[-RECENT_EPOCHS:]) + 10.0


def plan_epochs(*, done: int, max_epochs: int, seconds_left: float, epoch_seconds: float) -> int:
    """How many epochs the run should have in all: those ``done``, plus as many as fit in ``seconds_left``,
    at most ``max_epochs``. Returns ``done`` when not one more fits."""
    if epoch_seconds <= 0:
        raise ValueError(f"an epoch must take some time, got {epoch_seconds}")
    more = math.floor(max(0.0, seconds_left) / epoch_seconds)
    return max(done, min(max_epochs, done + more))
