"""The resumable checkpoint of a run (weights, weight EMA, optimizer buffers and counters, as
safetensors + JSON), and trained weights to start a run from (``--init``).

``DIR/checkpoint.safetensors`` holds the tensors (``model.*``, ``ema.*``, ``opt.<param>.<buffer>``),
``DIR/checkpoint.json`` the rest: epoch, step, best epoch, the log, the ``args`` of the run,
the optimizer's parameter groups and the wall time used. No pickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_core._io import atomic_write
from fer_core._validation import FERError

__all__ = ["CHECKPOINT_FILE", "check_out", "save_checkpoint", "load_checkpoint", "init_weights", "save_process_state",
           "process_state_path"]

CHECKPOINT_FILE = "checkpoint.json"


def check_out(out: Path, resume: bool) -> None:
    """Before anything is loaded: ``--resume`` needs a checkpoint in ``out``, a new run needs none there."""
    if resume and not (out / CHECKPOINT_FILE).is_file():
        raise FERError(f"--resume: no checkpoint in {out}")
    if not resume and (out / CHECKPOINT_FILE).is_file():
        raise FERError(f"{out} already holds a run: add --resume to continue it, or choose another --out")


def save_checkpoint(out: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Everything needed to continue exactly: weights, EMA, optimizer buffers, counters (safetensors + JSON)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_state = optimizer.state_dict()
    for pid, buffers in opt_state["state"].items():
        for name, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous()
    meta = {**state, "param_groups": opt_state["param_groups"]}
    # Both written before either replaces its file; the weights are replaced first, then their JSON.
    with atomic_write(out / CHECKPOINT_FILE) as meta_tmp, atomic_write(out / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
        meta_tmp.write_text(json.dumps(meta))


def load_checkpoint(out: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> dict[str, Any]:
    """Load a checkpoint of :func:`save_checkpoint` into ``model``, ``ema`` and ``optimizer``; returns the counters."""
    from safetensors.torch import load_file

    meta = json.loads((out / CHECKPOINT_FILE).read_text())
    tensors = load_file(str(out / "checkpoint.safetensors"), device=str(device))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict[str, Any] = {"state": {}, "param_groups": meta.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(opt_state)
    return meta


def process_state_path(folder: Path, rank: int) -> Path:
    """Where :func:`save_process_state` writes process ``rank``'s state."""
    return Path(folder) / f"rank_{rank}.safetensors"


def save_process_state(folder: Path, rank: int, *, model: nn.Module, ema: nn.Module,
                       step_losses: list[float]) -> Path:
    """``--dump-state DIR``: one process's state at the end of training, as ``DIR/rank_<R>.safetensors``.

    Holds ``model.*`` and ``ema.*`` (the state dicts, BatchNorm buffers included) and
    ``step_losses`` (S,) float64, every step's loss of the whole batch in this run; what a test
    compares between torchrun's processes and against a run in one process.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    tensors["step_losses"] = torch.tensor(step_losses, dtype=torch.float64)
    path = process_state_path(folder, rank)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def init_weights(model: nn.Module, path: str | Path, *, architecture: str, names: list[str]) -> None:
    """Load trained weights (``--init``: a safetensors file with its card) into ``model``, which must be the
    same architecture for the same classes."""
    from fer_core.weights import WeightsError, load_model

    try:
        trained, card = load_model(path)
    except WeightsError as err:
        raise FERError(f"--init: {err}") from None
    if card["architecture"] != architecture or list(card["labels"]) != list(names):
        raise FERError(f"--init: {Path(path).name} is a {card['architecture']} for {card['labels']}; "
                       f"this run trains a {architecture} for {list(names)}")
    model.load_state_dict(trained.state_dict())
