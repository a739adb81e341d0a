"""The CPU description that benchmark figures and model cards carry."""

from __future__ import annotations

from pathlib import Path

import torch

from fer_core.hardware import cpu_description, cpu_flags
from fer_core.train import autocast_dtype, device_name

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC   9B45
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni avx_vnni
"""
INTEL_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile
"""


def test_the_name_cores_and_speed_flags_are_read_in_a_fixed_order() -> None:
    assert cpu_description(AMD, cores=2) == "AMD EPYC 9B45, 2 cores; avx512_vnni avx_vnni avx512_bf16 avx512f avx2"
    assert cpu_description(INTEL_AMX, cores=4) == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, 4 cores; "
        "amx_int8 amx_bf16 avx512_vnni avx512_bf16 avx512f avx2")
    assert {"amx_tile", "fpu"} <= cpu_flags(INTEL_AMX)


def test_an_unreadable_or_bare_cpuinfo_still_gives_a_line() -> None:
    assert cpu_flags("") == set()
    assert cpu_description("", cores=1) == "unknown CPU, 1 cores; no AVX2 or newer vector units"
    assert cpu_description("flags\t: fpu sse2\n", cores=2) == "unknown CPU, 2 cores; no AVX2 or newer vector units"


def test_this_machine_is_described_as_it_is() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    line = cpu_description()
    assert device_name(torch.device("cpu")) == line
    for flag in ("avx2", "avx512_vnni", "amx_int8"):
        assert (flag in line.split("; ")[1].split()) == (flag in cpu_flags(text))
    # Training's bf16 autocast follows the same flags.
    native_bf16 = bool({"amx_bf16", "avx512_bf16"} & cpu_flags(text))
    assert (autocast_dtype(torch.device("cpu"), "auto") is torch.bfloat16) == native_bf16
