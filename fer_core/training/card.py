"""What a run writes besides its checkpoint: the model card, ``log.jsonl``/``log.csv`` and ``curve.png``."""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fer_core.augment import AugmentConfig
from fer_core.constants import IMAGE_SIZE, INPUT_MEAN, INPUT_STD
from fer_core.training.utils import device_name
from fer_core.training.val_labels import SECOND_PREFIX, trained_on

if TYPE_CHECKING:
    from fer_core.training.data import LabelMap, TrainingData

__all__ = ["LOG_COLUMNS", "SECOND_LOG_COLUMNS", "command_line", "code_version", "card_base", "model_card", "write_logs",
           "plot_curve"]

#: The columns of ``log.csv`` (``log.jsonl`` holds every field of each epoch).
LOG_COLUMNS = ("epoch", "train_loss", "val_accuracy", "val_macro_f1", "lr", "seconds")
#: The columns ``log.csv`` adds at its end for a run with ``--val-labels`` (val against the second label set).
SECOND_LOG_COLUMNS = (f"{SECOND_PREFIX}accuracy", f"{SECOND_PREFIX}macro_f1")


def command_line() -> str:
    """The command that started this process, as ``python -m fer_core.train ...``."""
    return "python -m fer_core.train " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def code_version() -> str:
    """The repository's short commit, or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(path: str) -> str:
    from fer_core.weights import file_sha256

    return file_sha256(path)


def card_base(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """What is needed to rebuild the model from its weights."""
    return {"architecture": args.model, "model_kwargs": {} if args.dropout is None else {"dropout": args.dropout},
            "labels": list(names)}


def _distributed(log: list[dict[str, Any]], world_size: int, backend: str | None) -> dict[str, Any] | None:
    """The card's ``distributed`` entry: how the run was shared between torchrun's processes (None: one process
    throughout). ``epochs_by_world_size`` counts the epochs trained in each number of processes (a run
    resumed with another ``--nproc-per-node`` has several)."""
    sizes = Counter(int(row.get("world_size", 1)) for row in log)
    if world_size <= 1 and set(sizes) <= {1}:
        return None
    return {"world_size": world_size, "backend": backend,
            "epochs_by_world_size": {str(size): sizes[size] for size in sorted(sizes)},
            "batch": "--batch-size faces per step in all, shared between the processes",
            "batchnorm": "statistics of the whole batch across the processes (synchronised)",
            "augmentation": "drawn per face from the seed, the same whatever the number of processes"}


#: What a fine-tune's card repeats of the training of the weights it started from.
_INIT_TRAINING_KEYS = ("command", "epochs", "best_epoch", "trained_on", "selected_on", "init")


def _init_entry(path: str | None) -> dict[str, Any] | None:
    """The card's ``init``: the weights a fine-tune started from, and how those were trained (from their card
    beside them, when there is one: command, epochs, labels and, in turn, their own ``init``)."""
    if not path:
        return None
    entry: dict[str, Any] = {"file": Path(path).name, "sha256": _sha256(path)}
    try:
        training = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))["training"]
    except (OSError, ValueError, KeyError, TypeError):
        return entry  # weights without a readable card: the file and its hash say what they were
    if isinstance(training, dict):
        entry["training"] = {key: training[key] for key in _INIT_TRAINING_KEYS if key in training}
    return entry


def _training(args: argparse.Namespace, data: TrainingData, val_faces: int, state: dict[str, Any],
              device: torch.device, world_size: int, backend: str | None = None) -> dict[str, Any]:
    """The card's ``training`` block: data, command, epochs, time, machine (``processes``: the world size) and
    recipe."""
    return {
        "data": args.data, "val": args.val or f"{args.data} (val split)",
        "train_faces": int(len(data)), "faces_trained_on": int(data.keep.sum()), "val_faces": int(val_faces),
        "command": command_line(),
        "epochs": state["epoch"], "best_epoch": state["best_epoch"], "seed": args.seed,
        "wall_seconds": round(state["seconds"], 1),
        "time_budget": ({"seconds": args.time_budget, "max_epochs": args.epochs,
                         "wall_seconds_used": round(state.get("wall_seconds_used", 0.0), 1)}
                        if args.time_budget else None),
        "device": str(device), "device_name": device_name(device), "processes": world_size,
        "distributed": _distributed(state["log"], world_size, backend),
        "augment": asdict(AugmentConfig()) if not args.no_augment else None,
        "init": _init_entry(args.init),
        "self_kd": ({"weight": args.self_kd, "temperature": args.kd_temperature, "teacher": "weight EMA",
                     "ramp": "linear from 0 over the run"} if args.self_kd else None),
        "label_smoothing": args.label_smoothing,
        "corrections": data.corrections,
        "soft_labels": data.targets is not None,
        "original_share": data.original_share,
        "trained_on": trained_on(data),
    }


def model_card(args: argparse.Namespace, *, label_map: LabelMap, data: TrainingData, val_faces: int,
               state: dict[str, Any], device: torch.device, world_size: int, n_params: int,
               val_metrics: dict[str, Any], inference: dict[str, Any], calibration: dict[str, Any],
               extra: dict[str, Any], selection: dict[str, Any] | None = None,
               backend: str | None = None) -> dict[str, Any]:
    """The model card written beside ``model.safetensors`` (``extra`` merged into its ``training`` block).

    ``selection`` (also merged into ``training``) says which val labels chose the model
    (``selected_on``) and gives val accuracy, macro-F1 and per-class recall as served against
    each label set (``val_by_labels``: ``original`` and the ``--val-labels`` set by its name).
    ``world_size`` and ``backend`` (``gloo``, ``nccl``; None in one process) describe torchrun's processes.
    """
    from fer_core.model import MODEL_CONFIGS

    base = card_base(args, label_map.names)
    return {
        **base,
        "config": {k: list(v) if isinstance(v, tuple) else v
                   for k, v in {**MODEL_CONFIGS[args.model], **base["model_kwargs"]}.items()},
        "parameters": n_params,
        "fer2013_id_to_class": label_map.index.tolist(),
        "input": {"size": [IMAGE_SIZE, IMAGE_SIZE], "channels": 1, "scale": "grey level / 255",
                  "mean": INPUT_MEAN, "std": INPUT_STD, "crop": "whole 48x48 face, FER2013 framing"},
        "training": {**_training(args, data, val_faces, state, device, world_size, backend), **(selection or {}),
                     **extra},
        "val_metrics": val_metrics,
        "inference": inference,
        "calibration": calibration,
        "code_version": code_version(),
        "torch": torch.__version__,
    }


def write_logs(out: Path, log: list[dict[str, Any]]) -> None:
    """Every epoch so far as ``log.jsonl`` (all fields) and ``log.csv`` (:data:`LOG_COLUMNS`, then
    :data:`SECOND_LOG_COLUMNS` when the epochs were measured against a second label set)."""
    with (out / "log.jsonl").open("w") as handle:
        for row in log:
            handle.write(json.dumps(row) + "\n")
    second = any(SECOND_LOG_COLUMNS[0] in row for row in log)
    with (out / "log.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS + (SECOND_LOG_COLUMNS if second else ()))
        for row in log:
            writer.writerow([row["epoch"], f"{row['train_loss']:.5f}", f"{row['val_accuracy']:.5f}",
                             f"{row['val_macro_f1']:.5f}", f"{row['lr']:.6g}", row["seconds"]]
                            + ([f"{row[c]:.5f}" if c in row else "" for c in SECOND_LOG_COLUMNS] if second else []))


def plot_curve(log: list[dict[str, Any]], path: Path, *, second: str | None = None) -> None:
    """Training loss, val accuracy and macro-F1 per epoch (and against the label set ``second``, when named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [r["train_loss"] for r in log], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [r["val_accuracy"] for r in log], label="val accuracy")
    ax2.plot(epochs, [r["val_macro_f1"] for r in log], label="val macro-F1")
    if second is not None:
        for key, what in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            ax2.plot(epochs, [r.get(SECOND_PREFIX + key, np.nan) for r in log], "--", label=f"val {what} ({second})")
    ax2.set_xlabel("epoch"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
