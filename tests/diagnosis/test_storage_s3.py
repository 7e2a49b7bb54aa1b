"""Files in a real S3 server (SeaweedFS, tests/conftest.py's s3_server): uploads, heatmaps,
model files and manifests go through the bucket, nothing lands in MEDIA_ROOT, and an
outage of the server refuses uploads with a 503 that writes nothing, and holds predictions
back until the server is there again."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from diagnosis import files, model_loader, services
from diagnosis.models import Prediction, Study
from diagnosis.roles import SYSTEM
from tests.conftest import api_client_for, jpeg_bytes

pytestmark = pytest.mark.django_db(transaction=True)


def bucket_names(server) -> list[str]:
    """Every key under this test's prefix, read with boto3 straight from the server."""
    options = default_storage.__dict__.get("_wrapped") or default_storage
    prefix = options.location
    import boto3

    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
    )  # fmt: skip
    listed = client.list_objects_v2(Bucket=server.bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in listed.get("Contents", []))


def upload(client, name="chest.jpg", seed=1):
    from django.core.files.uploadedfile import SimpleUploadedFile

    image = SimpleUploadedFile(name, jpeg_bytes(seed=seed), content_type="image/jpeg")
    return client.post(reverse("api:study-list"), {"image": image}, format="multipart")


@pytest.fixture
def s3_model(s3_storage, checkpoint_path):
    version = services.model_version_register(
        path=checkpoint_path, name="s3-v1", activate=True, user=SYSTEM
    )
    yield version
    model_loader.unload()


def test_it_keeps_uploads_heatmaps_and_models_in_the_bucket(s3_storage, s3_model, alice, settings):
    settings.PREDICTION_HEATMAPS = "inline"
    response = upload(api_client_for(alice))
    assert response.status_code == 202, response.content
    study = Study.objects.get(pk=response.json()["id"])

    prediction = services.prediction_run(study.predictions.get().pk)

    assert prediction.status == Prediction.Status.DONE, prediction.error
    assert 0.0 < prediction.probability < 1.0
    names = bucket_names(s3_storage)
    assert study.image.name in names
    assert prediction.heatmap in names
    assert s3_model.file in names
    # The model came from the bucket into the cache named by its hash, once.
    assert [p.name for p in Path(settings.MODEL_CACHE_DIR).iterdir()] == [f"{s3_model.sha256}.pt"]
    assert not Path(settings.MEDIA_ROOT).exists()
    # The image and heatmap are served by the views that check rights, from the bucket.
    image = api_client_for(alice).get(reverse("api:study-image", args=[study.pk]))
    assert b"".join(image.streaming_content) == jpeg_bytes(seed=1)


def test_an_upload_while_the_storage_is_down_answers_503_and_keeps_nothing(
    s3_storage, alice, client
):
    s3_storage.stop()
    try:
        response = upload(api_client_for(alice))
        client.force_login(alice)
        page = client.post(
            reverse("study-upload"),
            {"images": ContentFile(jpeg_bytes(seed=2), name="b.jpg")},
            headers={"accept": "application/json"},
        )
    finally:
        s3_storage.start()
    assert response.status_code == 503
    assert "storage" in response.json()["detail"]
    assert response["Retry-After"] == "30"
    assert page.status_code == 503
    assert "storage" in page.json()["summary"]
    assert Study.objects.count() == 0 and Prediction.objects.count() == 0
    assert bucket_names(s3_storage) == []


def test_a_prediction_waits_out_a_storage_outage_and_is_predicted_once(
    s3_storage, s3_model, alice, settings
):
    settings.PREDICTION_HEATMAPS = "off"
    study = Study.objects.get(pk=upload(api_client_for(alice)).json()["id"])
    pending = study.predictions.get()
    model_loader.predictor_for(s3_model)  # loaded: only the image read meets the outage

    s3_storage.stop()
    try:
        assert services.prediction_run(pending.pk) is not None
        pending.refresh_from_db()
        # Not failed: back in the queue, for the sweeper to send again.
        assert pending.status == Prediction.Status.PENDING
        assert pending.claim == "" and pending.error == ""
    finally:
        s3_storage.start()

    settings.PREDICTION_REQUEUE_AFTER = 0
    done = services.prediction_run(pending.pk)
    assert done.status == Prediction.Status.DONE
    assert done.attempts == 2
    assert study.predictions.count() == 1


def test_a_cached_model_loads_while_the_storage_is_down(s3_storage, s3_model):
    first = model_loader.model_path(s3_model)
    s3_storage.stop()
    try:
        model_loader.unload()
        assert model_loader.model_path(s3_model) == first  # a hit: nothing read from S3
        model_loader.predictor_for(s3_model)
    finally:
        s3_storage.start()


def test_a_manifest_from_the_bucket_names_local_copies_removed_after_the_work(
    s3_storage, s3_model, alice, rita
):
    from ml.data import Item, read_manifest, write_manifest

    study = Study.objects.get(pk=upload(api_client_for(alice)).json()["id"])
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA", note="")
    written = write_manifest(
        Path(files.settings.SCRATCH_DIR).parent / "m.csv",
        [Item(Path("/elsewhere") / study.image.name, "PNEUMONIA", source=f"study:{study.pk}")],
    )
    stored = default_storage.save("training/m.csv", ContentFile(written.read_bytes()))

    with files.scratch_folder("test") as scratch:
        items = read_manifest(files.stored_manifest(stored))
        assert items[0].path.read_bytes() == jpeg_bytes(seed=1)
        assert items[0].path.is_relative_to(scratch)
    assert not scratch.exists()
    with pytest.raises(RuntimeError, match="scratch_folder"):
        files.local_path(study.image.name)


def test_a_batch_is_read_in_order_with_a_missing_file_failing_alone(s3_storage):
    names = [
        default_storage.save(f"studies/{i}.jpg", ContentFile(jpeg_bytes(seed=i))) for i in range(5)
    ]
    read = files.read_many([names[0], "studies/missing.jpg", *names[1:]])
    assert read[0] == jpeg_bytes(seed=0) and read[2:] == [jpeg_bytes(seed=i) for i in range(1, 5)]
    assert isinstance(read[1], Exception) and not files.is_outage(read[1])
    s3_storage.stop()
    try:
        down = files.read_many(names[:3])
    finally:
        s3_storage.start()
    assert all(files.is_outage(r) for r in down)


def test_the_benchmark_times_an_accepted_onnx_artifact_read_from_the_bucket(
    s3_storage, checkpoint_path, tmp_path
):
    from bench.speed import predictors
    from tests.synthetic import write_dataset

    version = services.model_version_register(path=checkpoint_path, name="v1", user=SYSTEM)
    write_dataset(tmp_path / "gate", 8, size=64, seed=3)
    artifact = services.runtime_artifact_create(
        version=version, runtime="onnx-fp32", data=tmp_path / "gate"
    )
    predictor, note = predictors(version, "onnx-fp32", [], str(tmp_path))
    assert note == ""  # the accepted artifact, not one built for timing
    assert predictor.predict_batch([jpeg_bytes(seed=2)])[0].label in ("NORMAL", "PNEUMONIA")
    cached = Path(model_loader.artifact_path(artifact))
    assert cached.parent == tmp_path / "model-cache" and cached.name.endswith(".onnx")


def test_the_health_check_passes_only_when_an_object_round_trips(s3_server):
    import os
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    def check(port: int, secret: str) -> int:
        env = os.environ | {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                            "AWS_SECRET_ACCESS_KEY": secret}  # fmt: skip
        return subprocess.run(
            [sys.executable, "scripts/seaweed.py", "--check", "--port", str(port), "--bucket",
             s3_server.bucket], cwd=ROOT, env=env, capture_output=True, timeout=60,
        ).returncode  # fmt: skip

    from scripts.seaweed import free_port

    assert check(s3_server.port, s3_server.secret_key) == 0
    assert check(s3_server.port, "not-the-secret") == 1
    assert check(free_port(), s3_server.secret_key) == 1  # nothing there
