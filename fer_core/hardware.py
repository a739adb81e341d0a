"""What the CPU offers: its name and the instruction sets that decide inference and training speed.

Speed figures only mean something next to the machine they were measured on: the same
2-core allowance has been an Intel CPU with AMX in one session and an AMD one with
AVX-512 VNNI but no AMX in another, and int8 throughput differed by half between them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The flags that matter here, in the order they are reported: int8 dot products (ONNX
#: Runtime's quantised convolutions) and bf16 (PyTorch's autocast in training).
SPEED_FLAGS: tuple[str, ...] = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f", "avx2")


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> str:
    try:
        return Path(path).read_text()
    except OSError:  # not Linux, or no /proc: nothing known
        return ""


def _field(cpuinfo: str, name: str) -> str:
    """The first ``name : value`` of cpuinfo text, blanks collapsed ("" where absent)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return " ".join(value.split())
    return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return set(_field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags").split())


def cpu_description(cpuinfo: str | None = None, cores: int | None = None) -> str:
    """One line such as ``AMD EPYC, 2 cores; avx512_vnni avx512_bf16 avx512f avx2``."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    name = _field(text, "model name") or "unknown CPU"
    count = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    flags = cpu_flags(text)
    present = [flag for flag in SPEED_FLAGS if flag in flags]
    return f"{name}, {count} cores; " + (" ".join(present) if present else "no AVX2 or newer vector units")
