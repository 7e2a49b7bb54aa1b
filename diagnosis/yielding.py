"""Training gives way to predictions on a shared machine: two PyTorch processes that each use
every core run about ten times slower than one alone, so a retrain running beside the
prediction worker would make clinical predictions wait behind its batches.

The training worker wraps ml.train in `ml.engine.between_batches(PredictionsFirst())`: after
every batch (training, LR finder, validation) it looks, at most every `check_every` seconds,
whether a prediction is running or was just enqueued (selectors.predictions_busy), and if so
waits until none is, for at most `max_pause` (30) seconds at a time. A prediction that arrives
mid-batch waits for that one batch; the job's log says each time training paused, and for
how long in all. TRAINING_YIELDS=false turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from diagnosis import selectors


class PredictionsFirst:
    def __init__(self, *, check_every: float = 0.25, poll: float = 0.05, max_pause: float = 30.0):
        self.check_every, self.poll, self.max_pause = check_every, poll, max_pause
        self.pauses, self.paused_seconds = 0, 0.0
        self._checked = float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return
        self._checked = now
        if not selectors.predictions_busy():
            return
        start = now
        while selectors.predictions_busy() and time.monotonic() - start < self.max_pause:
            time.sleep(self.poll)
        waited = time.monotonic() - start
        self.pauses += 1
        self.paused_seconds += waited
        self._checked = time.monotonic()
        print(
            f"  (paused {waited:.1f} s for predictions; {self.pauses} pauses, "
            f"{self.paused_seconds:.0f} s in all)",
            flush=True,
        )


def training_policy():
    """The between-batches callback of this process's trainings, or None (TRAINING_YIELDS)."""
    if not settings.TRAINING_YIELDS:
        return None
    print(
        "Training yields to predictions: it pauses between batches while a prediction "
        "waits or runs (TRAINING_YIELDS).",
        flush=True,
    )
    return PredictionsFirst()


@contextmanager
def yielding_training() -> Iterator[None]:
    """Run an ml.train inside: it gives way to predictions as training_policy() says."""
    policy = training_policy()
    if policy is None:
        yield
        return
    from ml.engine import between_batches

    with between_batches(policy):
        yield
