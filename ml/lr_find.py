"""Learning-rate finder (Smith 2015, as in fastai's `lr_find`): train for a few batches while
the learning rate grows exponentially, watch the smoothed loss, and read a good rate off it.

    from ml.lr_find import lr_find, save_lr_plot
    result = lr_find(model, train_loader, loss_fn, optimizer)  # weights restored afterwards
    save_lr_plot(result, "var/models/model.lr_find.png")
    lr = result.suggestion                                      # fastai's "valley"

`ml.train` runs it before training unless --lr is given. `loss_fn(model, batch)` returns the
mean loss of one batch, so the finder does not care what a batch holds. Every parameter group
of `optimizer` gets the same swept rate; run it on the frozen model, as fastai does.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

LossFn = Callable[[nn.Module, object], torch.Tensor]


@dataclass(frozen=True)
class LRFindResult:
    lrs: tuple[float, ...]  # the rate of each step taken
    losses: tuple[float, ...]  # smoothed, bias-corrected loss after each step
    suggestion: float  # what ml.train uses: the valley
    steepest: float  # where the smoothed loss falls fastest per log-rate
    valley: float  # fastai's default: halfway down the longest falling stretch of the curve
    stopped_early: bool  # the loss diverged (or became NaN) before the last step


def lr_find(
    model: nn.Module,
    batches: Iterable,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    beta: float = 0.98,
    diverge_factor: float = 4.0,
    print_freq: int = 0,
    between: Callable[[], None] | None = None,
) -> LRFindResult:
    """Sweep the rate from `start_lr` to `end_lr` over `num_iter` steps (cycling `batches`
    if they run out), stop once the smoothed loss exceeds `diverge_factor` x its best, then
    put the model and optimizer back exactly as they were. `between` is called after each
    step (ml.engine.between_batches)."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_iter < 2:
        raise ValueError(f"num_iter must be >= 2, got {num_iter}")
    # Deep copies: state_dict() returns views of the live tensors the sweep will overwrite.
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    ratio = end_lr / start_lr
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, stopped_early = 0.0, math.inf, False
    try:
        model.train()
        for i, batch in enumerate(itertools.islice(_cycle(batches), num_iter)):
            lr = start_lr * ratio ** (i / (num_iter - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if between is not None:
                between()

            # An exponential moving average, divided by (1 - beta^n) so the first steps are
            # not pulled towards the average's zero start (Adam's bias correction).
            avg = beta * avg + (1.0 - beta) * loss.item()
            smoothed = avg / (1.0 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if print_freq and (i + 1) % print_freq == 0:
                print(f"  lr_find {i + 1}/{num_iter} lr {lr:.2e} loss {smoothed:.4f}", flush=True)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * best:
                stopped_early = i + 1 < num_iter
                break
            best = min(best, smoothed)
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        model.train(was_training)

    valley, steepest = lr_suggestions(lrs, losses)
    return LRFindResult(tuple(lrs), tuple(losses), valley, steepest, valley, stopped_early)


def _cycle(batches: Iterable) -> Iterable:
    # itertools.cycle would replay cached batches; a fresh pass reshuffles and re-augments.
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find got no batches")


def lr_suggestions(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(valley, steepest) over the finite points, skipping the first tenth as fastai does:
    the smoothed loss there is still mostly its own start-up."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    points = points[len(points) // 10 :]
    if len(points) < 3:  # diverged at once: the lowest rate tried is the only safe answer
        return lrs[0], lrs[0]
    x = np.log10([lr for lr, _ in points])  # (N,)
    y = np.array([loss for _, loss in points])  # (N,)
    steepest = points[int(np.argmin(np.gradient(y, x)))][0]

    # Valley (fastai's): find the longest strictly falling subsequence of the curve (it need
    # not be contiguous, so it rides over noise) and take the point halfway along it. As in
    # fastai the stretch is measured back from its end by its length: a sparse subsequence
    # through the flat, noisy start of the curve must not drag the valley down there. A rate
    # in the valley still falls steeply yet is well short of the minimum, past which training
    # becomes unstable.
    n = len(y)
    length = [1] * n  # length[i]: longest falling subsequence ending at point i
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j]:
                length[i] = max(length[i], length[j] + 1)
    end = int(np.argmax(length))
    start = end - (length[end] - 1)
    valley_index = start + (end - start) // 2
    return points[valley_index][0], steepest


def save_lr_plot(result: LRFindResult, path: str | os.PathLike) -> Path:
    """Loss against log learning rate as a PNG, the suggestions marked."""
    # matplotlib's object API with its Agg canvas: no pyplot, so no global backend state is
    # touched in a process (a web or Celery worker) that might import this.
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    finite = [loss for loss in result.losses if math.isfinite(loss)]
    if finite:  # the divergence spike would otherwise squash the interesting part flat
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 2.5 * finite[0]) * 1.05)
    for lr, name, colour in (
        (result.valley, "valley", "tab:red"),
        (result.steepest, "steepest", "tab:green"),
    ):
        ax.axvline(lr, color=colour, linestyle="--", label=f"{name} {lr:.1e}")
    ax.legend()
    ax.set_title("LR finder" + (" (stopped: loss diverged)" if result.stopped_early else ""))
    fig.tight_layout()
    fig.savefig(path)
    return path
