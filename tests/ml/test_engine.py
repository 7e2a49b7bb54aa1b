"""ml.engine's schedule helpers."""

from __future__ import annotations

import pytest
import torch

from ml.engine import one_cycle


@pytest.mark.parametrize("total_steps", range(1, 13))
@pytest.mark.parametrize("pct_start", [0.25, 0.3, 0.5])
def test_one_cycle_runs_every_step_of_a_short_schedule(total_steps, pct_start):
    """A few batches (a small site's adaptation) still make a schedule: every step is taken,
    the rate rises to max_lr and falls back far below it. torch's own scheduler divided by
    zero at 4 steps with a 0.25 warm-up."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 1e-3}])
    scheduler = one_cycle(optimizer, [1e-3], total_steps, pct_start, 25.0)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(total_steps - 1):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert len(rates) == total_steps
    assert max(rates) <= 1e-3 + 1e-12
    if total_steps >= 2:
        assert rates[-1] < max(rates) / 100  # the cycle ends far below its peak
    if pct_start * total_steps >= 2:
        assert max(rates) > rates[0]  # a warm-up of two steps or more rises
