from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml.lr_find import LRFindResult, lr_find, lr_suggestions, save_lr_plot


def _problem(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small BatchNorm + linear classifier and 10 batches of a separable 2-class problem."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 8, generator=g)  # (N, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # (N,)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return model, list(zip(x.split(32), y.split(32), strict=True))


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_it_suggests_a_finite_learning_rate_inside_the_sweep():
    model, batches = _problem()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = lr_find(model, batches, _loss, opt, start_lr=1e-6, end_lr=10.0, num_iter=60)

    assert isinstance(result, LRFindResult)
    assert len(result.lrs) == len(result.losses) >= 20
    assert result.lrs[0] == pytest.approx(1e-6)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False))  # exponential
    assert result.lrs[1] / result.lrs[0] == pytest.approx(result.lrs[2] / result.lrs[1])
    assert result.suggestion == result.valley
    for lr in (result.valley, result.steepest):
        assert math.isfinite(lr) and 1e-6 <= lr <= 10.0
    # Adam on this problem learns fastest around 1e-3..1e-1, not at the sweep's ends.
    assert 1e-4 <= result.valley <= 1.0


def test_it_stops_early_when_the_loss_diverges():
    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_find(model, batches, _loss, opt, start_lr=1e-4, end_lr=1e8, num_iter=100)

    assert result.stopped_early
    assert len(result.lrs) < 100
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 4 * min(result.losses[:-1])
    assert math.isfinite(result.suggestion) and result.suggestion < result.lrs[-1]


def test_it_runs_the_whole_sweep_when_the_loss_never_diverges():
    model, batches = _problem()
    opt = torch.optim.AdamW(model.parameters())
    result = lr_find(model, batches, _loss, opt, start_lr=1e-7, end_lr=1e-5, num_iter=25)
    assert not result.stopped_early
    assert len(result.lrs) == 25  # 10 batches cycled through more than twice
    assert result.lrs[-1] == pytest.approx(1e-5)


def test_it_restores_the_weights_and_the_optimizer_afterwards():
    model, batches = _problem()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _loss(model, batches[0]).backward()  # give Adam some state worth restoring
    opt.step()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats too
    adam_state = {
        k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()
    }

    lr_find(model, batches, _loss, opt, start_lr=1e-5, end_lr=100.0, num_iter=40)

    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert not model.training  # the mode it was in
    state = opt.state_dict()
    assert [g["lr"] for g in state["param_groups"]] == [3e-3]
    assert all(
        torch.equal(adam_state[k][n], state["state"][k][n])
        for k in adam_state
        for n in adam_state[k]
    )


def test_it_smooths_the_loss_without_a_start_up_bias():
    # A constant loss: the bias-corrected moving average is that constant from step 1 on
    # (uncorrected it would start at 2% of it and creep up).
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters())

    def constant(m: nn.Module, batch: object) -> torch.Tensor:
        return m.weight.sum() * 0 + 2.5

    result = lr_find(model, [None], constant, opt, num_iter=10)
    assert result.losses == pytest.approx([2.5] * 10)


def test_it_puts_the_valley_inside_the_longest_fall_and_finds_the_steepest_point():
    lrs = list(np.logspace(-7, 1, 81))
    x = np.arange(81.0)
    # Flat up to 20, a sigmoid fall to 60 that is steepest at 35, then a climb (divergence).
    fall = 1.0 - 0.5 / (1.0 + np.exp(-(x - 35.0) / 4.0))
    losses = np.where(x < 20, 1.0, np.where(x <= 60, fall, fall[60] + 0.05 * (x - 60)))
    valley, steepest = lr_suggestions(lrs, list(losses))
    assert lrs[30] <= valley <= lrs[50]  # about halfway along the fall (index ~40)
    assert steepest == pytest.approx(lrs[35])


def test_it_saves_the_plot_as_a_png(tmp_path: Path):
    model, batches = _problem()
    result = lr_find(model, batches, _loss, torch.optim.AdamW(model.parameters()), num_iter=30)
    path = save_lr_plot(result, tmp_path / "sub" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000  # axes, curve and labels, not an empty canvas


def test_it_keeps_the_valley_out_of_a_noisy_flat_start():
    lrs = list(np.logspace(-7, 1, 111))
    i = np.arange(111.0)
    # A zigzag that drifts down very slowly (every other point is a new low), then a real
    # fall from 50 to 90, then divergence. Counting the zigzag's sparse lows as the start of
    # the valley would put the suggestion on the flat part.
    flat = 1.0 + 0.01 * (-1.0) ** i - 0.0002 * i
    fall = 0.98 - 0.012 * (i - 50)
    losses = np.where(i < 50, flat, np.where(i <= 90, fall, fall[90] + 0.1 * (i - 90)))
    valley, _ = lr_suggestions(lrs, list(losses))
    assert lrs[55] <= valley <= lrs[85]
