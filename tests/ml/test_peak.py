"""ml.peak: the CPU's fp32 peak from /proc/cpuinfo's text, and a model's FLOPs."""

from __future__ import annotations

import pytest
from torch import nn

from ml.peak import cpu_peak, model_flops

CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: Some CPU @ 2.10GHz
cpu MHz\t\t: {mhz}
flags\t\t: fpu sse sse2 {flags}

processor\t: 1
vendor_id\t: {vendor}
"""


@pytest.mark.parametrize(
    ("vendor", "flags", "per_cycle"),
    [
        ("GenuineIntel", "avx2 fma avx512f", 64),
        ("AuthenticAMD", "avx2 fma avx512f avx512_bf16", 32),
        ("GenuineIntel", "avx2 fma", 32),
        ("GenuineIntel", "avx", 16),
    ],
)
def test_the_peak_follows_the_vector_units(vendor, flags, per_cycle):
    peak = cpu_peak(CPUINFO.format(vendor=vendor, mhz="2500.000", flags=flags), cores=2)
    assert peak.flop_per_cycle == per_cycle
    assert peak.gflops == pytest.approx(2 * 2.5 * per_cycle)
    assert f"= {peak.gflops:.0f} GFLOP/s fp32" in peak.describe()


def test_without_a_clock_reading_it_takes_the_model_names():
    peak = cpu_peak(CPUINFO.format(vendor="GenuineIntel", mhz="", flags="avx2 fma"), cores=4)
    assert peak.ghz == pytest.approx(2.1)


def test_it_counts_two_flops_per_multiply_add():
    # A 3x3 convolution, 3 -> 4 channels, padding 1 on 8x8: 8*8*4 outputs, 27 MACs each;
    # then a linear layer 4 -> 2 on the pooled features: 8 MACs.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2, bias=False),
    )
    assert model_flops(model, 8) == 2 * (8 * 8 * 4 * 27 + 8)
    assert model_flops(model, 16) == 2 * (16 * 16 * 4 * 27 + 8)
