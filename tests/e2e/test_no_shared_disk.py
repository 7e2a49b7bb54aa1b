"""No shared disk: the web server (gunicorn), a prediction worker, a training worker and a
site audit run as separate processes, each with private folders of its own, and share only
PostgreSQL, Redis and the S3 server (SeaweedFS). An upload is predicted with its heatmap, a
retrain registers a version that is promoted and that the prediction worker then loads from
the bucket, and a site audit runs; afterwards no process's folder holds a platform file, and
every file name a row keeps for other processes is a key in the bucket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.core.files.storage import default_storage
from rest_framework.authtoken.models import Token

from bench.launch import platform
from diagnosis import services
from diagnosis.models import (
    Evaluation,
    ModelVersion,
    Prediction,
    SiteAudit,
    Study,
    TrainingJob,
    ValidationSplit,
)
from diagnosis.roles import SYSTEM
from tests.conftest import jpeg_bytes, make_checkpoint, s3_environment
from tests.e2e.conftest import ROOT, child_env, wait_until
from tests.synthetic import write_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def private(folder: Path) -> dict[str, str]:
    """The environment that keeps a process's own files in `folder` and nowhere else."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"VAR_DIR": str(folder), "MEDIA_ROOT": str(folder / "media")}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def stored_names() -> list[str]:
    """Every file name a row keeps for another process to read: what it reads through the
    storage (uploads, heatmaps, models and their records, plots, manifests)."""
    names = [s.image.name for s in Study.objects.all()]
    for p in Prediction.objects.all():
        names += [p.heatmap.name, p.subtype_heatmap.name]
    for v in ModelVersion.objects.all():
        names += [v.file, *v.plots.values()]
        names += [value for key, value in v.train_args.items() if key.endswith("_record")]
    for owner in (Evaluation, SiteAudit):
        names += [name for row in owner.objects.all() for name in row.plots.values()]
    for split in ValidationSplit.objects.all():
        names += [split.manifest, split.selection_manifest, split.gate_manifest]
    return [name for name in names if name]


def test_web_and_workers_share_only_the_database_the_broker_and_the_bucket(
    transactional_db, broker, s3_storage, ada, rita, tmp_path
):
    env = {**child_env(), **s3_environment(s3_storage, default_storage.location)}
    web_dir, predict_dir, train_dir, audit_dir = (
        tmp_path / name for name in ("web", "predict", "train", "audit")
    )
    # The data each process reads (the base set, the site's folder) is its own input.
    base = train_dir / "base"
    write_dataset(base, 30, size=64, seed=2)
    site = tmp_path / "site-b"
    write_dataset(site, 12, size=64, seed=5)
    # Registered by this process (an admin's `manage.py register_model`): into the bucket.
    first = services.model_version_register(
        path=make_checkpoint(tmp_path / "m.pt", input_size=64), name="v1", activate=True,
        user=SYSTEM,
    )  # fmt: skip
    (tmp_path / "m.pt").unlink()

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    with platform(
        {**env, **private(web_dir)}, queue=queue, log_dir=tmp_path / "logs",
        worker_env={**private(predict_dir), "PREDICTION_HEATMAPS": "deferred"},
    ) as running:  # fmt: skip
        training = running.spawn(
            "training-worker",
            [sys.executable, "-m", "celery", "-A", "pneumo_site", "worker", "--concurrency",
             "1", "--loglevel", "INFO", "-Q", settings.TRAINING_QUEUE, "-n", "train@%h"],
            {**env, **private(train_dir), "TRAINING_BASE_DATA": str(base),
             "TRAINING_LEASE_SECONDS": "600"},
        )  # fmt: skip
        api = requests.Session()
        api.headers["Authorization"] = f"Token {Token.objects.create(user=ada).key}"

        def predicted(study_id: int, version: str) -> dict:
            def done() -> bool:
                body = api.get(f"{running.url}/api/studies/{study_id}/").json()
                prediction = body["predictions"][0]
                done.last = prediction
                return prediction["status"] == "done" and prediction["heatmap_url"] is not None

            wait_until(done, timeout=240, what=f"study {study_id} predicted by {version}")
            assert done.last["model_version"] == version
            return done.last

        def upload(seed: int) -> int:
            image = ("chest.jpg", jpeg_bytes("PNEUMONIA", seed=seed, size=128), "image/jpeg")
            answer = api.post(f"{running.url}/api/studies/", files={"image": image})
            assert answer.status_code == 202, answer.text
            return answer.json()["id"]

        # 1. An upload, stored in the bucket by the web process, predicted by the worker.
        prediction = predicted(upload(seed=1), "v1")
        heatmap = api.get(running.url + prediction["heatmap_url"])
        assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")

        # 2. A retrain on the training worker; its candidate promoted through the API.
        started = api.post(
            f"{running.url}/api/training-jobs/",
            json={"init": "active", "freeze_epochs": 1, "epochs": 1, "clean": False},
        )
        assert started.status_code == 202, started.text
        wait_until(
            lambda: TrainingJob.objects.get().status in ("succeeded", "failed"),
            timeout=400, what="the training job",
        )  # fmt: skip
        job = TrainingJob.objects.get()
        assert job.status == "succeeded", job.log + job.error + training.tail()
        candidate = job.candidate
        assert candidate.parent == first and default_storage.exists(candidate.file)
        promoted = api.post(f"{running.url}/api/models/{candidate.name}/promote/", json={})
        assert promoted.status_code == 200, promoted.text

        # 3. The prediction worker loads the new version from the bucket into its cache.
        predicted(upload(seed=2), candidate.name)
        assert (predict_dir / "model-cache" / f"{candidate.sha256}.pt").is_file()

        # 4. A site audit, a process of its own, on the new active version.
        audit = subprocess.run(
            [sys.executable, "manage.py", "site_audit", "--site", "site-b", "--data",
             str(site), "--import-user", rita.username, "--repeats", "2"],
            cwd=ROOT, env={**env, **private(audit_dir)}, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert SiteAudit.objects.get().model_version == candidate
        assert Prediction.objects.filter(status="done").count() >= 2

    # Only each worker's model cache is left in the private folders: no upload, heatmap,
    # manifest, scratch copy or log of training; what rows name for others is in the bucket.
    assert files_under(web_dir) == []
    assert files_under(predict_dir) == sorted(
        f"model-cache/{v.sha256}.pt" for v in (first, candidate)
    )
    cached = {f"model-cache/{v.sha256}.pt" for v in (first, candidate)}
    assert {f for f in files_under(train_dir) if not f.startswith("base/")} <= cached
    assert files_under(audit_dir) == [f"model-cache/{candidate.sha256}.pt"]
    names = stored_names()
    assert len(names) > 10 and not [n for n in names if Path(n).is_absolute()]
    assert [n for n in names if not default_storage.exists(n)] == []
    assert not os.path.exists(settings.MEDIA_ROOT)
