"""Uploads through the API, predicted by a real `celery worker` process on the real broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from django.urls import reverse

from diagnosis.models import Prediction, Study
from diagnosis.roles import SYSTEM
from diagnosis.tasks import predict
from tests.conftest import assert_outputs_vary, jpeg_bytes
from tests.e2e.conftest import ROOT, child_env, wait_until

pytestmark = pytest.mark.e2e


def api_upload(client, name: str = "chest.jpg", seed: int = 0) -> int:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(
        reverse("api:study-list"),
        {"image": SimpleUploadedFile(name, jpeg_bytes("PNEUMONIA", seed=seed))},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    return response.json()["id"]


def prediction_of(study_id: int) -> Prediction:
    return Prediction.objects.get(study_id=study_id)


def test_it_predicts_uploads_in_a_real_worker(start_worker, active_model, alice, token_client):
    from ml.inference import Predictor

    worker = start_worker()
    client = token_client(alice)
    ids = [api_upload(client, f"{i}.jpg", seed=i) for i in range(3)]

    wait_until(
        lambda: all(prediction_of(i).status == "done" for i in ids),
        timeout=90,
        what="three predictions",
        process=worker,
    )
    # The worker's answer is the real network's: the same checkpoint run here agrees.
    assert_outputs_vary([prediction_of(i).probability for i in ids])
    predictor = Predictor.from_checkpoint(active_model and _model_path(active_model))
    for study_id in ids:
        prediction = prediction_of(study_id)
        expected = predictor.predict(Study.objects.get(pk=study_id).image.path)
        assert prediction.probability == pytest.approx(expected.probability, abs=1e-5)
        assert prediction.label == expected.label
        assert prediction.model_version == active_model
        body = client.get(reverse("api:study-detail", args=[study_id])).json()
        assert body["prediction"]["label"] == expected.label
    # One model load for the process, not one per task.
    assert worker.output.count("Loaded model test-v1") == 1


def _model_path(version) -> str:
    from django.core.files.storage import default_storage

    return default_storage.path(version.file)


def test_it_gives_one_result_for_a_duplicate_delivery(
    start_worker, active_model, alice, token_client
):
    worker = start_worker()
    study_id = api_upload(token_client(alice))
    wait_until(
        lambda: prediction_of(study_id).status == "done",
        timeout=60,
        what="prediction",
        process=worker,
    )
    first = prediction_of(study_id)

    predict.delay(first.pk)  # the broker delivers the same job again
    predict.delay(first.pk)
    wait_until(
        lambda: worker.output.count("Task diagnosis.tasks.predict") >= 6,
        timeout=30,
        what="the duplicate deliveries to be consumed",
        process=worker,
    )

    again = prediction_of(study_id)
    assert Prediction.objects.filter(study_id=study_id).count() == 1
    assert (again.attempts, again.finished_at, again.probability) == (
        1,
        first.finished_at,
        first.probability,
    )


def test_it_holds_uploads_until_a_model_is_activated(
    start_worker, checkpoint_path, alice, token_client
):
    from diagnosis import services

    worker = start_worker()
    study_id = api_upload(token_client(alice))
    wait_until(
        # The predict task's own line: "Task diagnosis.tasks.predict[<id>] succeeded in ...";
        # another task's "succeeded" (load_model's, at start) must not count.
        lambda: re.search(r"Task diagnosis\.tasks\.predict\[[^\]]+\] succeeded", worker.output),
        timeout=30,
        what="the job to be consumed",
        process=worker,
    )
    assert prediction_of(study_id).status == "pending"

    services.model_version_register(path=checkpoint_path, name="late", activate=True, user=SYSTEM)

    wait_until(
        lambda: prediction_of(study_id).status == "done",
        timeout=60,
        what="prediction after activation",
        process=worker,
    )
    assert prediction_of(study_id).model_version.name == "late"


UPLOAD_WITH_BROKER_DOWN = """
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from diagnosis import services
data = open({path!r}, "rb").read()
study = services.study_create(
    uploaded_by=get_user_model().objects.get(username="alice"),
    image=SimpleUploadedFile("outage.jpg", data),
)
print("STUDY", study.pk)
"""


def test_it_keeps_an_upload_made_while_the_broker_is_down(
    start_worker, active_model, alice, tmp_path
):
    image = tmp_path / "outage.jpg"
    image.write_bytes(jpeg_bytes("NORMAL", seed=3))
    # A web process whose broker does not answer: nothing listens on port 1.
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            UPLOAD_WITH_BROKER_DOWN.format(path=str(image)),
        ],
        cwd=ROOT,
        env=child_env(CELERY_BROKER_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Broker unavailable" in result.stderr
    study_id = int(result.stdout.split("STUDY")[1])
    prediction = prediction_of(study_id)
    assert (prediction.status, prediction.enqueued_at) == ("pending", None)

    # The broker is back: the worker's beat schedule sweeps the forgotten job in.
    worker = start_worker("--beat", SWEEP_INTERVAL_SECONDS="1", PREDICTION_REQUEUE_AFTER="0")
    wait_until(
        lambda: prediction_of(study_id).status == "done",
        timeout=60,
        what="the swept prediction",
        process=worker,
    )


def test_it_switches_a_running_worker_to_a_newly_active_model(
    start_worker, active_model, alice, token_client, tmp_path
):
    from diagnosis import services
    from tests.conftest import make_checkpoint

    worker = start_worker()
    client = token_client(alice)
    first = api_upload(client, "before.jpg")
    wait_until(
        lambda: prediction_of(first).status == "done", timeout=60, what="first", process=worker
    )

    newer = services.model_version_register(
        path=make_checkpoint(tmp_path / "v2.pt", seed=2, threshold=0.3),
        name="test-v2",
        activate=True,
        user=SYSTEM,
    )
    second = api_upload(client, "after.jpg", seed=1)
    wait_until(
        lambda: prediction_of(second).status == "done", timeout=60, what="second", process=worker
    )

    assert prediction_of(first).model_version == active_model
    assert prediction_of(second).model_version == newer
    assert prediction_of(second).threshold == 0.3
    assert worker.output.count("Loaded model test-v2") == 1  # no restart, one load


def test_a_prediction_worker_loads_the_active_model_before_the_first_upload(
    start_worker, active_model, alice, token_client
):
    worker = start_worker()
    worker.wait_for_output(f"Model {active_model.name} loaded before the first upload", 60)

    study_id = api_upload(token_client(alice))
    done = lambda: prediction_of(study_id).status == "done"  # noqa: E731
    wait_until(done, timeout=30, what="done", process=worker)
    # The upload found the model loaded: its prediction took no model load.
    assert worker.output.count("Loaded model") == 1
