"""Retraining as a Celery task: started through the API, run by a real worker on the
training queue, its progress visible while it runs."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from diagnosis import services
from diagnosis.models import TrainingJob
from diagnosis.roles import SYSTEM
from tests.conftest import make_checkpoint
from tests.e2e.conftest import wait_until
from tests.synthetic import write_dataset

pytestmark = pytest.mark.e2e


def test_a_retrain_started_through_the_api_runs_on_the_training_worker(
    start_worker, ada, token_client, tmp_path
):
    base = tmp_path / "base"
    write_dataset(base, 30, size=64, seed=2)
    active = services.model_version_register(
        path=make_checkpoint(tmp_path / "m.pt", input_size=64),
        name="v1",
        activate=True,
        user=SYSTEM,
    )
    # The prediction worker (its own queue) must not take training jobs; the training one does.
    predictor = start_worker()
    worker = start_worker(
        "-Q", settings.TRAINING_QUEUE, TRAINING_BASE_DATA=str(base), TRAINING_LEASE_SECONDS="600"
    )

    client = token_client(ada)
    response = client.post(
        reverse("api:training-job-list"),
        {"init": "active", "freeze_epochs": 1, "epochs": 1, "clean": False},
        format="json",
    )
    assert response.status_code == 202, response.content
    job_url = response["Location"]

    seen_running = []

    def finished() -> bool:
        body = client.get(job_url).json()
        if body["status"] == "running" and body["log"]:
            seen_running.append(body["log"])
        return body["status"] in ("succeeded", "failed")

    wait_until(finished, timeout=300, what="the training job", process=worker)
    job = TrainingJob.objects.get()
    assert job.status == "succeeded", job.log + job.error
    assert seen_running, "the log should be visible while the job runs"
    assert job.candidate.parent == active and job.candidate.gate["reason"]
    assert f"Training job {job.pk}: succeeded" in worker.output
    assert "Task diagnosis.tasks.retrain" in worker.output
    assert "Task diagnosis.tasks.retrain" not in predictor.output  # never received there
