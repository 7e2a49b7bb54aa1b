"""Training gives way to predictions: ml.engine calls its between-batches callback after every
batch, and the training worker's callback waits while a prediction runs or was just
enqueued (how long a prediction then waits is measured by the benchmark, not asserted)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch
from django.db import connection
from django.utils import timezone
from torch import nn

from diagnosis import services
from diagnosis.models import Prediction
from diagnosis.yielding import PredictionsFirst, training_policy, yielding_training
from ml import engine
from ml.heads import NO_SUBTYPE, QuestionsLoss


def batches(n: int, size: int = 4):
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        images = torch.randn(size, 3, 8, 8, generator=generator)
        targets = torch.randint(0, 2, (size,), generator=generator)
        yield images, targets, torch.ones(size), torch.full((size,), NO_SUBTYPE)


def test_every_training_and_validation_batch_calls_the_callback():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    criterion = QuestionsLoss(torch.ones(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    calls = []
    with engine.between_batches(lambda: calls.append("batch")):
        engine.train_one_epoch(model, list(batches(5)), criterion, optimizer, scheduler,
                               torch.device("cpu"), epoch=1, print_freq=0)  # fmt: skip
        assert len(calls) == 5
        val = [(x, y, s) for x, y, _, s in batches(3)]
        engine.evaluate(model, val, criterion, torch.device("cpu"), positive_index=1)
        assert len(calls) == 8
    engine.batch_done()  # outside: nothing is called
    assert len(calls) == 8


@pytest.fixture
def prediction(alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    return study.predictions.get()


def test_it_waits_while_a_prediction_runs_and_says_so(transactional_db, prediction, capsys):
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.RUNNING)

    def finish():
        time.sleep(0.6)
        Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.DONE)
        connection.close()

    worker = threading.Thread(target=finish)
    policy = PredictionsFirst(check_every=0.0)
    started = time.monotonic()
    worker.start()
    policy()
    waited = time.monotonic() - started
    worker.join()
    assert waited >= 0.5 and policy.pauses == 1
    assert "s for predictions; 1 pauses" in capsys.readouterr().out
    policy()  # nothing runs now: no pause (counted and logged, not timed: no wall-time bound)
    assert policy.pauses == 1 and capsys.readouterr().out == ""


def test_a_prediction_just_enqueued_counts_and_a_stale_one_does_not(db, prediction):
    Prediction.objects.filter(pk=prediction.pk).update(enqueued_at=timezone.now())
    from diagnosis import selectors

    assert selectors.predictions_busy()
    stale = timezone.now() - timedelta(seconds=11)  # no worker or no model: not waited for
    Prediction.objects.filter(pk=prediction.pk).update(enqueued_at=stale)
    assert not selectors.predictions_busy()
    policy = PredictionsFirst(check_every=0.0, max_pause=0.3)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.RUNNING)
    started = time.monotonic()
    policy()  # a prediction that never ends holds training back max_pause at most
    # it returned although the prediction still runs; the bound is loose, the point is that
    # it returns (a broken max_pause would hold the test for the prediction's whole run)
    assert 0.3 <= time.monotonic() - started < 5.0 and policy.pauses == 1


def test_it_can_be_turned_off(settings, capsys):
    settings.TRAINING_YIELDS = False
    assert training_policy() is None
    with yielding_training():
        assert engine.between_batches_callback() is None
    settings.TRAINING_YIELDS = True
    with yielding_training():
        assert isinstance(engine.between_batches_callback(), PredictionsFirst)
    assert "Training yields to predictions" in capsys.readouterr().out
