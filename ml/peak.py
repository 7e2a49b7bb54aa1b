"""How far a runtime is from what the CPU could do: the model's FLOPs per image (counted by
torch's FlopCounterMode on one forward pass: a multiply-add is 2 FLOPs) and the CPU's fp32
peak from its units (cores x clock x FLOP per cycle and core, the last from its vector
units as /proc/cpuinfo names them), beside a measured fp32 GEMM, the best a real kernel
reaches here. `manage.py bench` prints each runtime's share of that peak.

FLOP per cycle and core, fp32, by what the CPU reports (two FMA pipes on every core we
know of; an FMA is 2 FLOPs per lane):

- Intel with AVX-512: 2 x 16 lanes x 2 = 64 (two 512-bit FMA units);
- AMD with AVX-512 (Zen 4): 32 (its 512-bit instructions run on two 256-bit pipes);
- AVX2 with FMA: 2 x 8 x 2 = 32;
- otherwise (SSE): 2 x 4 x 2 = 16.

The clock is the one /proc/cpuinfo reports (a virtual machine shows its base clock, not the
boost clock), so the peak is an estimate: the GEMM row is there to check it against.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuPeak:
    cores: int
    ghz: float
    flop_per_cycle: int
    basis: str  # which units the FLOP per cycle was taken from

    @property
    def gflops(self) -> float:
        return self.cores * self.ghz * self.flop_per_cycle

    def describe(self) -> str:
        return (
            f"{self.cores} cores x {self.ghz:.2f} GHz x {self.flop_per_cycle} FLOP/cycle "
            f"({self.basis}) = {self.gflops:.0f} GFLOP/s fp32"
        )


def cpu_peak(cpuinfo: str | None = None, cores: int | None = None) -> CpuPeak:
    """The fp32 peak of the CPUs this process may run on, from /proc/cpuinfo's text."""
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    first = cpuinfo.split("\n\n")[0]
    field = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines())
    )
    flags = set(field.get("flags", "").split())
    vendor = field.get("vendor_id", "")
    mhz = float(field.get("cpu MHz") or 0)
    if not mhz:
        found = re.search(r"@ ([\d.]+)GHz", field.get("model name", ""))
        mhz = float(found.group(1)) * 1000 if found else 0.0
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle, basis = 64, "Intel AVX-512, two FMA units"
    elif "avx512f" in flags:
        per_cycle, basis = 32, "AVX-512 on two 256-bit FMA pipes"
    elif {"avx2", "fma"} <= flags:
        per_cycle, basis = 32, "AVX2 FMA, two units"
    else:
        per_cycle, basis = 16, "SSE"
    return CpuPeak(cores=cores, ghz=mhz / 1000, flop_per_cycle=per_cycle, basis=basis)


def model_flops(model, size: int) -> int:
    """FLOPs of one forward pass of `model` on one 3 x size x size image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` fp32 n x n matrix products, in GFLOP/s (2 n^3 each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
