"""The web role installs only requirements-web.txt, so the web process must never import
torch (nor ONNX Runtime, timm or matplotlib): a separate Python process loads the WSGI
application and serves every page and API read, an upload and a review, as each role, and
then lists what it imported."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from diagnosis import services
from diagnosis.models import ModelVersion, Prediction, TrainingJob
from ml.colormap import heat_layer
from tests.conftest import jpeg_bytes
from tests.e2e.conftest import ROOT, child_env

pytestmark = pytest.mark.e2e

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "matplotlib")

SERVE = """
import json, os, sys
from pneumo_site.wsgi import application  # what gunicorn loads
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

plan = json.loads(sys.argv[1])
answers = {}
for user, urls in plan["get"].items():
    client = Client()
    client.force_login(get_user_model().objects.get(username=user))
    for url in urls:
        answers[f"{user} GET {url}"] = client.get(url).status_code
uploader, radiologist = Client(), Client()
uploader.force_login(get_user_model().objects.get(username="alice"))
radiologist.force_login(get_user_model().objects.get(username="rita"))
image = SimpleUploadedFile("web.jpg", bytes.fromhex(plan["jpeg"]), "image/jpeg")
answers["alice POST upload"] = uploader.post("/studies/upload/", {"images": [image]}).status_code
answers["rita POST review"] = radiologist.post(
    f"/studies/{plan['study']}/reviews/", {"label": "NORMAL", "note": "web role"}
).status_code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(plan["heavy"]))
print("RESULT " + json.dumps({"answers": answers, "heavy": heavy}))
"""


def test_the_web_process_never_imports_torch(transactional_db, broker, alice, rita, ada):
    version = ModelVersion.objects.create(
        name="v-web", architecture="efficientnet_lite0", file="models/v-web.pt",
        sha256="2" * 64, class_names=["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA",
        preprocessing={}, threshold=0.3, is_active=True, activated_at=timezone.now(),
        subtype={"head": "two_heads", "threshold": 0.5},
    )  # fmt: skip
    upload = ContentFile(jpeg_bytes("PNEUMONIA", seed=1, size=256), name="a.jpg")
    upload.content_type = "image/jpeg"
    study = services.study_create(uploaded_by=alice, image=upload)
    buffer = io.BytesIO()
    heat_layer(np.eye(7, dtype=np.float32), (256, 256)).save(buffer, format="PNG")
    Prediction.objects.filter(study=study).update(
        status="done", probability=0.8, threshold=0.3, label="PNEUMONIA", model_version=version,
        p_bacterial=0.7, subtype="bacterial", subtype_threshold=0.5, finished_at=timezone.now(),
        heatmap=default_storage.save("heatmaps/web.png", ContentFile(buffer.getvalue())),
    )  # fmt: skip
    prediction = study.predictions.get()
    job = TrainingJob.objects.create(init="imagenet")
    s, p = study.pk, prediction.pk
    plan = {
        "get": {
            "alice": ["/", f"/studies/{s}/", f"/studies/{s}/image/", f"/studies/{s}/thumbnail.jpg",
                      f"/studies/{s}/predictions/{p}/heatmap/", "/agreement/", "/models/",
                      "/sites/", f"/models/jobs/{job.pk}/", "/api/studies/", f"/api/studies/{s}/",
                      "/api/models/", "/api/agreement/", "/api/schema/", "/api/docs/"],
            "rita": ["/worklist/", "/cleaning/", "/api/worklist/", "/worklist/next/"],
            "ada": ["/admin/", "/admin/diagnosis/study/", f"/admin/diagnosis/study/{s}/change/",
                    "/admin/diagnosis/modelversion/", "/api/training-jobs/"],
        },
        "jpeg": jpeg_bytes(seed=9).hex(),
        "study": s,
        "heavy": HEAVY,
    }  # fmt: skip
    queue = f"web-role-{uuid.uuid4().hex[:8]}"  # what the upload enqueues goes nowhere else
    done = subprocess.run(
        [sys.executable, "-c", SERVE, json.dumps(plan)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env=child_env(CELERY_TASK_DEFAULT_QUEUE=queue),
    )  # fmt: skip
    from pneumo_site.celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(queue)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    bad = {k: v for k, v in result["answers"].items() if v not in (200, 302)}
    assert not bad, bad
    assert result["answers"]["alice POST upload"] == 302
    assert result["heavy"] == [], f"the web process imported {result['heavy']}"
