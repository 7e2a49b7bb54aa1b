"""Faults with real processes: a worker killed mid-prediction, Redis stopped while uploads
arrive, and Redis stopped while a prediction runs. Nothing accepted is lost, and nothing is
predicted twice."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from diagnosis.models import Prediction
from tests.conftest import jpeg_bytes
from tests.e2e.conftest import ROOT, Process, child_env, wait_until

pytestmark = pytest.mark.e2e

UPLOAD = """
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from diagnosis import services
for path in {paths!r}:
    study = services.study_create(
        uploaded_by=get_user_model().objects.get(username="alice"),
        image=SimpleUploadedFile(path.rsplit("/", 1)[-1], open(path, "rb").read()),
    )
    print("STUDY", study.pk)
"""


def upload_in_a_web_process(paths: list[str], **env: str) -> tuple[list[int], str]:
    """Upload as a separate web process would (its own broker connection); (ids, stderr)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", UPLOAD.format(paths=paths)],
        cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [
        int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("STUDY")
    ], result.stderr


def images(tmp_path, n: int, first_seed: int = 0) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"up-{first_seed + i}.jpg"
        path.write_bytes(jpeg_bytes("PNEUMONIA", seed=first_seed + i))
        paths.append(str(path))
    return paths


def status_of(study_id: int) -> str:
    return Prediction.objects.get(study_id=study_id).status


def test_a_worker_killed_mid_prediction_leaves_one_result_after_a_restart(
    start_worker, active_model, alice, tmp_path
):
    # A short lease, so that the restarted worker's sweeper takes the orphan back soon.
    fast = {"PREDICTION_LEASE_SECONDS": "4", "SWEEP_INTERVAL_SECONDS": "1"}
    [study_id], _ = upload_in_a_web_process(images(tmp_path, 1))
    worker = start_worker(**fast)
    # A fresh worker takes the queued prediction before its request to load the model early,
    # so it imports torch and loads the model after claiming the prediction: kill the whole
    # worker while the prediction is running.
    wait_until(lambda: status_of(study_id) == "running", timeout=60, what="running", process=worker)
    worker.kill()
    assert status_of(study_id) == "running"

    worker = start_worker("--beat", **fast)
    wait_until(lambda: status_of(study_id) == "done", timeout=90, what="done", process=worker)
    # The heatmap is drawn after the result is recorded (PREDICTION_HEATMAPS=deferred).
    drawn = Prediction.objects.filter(study_id=study_id, heatmap_due=False)
    wait_until(drawn.exists, timeout=60, what="the heatmap", process=worker)
    predictions = Prediction.objects.filter(study_id=study_id)
    assert predictions.count() == 1
    prediction = predictions.get()
    assert prediction.attempts == 2 and prediction.label and prediction.heatmap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server_binary() -> str:
    """These tests start and kill their own Redis: without redis-server, a skip saying so, and
    a failure in CI (REQUIRE_SERVICES), where a missing service is a failure."""
    path = shutil.which("redis-server")
    if path is None:
        if os.getenv("REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed: apt-get install redis-server to run this")
    return path


def _start_redis(port: int) -> Process:
    server = Process(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        child_env(),
    )  # fmt: skip
    server.wait_for_output("Ready to accept connections", timeout=20)
    return server


@pytest.mark.usefixtures("redis_server_binary")
def test_uploads_made_while_redis_is_down_are_all_predicted_once_it_is_back(
    start_worker, active_model, alice, tmp_path
):
    port = _free_port()
    broker = {"CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    redis = _start_redis(port)
    try:
        worker = start_worker(
            "--beat", SWEEP_INTERVAL_SECONDS="1", PREDICTION_REQUEUE_AFTER="2", **broker
        )
        [before], _ = upload_in_a_web_process(images(tmp_path, 1), **broker)
        wait_until(lambda: status_of(before) == "done", timeout=90, what="done", process=worker)

        redis.kill()  # Redis goes away; uploads keep coming
        during, stderr = upload_in_a_web_process(images(tmp_path, 3, first_seed=10), **broker)
        assert len(during) == 3 and "Broker unavailable" in stderr
        time.sleep(2)
        assert {status_of(i) for i in during} == {"pending"}

        redis = _start_redis(port)  # back, empty: the sweeper re-sends what it never got
        wait_until(
            lambda: {status_of(i) for i in during} == {"done"},
            timeout=120,
            what="the uploads made during the outage",
            process=worker,
        )
        assert Prediction.objects.filter(study_id__in=during).count() == 3
    finally:
        redis.stop()


@pytest.mark.usefixtures("redis_server_binary")
def test_a_prediction_running_when_redis_dies_is_done_once_after_a_restart(
    start_worker, active_model, alice, tmp_path
):
    port = _free_port()
    fast = {
        "PREDICTION_LEASE_SECONDS": "4", "SWEEP_INTERVAL_SECONDS": "1",
        "PREDICTION_REQUEUE_AFTER": "2", "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
    }  # fmt: skip
    redis = _start_redis(port)
    try:
        [study_id], _ = upload_in_a_web_process(images(tmp_path, 1), **fast)
        worker = start_worker("--beat", **fast)
        # A fresh worker's first task (the queued upload) loads the model after claiming:
        # Redis dies meanwhile, with the task's message unacknowledged (acks_late).
        wait_until(lambda: status_of(study_id) == "running", timeout=60, what="running")
        redis.kill()
        time.sleep(3)
        # kombu 5.7 may end the worker here; make up and docker-compose start it again.
        if worker.proc.poll() is not None:
            worker = start_worker("--beat", **fast)
        redis = _start_redis(port)  # back, empty: the unacknowledged message is gone with it

        wait_until(lambda: status_of(study_id) == "done", timeout=120, what="done", process=worker)
        predictions = Prediction.objects.filter(study_id=study_id)
        assert predictions.count() == 1 and predictions.get().label
        assert predictions.get().attempts <= 2
        # And the worker takes new work from the Redis that came back.
        [after], _ = upload_in_a_web_process(images(tmp_path, 1, first_seed=20), **fast)
        wait_until(lambda: status_of(after) == "done", timeout=60, what="the next", process=worker)
    finally:
        redis.stop()
