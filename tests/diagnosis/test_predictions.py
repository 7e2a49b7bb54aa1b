"""Services of predictions: a real forward pass, one result for two deliveries, batches,
deferred heatmaps, leases taken back from dead workers, waiting for a model, sweeping what
the broker never got."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from diagnosis import services
from diagnosis.models import ModelVersion, Prediction
from diagnosis.roles import SYSTEM
from diagnosis.services import predictions
from diagnosis.services.predictions import predictions_claim as claim
from tests.conftest import (
    api_client_for,
    assert_outputs_vary,
    make_checkpoint,
)


def test_it_runs_a_real_prediction(alice, xray_upload, active_model):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)

    assert prediction.status == "done", prediction.error
    assert prediction.model_version == active_model
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.threshold == active_model.threshold
    expected = "PNEUMONIA" if prediction.probability >= prediction.threshold else "NORMAL"
    assert prediction.label == expected
    assert prediction.elapsed_ms > 0
    assert prediction.attempts == 1


def test_it_gives_one_result_for_two_deliveries(alice, xray_upload, active_model):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    pk = study.predictions.get().pk

    first = services.prediction_run(pk)
    second = services.prediction_run(pk)

    assert first.status == "done"
    assert second is None
    prediction = Prediction.objects.get(pk=pk)
    assert prediction.attempts == 1
    assert (prediction.probability, prediction.finished_at) == (
        first.probability,
        first.finished_at,
    )
    assert study.predictions.count() == 1


def test_it_does_not_run_a_prediction_another_worker_holds(alice, xray_upload, active_model):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = study.predictions.get()
    assert [p.pk for p in claim(prediction.pk)] == [prediction.pk]  # worker A holds it

    assert services.prediction_run(prediction.pk) is None  # worker B's duplicate delivery
    prediction.refresh_from_db()
    assert prediction.status == "running"
    assert prediction.attempts == 1


def test_it_runs_pending_predictions_as_one_batch_with_each_its_own_result(
    alice, xray_upload, active_model, settings
):
    from ml.inference import Predictor

    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 4, 0  # a batch a task
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(10)
    ]
    first = studies[0].predictions.get()

    # One task runs its own prediction and the three oldest other pending ones.
    assert services.prediction_run(first.pk).status == "done"
    statuses = [s.predictions.get().status for s in studies]
    assert statuses == ["done"] * 4 + ["pending"] * 6
    claims = {s.predictions.get().claim for s in studies[:4]}
    assert len(claims) == 1 and "" not in claims
    # The task of one already done returns None for it, but its worker is free: it takes a
    # whole batch of the oldest pending ones, then what remains.
    assert services.prediction_run(studies[1].predictions.get().pk) is None
    assert [s.predictions.get().status for s in studies] == ["done"] * 8 + ["pending"] * 2
    assert len({s.predictions.get().claim for s in studies[4:8]}) == 1
    assert services.prediction_run(studies[2].predictions.get().pk) is None
    assert [s.predictions.get().status for s in studies] == ["done"] * 10
    assert services.prediction_run(studies[8].predictions.get().pk) is None
    assert services.heatmaps_draw(quiet=0) == 10

    # Batched results equal one-by-one inference on the same checkpoint, study by study.
    assert_outputs_vary([s.predictions.get().probability for s in studies])
    predictor = Predictor.from_checkpoint(Path(settings.MEDIA_ROOT, active_model.file))
    for study in studies:
        prediction = study.predictions.get()
        alone = predictor.predict(study.image.path)
        assert prediction.probability == pytest.approx(alone.probability, abs=1e-5)
        assert prediction.label == alone.label and prediction.heatmap
        assert prediction.attempts == 1


def test_a_task_drains_a_backlog_batch_after_batch_and_stops_at_an_activation(
    alice, xray_upload, active_model, settings, monkeypatch
):
    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 2, 30
    settings.PREDICTION_DRAIN_BATCH_SIZE = 4
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(10)
    ]
    # One task runs the whole backlog: its own batch of two, then the oldest pending four,
    # twice, each a batch of its own (one claim each), without going back to the broker.
    assert services.prediction_run(studies[0].predictions.get().pk).status == "done"
    done = [s.predictions.get() for s in studies]
    assert {p.status for p in done} == {"done"} and {p.attempts for p in done} == {1}
    claims = [p.claim for p in done]
    assert [len(set(claims[a:b])) for a, b in ((0, 2), (2, 6), (6, 10))] == [1, 1, 1]
    assert len(set(claims)) == 3
    assert services.prediction_run(studies[5].predictions.get().pk) is None  # nothing left

    # Inline heatmaps (Grad-CAM's memory grows with the batch): the drain keeps the batch size.
    settings.PREDICTION_HEATMAPS = "inline"
    inline = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"i{i}.jpg", seed=100 + i))
        for i in range(6)
    ]
    services.prediction_run(inline[0].predictions.get().pk)
    done = [s.predictions.get() for s in inline]
    assert all(p.status == "done" and p.heatmap for p in done)
    assert [len({p.claim for p in done[a : a + 2]}) for a in (0, 2, 4)] == [1, 1, 1]
    assert len({p.claim for p in done}) == 3

    # Another version activated meanwhile: the drain records its batch and claims no more.
    settings.PREDICTION_HEATMAPS = "off"
    later = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"l{i}.jpg", seed=200 + i))
        for i in range(6)
    ]
    run_batch = predictions._run_batch

    def activation_meanwhile(*args):
        ModelVersion.objects.filter(pk=active_model.pk).update(is_active=False)
        return run_batch(*args)

    monkeypatch.setattr(predictions, "_run_batch", activation_meanwhile)
    services.prediction_run(later[0].predictions.get().pk)
    assert [s.predictions.get().status for s in later] == ["done"] * 2 + ["pending"] * 4


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_helper_records_and_claims_while_a_batch_runs(
    alice, xray_upload, active_model, settings, monkeypatch
):
    import threading

    from ml.inference import Predictor

    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 2, 30
    settings.PREDICTION_DRAIN_BATCH_SIZE = 4
    steps = []  # (step, in this thread, ids) in the order each thread ran them
    for name in ("_record_and_claim", "_predict", "_read"):
        step = getattr(predictions, name)

        def traced(claimed, *args, step=step, name=name, **kwargs):
            ids = [p.pk for p in claimed.rows] if claimed else []
            steps.append((name, threading.current_thread() is threading.main_thread(), ids))
            return step(claimed, *args, **kwargs)

        monkeypatch.setattr(predictions, name, traced)

    def drain(ahead: str, n: int = 10):
        settings.PREDICTION_DRAIN_AHEAD = ahead
        studies = [
            services.study_create(uploaded_by=alice, image=xray_upload(f"{ahead}{i}.jpg"))
            for i in range(n)
        ]
        steps.clear()
        assert services.prediction_run(studies[0].predictions.get().pk).status == "done"
        done = [s.predictions.get() for s in studies]
        assert {p.status for p in done} == {"done"} and {p.attempts for p in done} == {1}
        # A claim per batch: the task's two, then the oldest pending four at a time.
        claims = [p.claim for p in done]
        batches = [claims[:2]] + [claims[a : a + 4] for a in range(2, n, 4)]
        assert [len(set(b)) for b in batches] == [1] * len(batches)
        assert len(set(claims)) == len(batches)
        here = [(name, rows) for name, main, rows in steps if main]
        helper = [(name, rows) for name, main, rows in steps if not main]
        return studies, done, [p.pk for p in done], here, helper

    # Batch N runs here while the helper records N-1 and claims N+1; the last is recorded
    # here once it has run.
    studies, done, ids, here, helper = drain("claims")
    assert here == [
        ("_read", ids[:2]), ("_predict", ids[:2]),
        ("_read", ids[2:6]), ("_predict", ids[2:6]),
        ("_read", ids[6:]), ("_predict", ids[6:]),
        ("_record_and_claim", ids[6:]),
    ]  # fmt: skip
    assert (
        helper
        == [
            ("_record_and_claim", []),  # nothing to record yet: claims the second batch
            ("_record_and_claim", ids[:2]),  # and claims the third
            ("_record_and_claim", ids[2:6]),  # nothing left to claim
        ]
    )
    # reads: the helper also reads the next batch's images.
    _, _, ids, here, helper = drain("reads")
    assert here == [
        ("_read", ids[:2]), ("_predict", ids[:2]), ("_predict", ids[2:6]),
        ("_predict", ids[6:]), ("_record_and_claim", ids[6:]),
    ]  # fmt: skip
    assert helper == [
        ("_record_and_claim", []), ("_read", ids[2:6]),
        ("_record_and_claim", ids[:2]), ("_read", ids[6:]),
        ("_record_and_claim", ids[2:6]),
    ]  # fmt: skip
    # off: every step in this thread, in turn.
    _, _, ids, here, helper = drain("off", n=6)
    assert helper == [] and here == [
        ("_read", ids[:2]), ("_predict", ids[:2]), ("_record_and_claim", ids[:2]),
        ("_read", ids[2:]), ("_predict", ids[2:]), ("_record_and_claim", ids[2:]),
    ]  # fmt: skip

    # The same results as one image at a time.
    assert_outputs_vary([p.probability for p in done])
    predictor = Predictor.from_checkpoint(Path(settings.MEDIA_ROOT, active_model.file))
    for study, prediction in zip(studies, done, strict=True):
        alone = predictor.predict(study.image.path)
        assert prediction.probability == pytest.approx(alone.probability, abs=1e-5)


@pytest.mark.django_db(transaction=True)
def test_a_batch_claimed_ahead_of_a_model_that_fails_goes_back_to_pending_with_a_task(
    alice, xray_upload, active_model, settings, monkeypatch
):
    Path(settings.MEDIA_ROOT, active_model.file).unlink()
    settings.PREDICTION_BATCH_SIZE = settings.PREDICTION_DRAIN_BATCH_SIZE = 2
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(5)
    ]
    sent = []
    monkeypatch.setattr(
        predictions, "prediction_enqueue", lambda pk, covers=(): sent.append([pk, *covers])
    )
    prediction = services.prediction_run(studies[0].predictions.get().pk)
    assert prediction.status == "failed" and prediction.model_error
    rows = [s.predictions.get() for s in studies]
    assert [p.status for p in rows] == ["failed", "failed", "pending", "pending", "pending"]
    # The next batch was claimed while this one failed: given back as if never taken.
    assert [(p.claim, p.started_at, p.attempts) for p in rows[2:]] == [("", None, 0)] * 3
    assert sent == [[rows[2].pk, rows[3].pk]]


def test_a_drain_ends_well_inside_the_tasks_soft_time_limit(
    alice, xray_upload, active_model, settings
):
    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 2, 3600
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 0  # half of it is already over: no next batch
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(3)
    ]
    services.prediction_run(studies[0].predictions.get().pk)
    assert [s.predictions.get().status for s in studies] == ["done", "done", "pending"]


def test_it_records_a_burst_first_and_draws_its_heatmaps_once_nothing_waits(
    alice, xray_upload, active_model, settings
):
    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 2, 0
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(3)
    ]
    services.prediction_run(studies[0].predictions.get().pk)

    # A prediction still waits: the batch's results are recorded, their heatmaps owed.
    first_two = [s.predictions.get() for s in studies[:2]]
    assert [(p.status, p.heatmap_due, p.heatmap.name) for p in first_two] == [
        ("done", True, ""),
        ("done", True, ""),
    ]
    body = api_client_for(alice).get(reverse("api:study-detail", args=[studies[0].pk])).json()
    assert body["prediction"]["heatmap_due"] is True and body["prediction"]["heatmap_url"] is None

    # The last one leaves nothing waiting, but it has just finished: the heatmaps wait for
    # the quiet period, so that an upload following it is not held up by them.
    services.prediction_run(studies[2].predictions.get().pk)
    assert services.heatmaps_draw() == 0
    assert all(s.predictions.get().heatmap_due for s in studies)

    # The worker's ask waits the quiet period out, then draws all three, once.
    last_finish = max(s.predictions.get().finished_at for s in studies)
    assert services.heatmaps_draw(quiet=0.3, wait=True) == 3
    assert timezone.now() - last_finish >= timedelta(seconds=0.3)  # the quiet was waited out
    predictions = [s.predictions.get() for s in studies]
    assert all(p.heatmap and not p.heatmap_due for p in predictions)
    assert services.heatmaps_draw(quiet=0) == 0  # nothing owed twice


def test_an_ask_for_heatmaps_gives_way_to_a_waiting_prediction(
    alice, xray_upload, active_model, settings, monkeypatch
):
    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 1, 0
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(2)
    ]
    services.prediction_run(studies[0].predictions.get().pk)  # the other one waits
    sleeps = []
    monkeypatch.setattr(predictions.time, "sleep", sleeps.append)
    assert services.heatmaps_draw(quiet=5, wait=True) == 0
    assert sleeps == []  # not waited out: the prediction goes first
    assert studies[0].predictions.get().heatmap_due


def test_a_batch_owing_heatmaps_asks_for_them_after_commit(
    alice, xray_upload, active_model, settings, django_capture_on_commit_callbacks
):
    from diagnosis.services import predictions

    study = services.study_create(uploaded_by=alice, image=xray_upload())
    with django_capture_on_commit_callbacks() as callbacks:
        services.prediction_run(study.predictions.get().pk)
    assert predictions.heatmaps_schedule in callbacks

    settings.PREDICTION_HEATMAPS = "off"
    other = services.study_create(uploaded_by=alice, image=xray_upload("b.jpg"))
    with django_capture_on_commit_callbacks() as callbacks:
        services.prediction_run(other.predictions.get().pk)
    assert predictions.heatmaps_schedule not in callbacks


def test_a_deferred_heatmap_is_the_one_explain_draws(alice, xray_upload, active_model, settings):
    from ml.inference import Predictor

    study = services.study_create(uploaded_by=alice, image=xray_upload())
    services.prediction_run(study.predictions.get().pk)
    services.heatmaps_draw(quiet=0)

    predictor = Predictor.from_checkpoint(Path(settings.MEDIA_ROOT, active_model.file))
    ((_, expected),) = predictor.explain_batch([study.image.path])
    drawn = Image.open(study.predictions.get().heatmap.path)
    # The platform keeps the colour layer (RGBA); laid over the image at explain()'s alpha
    # it is explain()'s overlay: same map, same place.
    assert drawn.mode == "RGBA" and drawn.size == expected.size
    rgba = np.asarray(drawn, np.float32)
    alpha = rgba[..., 3:] / 255.0
    gray = np.asarray(Image.open(study.image.path).convert("L"), np.float32)[..., None]
    heat = (np.asarray(expected, np.float32) - 0.55 * gray) / 0.45  # explain(): alpha 0.45
    colour = rgba[..., :3]
    assert np.abs(heat - colour).max() <= 4  # rounding, amplified by 1 / 0.45
    assert alpha.max() == 1.0 and alpha.min() < 0.5  # opaque at its peak, clear where cold


def test_it_drops_owed_heatmaps_the_model_cannot_draw_and_keeps_the_results(
    alice, xray_upload, active_model, settings
):
    from diagnosis import model_loader

    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 1, 0
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(2)
    ]
    services.prediction_run(studies[0].predictions.get().pk)  # one waits: heatmap owed
    Path(settings.MEDIA_ROOT, active_model.file).unlink()  # then the model file goes
    model_loader.unload()
    assert services.heatmaps_draw(quiet=0) == 0  # a prediction waits: nothing is drawn yet
    assert studies[0].predictions.get().heatmap_due

    Prediction.objects.filter(status="pending").update(status="failed")
    assert services.heatmaps_draw(quiet=0) == 0
    first = studies[0].predictions.get()
    assert (first.status, first.heatmap_due, first.heatmap.name) == ("done", False, "")


def test_an_unreadable_stored_image_fails_alone_and_its_batch_is_recorded(
    alice, xray_upload, active_model, settings
):
    settings.PREDICTION_BATCH_SIZE = 3
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(3)
    ]
    Path(studies[1].image.path).write_bytes(b"\xff\xd8 not a JPEG any more")  # the disk decayed

    services.prediction_run(studies[0].predictions.get().pk)

    good, bad, other = (s.predictions.get() for s in studies)
    assert (good.status, other.status, bad.status) == ("done", "done", "failed")
    assert 0.0 <= good.probability <= 1.0 and good.label and good.error == ""
    assert bad.error.startswith("ImageDecodeError") and not bad.model_error
    assert (bad.label, bad.probability, bad.heatmap_due) == ("", None, False)
    assert bad.model_version == active_model and bad.finished_at is not None


def test_a_batch_leaves_a_row_another_worker_took_over_as_that_worker_wrote_it(
    alice, xray_upload, active_model, settings, monkeypatch
):
    from diagnosis.services import predictions

    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_HEATMAPS = 3, "inline"
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(3)
    ]
    taken = studies[2].predictions.get()
    run_batch = predictions._run_batch

    def slow_batch(*args):
        results = run_batch(*args)
        # Meanwhile this worker's lease ran out and another worker took one row and finished.
        Prediction.objects.filter(pk=taken.pk).update(
            claim="other", status="done", probability=0.125, heatmap="heatmaps/other.png"
        )
        return results

    monkeypatch.setattr(predictions, "_run_batch", slow_batch)
    heatmaps = Path(settings.MEDIA_ROOT) / "heatmaps"
    before = set(heatmaps.glob("*.png"))
    services.prediction_run(studies[0].predictions.get().pk)

    taken.refresh_from_db()
    assert (taken.claim, taken.probability, taken.heatmap.name) == (
        "other", 0.125, "heatmaps/other.png"
    )  # fmt: skip
    ours = [s.predictions.get() for s in studies[:2]]
    assert all(p.status == "done" and p.claim not in ("", "other") for p in ours)
    # The heatmap drawn for the row the other worker took is not left behind.
    drawn = {p.name for p in set(heatmaps.glob("*.png")) - before}
    assert drawn == {Path(p.heatmap.name).name for p in ours}


def test_an_isolated_upload_runs_at_once_as_a_batch_of_one(
    alice, xray_upload, active_model, settings
):
    settings.PREDICTION_BATCH_SIZE = 16
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    result = services.prediction_run(study.predictions.get().pk)
    assert result.status == "done"


def test_it_takes_back_a_prediction_whose_worker_died(alice, xray_upload, active_model, settings):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = study.predictions.get()
    claim(prediction.pk)
    settings.PREDICTION_LEASE_SECONDS = -1  # the lease is over

    result = services.prediction_run(prediction.pk)
    assert result.status == "done"
    assert result.attempts == 2


def test_it_waits_for_a_model_then_runs_on_activation(
    alice, ada, xray_upload, checkpoint_path, broker, django_capture_on_commit_callbacks
):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    pk = study.predictions.get().pk

    assert services.prediction_run(pk) is None
    assert Prediction.objects.get(pk=pk).status == "pending"
    assert services.predictions_sweep() == 0  # nothing to send while no model is active

    version = services.model_version_register(path=checkpoint_path, name="v1")
    assert not version.is_active
    with django_capture_on_commit_callbacks(execute=True):
        services.model_version_activate(version=version, user=ada)
    assert Prediction.objects.get(pk=pk).enqueued_at is not None

    assert services.prediction_run(pk).status == "done"


def test_it_marks_a_prediction_failed_when_the_model_file_is_gone(
    alice, xray_upload, active_model, tmp_path, settings
):
    Path(settings.MEDIA_ROOT, active_model.file).unlink()
    settings.PREDICTION_BATCH_SIZE = settings.PREDICTION_DRAIN_BATCH_SIZE = 1
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    waiting = services.study_create(uploaded_by=alice, image=xray_upload("b.jpg", seed=9))

    prediction = services.prediction_run(study.predictions.get().pk)
    assert prediction.status == "failed" and prediction.model_error
    # The task drains no further: the next batch would fail alike (its own task takes it).
    assert waiting.predictions.get().status == "pending"
    assert "The active model cannot be used" in prediction.error and "missing" in prediction.error
    assert prediction.label == "" and prediction.probability is None

    # Once a valid model is active, the same prediction runs again and succeeds.
    fixed = services.model_version_register(
        path=make_checkpoint(tmp_path / "fixed.pt", seed=5), name="fixed"
    )
    services.model_version_activate(version=fixed, user=SYSTEM)
    prediction.refresh_from_db()
    assert (prediction.status, prediction.error) == ("pending", "")
    prediction = services.prediction_run(prediction.pk)
    assert prediction.status == "done" and prediction.model_version == fixed


def test_a_corrupted_model_file_fails_clearly_and_never_gives_a_result(
    alice, xray_upload, active_model
):
    path = Path(settings.MEDIA_ROOT, active_model.file)
    path.write_bytes(path.read_bytes()[:1000])
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)
    assert prediction.status == "failed" and prediction.model_error
    assert "does not match its registered sha256" in prediction.error
    assert prediction.label == "" and prediction.probability is None


def test_it_sweeps_predictions_the_broker_never_got(
    alice, xray_upload, active_model, broker, settings
):
    study = services.study_create(uploaded_by=alice, image=xray_upload())  # on_commit never ran
    prediction = study.predictions.get()
    assert prediction.enqueued_at is None
    settings.PREDICTION_REQUEUE_AFTER = 0

    assert services.predictions_sweep() == 1
    prediction.refresh_from_db()
    assert prediction.enqueued_at is not None


def test_the_sweeper_sends_a_task_per_batch_of_a_waiting_backlog_and_every_one_is_predicted(
    alice, xray_upload, active_model, broker, settings, monkeypatch
):
    from diagnosis.services import predictions

    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_REQUEUE_AFTER = 4, 0
    studies = [  # on_commit never ran: the broker never got them
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(10)
    ]
    waiting = [s.predictions.get().pk for s in studies]
    dead = services.study_create(uploaded_by=alice, image=xray_upload("dead.jpg"))
    held = dead.predictions.get()
    predictions.predictions_claim(held.pk)  # a worker took it, then died
    settings.PREDICTION_LEASE_SECONDS = -1
    sent = []
    send = predictions.app.send_task
    monkeypatch.setattr(
        predictions.app,
        "send_task",
        lambda name, args, **kw: sent.append(args[0]) or send(name, args, **kw),
    )

    assert services.predictions_sweep() == 4
    # The oldest of each batch of the waiting ones (10 = 4 + 4 + 2), and the one taken back.
    assert sent == [waiting[0], waiting[4], waiting[8], held.pk]
    assert not Prediction.objects.filter(pk__in=waiting, enqueued_at__isnull=True).exists()

    for pk in sent:  # what the worker does with those tasks
        services.prediction_run(pk)
    assert set(Prediction.objects.values_list("status", flat=True)) == {"done"}
