"""Devices, torchrun processes, the model's input and its logits, shared by training and the fold runs.

Under ``torchrun --nproc-per-node N -m fer_core.train ...`` each process reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (torchrun's own protocol, as torchvision's reference
scripts do), joins the process group (``gloo`` on the CPU, ``nccl`` on GPUs) and trains on
its share of every batch; the first process alone evaluates and writes files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_core._validation import FERError
from fer_core.constants import INPUT_MEAN, INPUT_STD
from fer_core.hardware import cpu_description, cpu_flags

__all__ = [
    "DEVICES",
    "AMP_MODES",
    "Processes",
    "ONE_PROCESS",
    "warn",
    "resolve_device",
    "device_name",
    "autocast_dtype",
    "init_processes",
    "close_processes",
    "all_sum",
    "all_sum_tensor",
    "backend_name",
    "shard",
    "broadcast",
    "barrier",
    "to_input",
    "predict_logits",
]

#: The choices of ``--device``.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The choices of ``--amp``.
AMP_MODES: tuple[str, ...] = ("auto", "on", "off")


def warn(message: str) -> None:
    """``warning: <message>`` on stderr: something the user should know, which does not stop the run."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU where there is one), ``cpu`` or ``cuda``; FERError for an unknown name or a missing GPU."""
    if name not in DEVICES:
        raise FERError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The machine a run's wall time was measured on: the GPU's name, or the CPU's with its cores and vector units."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AMX/AVX512-BF16) where it measured faster."""
    if mode not in AMP_MODES:
        raise FERError(f"unknown --amp {mode!r}; choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "on":
        return torch.bfloat16
    flags = cpu_flags()
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


@dataclass(frozen=True)
class Processes:
    """The processes a run trains in: this one alone, or the ``world_size`` that torchrun started."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The process that evaluates, prints and writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: A run without torchrun.
ONE_PROCESS = Processes()


def init_processes(device_choice: str) -> tuple[Processes, torch.device]:
    """This process's place among torchrun's (one process without torchrun) and the device it trains on."""
    device = resolve_device(device_choice)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ONE_PROCESS, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size), device


def close_processes(processes: Processes) -> None:
    """Leave the process group (after the last collective call)."""
    if processes.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_sum(values: list[float], processes: Processes, device: torch.device) -> list[float]:
    """``values`` summed over the processes (the values themselves with one process)."""
    if not processes.distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total.tolist()


def all_sum_tensor(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    """``values`` summed element-wise over the processes (a new tensor; a copy with one process)."""
    total = values.clone()
    if processes.distributed:
        torch.distributed.all_reduce(total)
    return total


def backend_name(processes: Processes) -> str | None:
    """The process group's backend (``gloo``, ``nccl``), or None with one process."""
    if not processes.distributed or not torch.distributed.is_initialized():
        return None
    return str(torch.distributed.get_backend())


def shard(batch: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The rows of a global ``batch`` (B, ...) that this process trains on: every ``world_size``-th from ``rank``
    (a view; ``batch`` itself with one process).

    This is the distributed sampler: every process draws the same seeded order of the epoch and
    cuts it into the same global batches (those of one process with the same ``--batch-size``),
    then keeps its share of each. Shares differ in size by at most one face.
    """
    return batch[processes.rank::processes.world_size] if processes.distributed else batch


def broadcast(value: Any, processes: Processes) -> Any:
    """The first process's ``value``, in every process."""
    if not processes.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(processes: Processes) -> None:
    """Wait until every process gets here."""
    if processes.distributed:
        torch.distributed.barrier()


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 faces (N, 48, 48) -> normalised float (N, 1, 48, 48), channels-last."""
    x = images.unsqueeze(1).float().div_(255.0).sub_(INPUT_MEAN).div_(INPUT_STD)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: np.ndarray | torch.Tensor, *, device: torch.device, batch_size: int = 512,
    flip_tta: bool = False, amp: torch.dtype | None = None,
) -> np.ndarray:
    """Logits (N, K) of a model on uint8 faces (N, 48, 48); with ``flip_tta`` averaged with the mirror image."""
    model.eval()
    data = torch.as_tensor(images)
    out = []
    for start in range(0, len(data), batch_size):
        x = to_input(data[start:start + batch_size].to(device))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            if flip_tta:  # the faces and their mirrors in one call, as the Predictor does
                both = model(torch.cat([x, torch.flip(x, dims=[3])])).float()
                logits = (both[:len(x)] + both[len(x):]) / 2
            else:
                logits = model(x).float()
        out.append(logits.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
