"""Services of uploads, reviews and the model registry: what they store, what they refuse
(leaving nothing behind), and the roles they check."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import SimpleUploadedFile

from diagnosis import services
from diagnosis.models import ModelVersion, Prediction, Review, Study
from diagnosis.roles import SYSTEM
from diagnosis.services import predictions
from diagnosis.validation import UploadRejected
from tests.conftest import (
    jpeg_bytes,
    make_checkpoint,
    png_bytes,
)


def stored_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT) / "studies"
    return {p.name for p in root.glob("*")} if root.exists() else set()


def test_it_stores_an_upload_with_a_pending_prediction(alice, xray_upload):
    study = services.study_create(
        uploaded_by=alice, image=xray_upload("../../evil name é.jpg", seed=0)
    )

    assert study.original_filename == "evil name é.jpg"
    assert study.image.name.startswith("studies/") and ".." not in study.image.name
    assert (study.width, study.height) == (256, 256)
    assert study.content_type == "image/jpeg"
    assert [p.status for p in study.predictions.all()] == ["pending"]
    assert Path(study.image.path).read_bytes() == jpeg_bytes("NORMAL", seed=0)


def test_it_accepts_png(alice):
    upload = SimpleUploadedFile("x.png", png_bytes(), content_type="image/png")
    study = services.study_create(uploaded_by=alice, image=upload)
    assert study.content_type == "image/png"
    assert study.image.name.endswith(".png")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is text, not an image", "not a readable"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "not a readable"),
        (jpeg_bytes()[:2000], "truncated"),
        (png_bytes()[:-200], "truncated"),
    ],
    ids=["empty", "text", "pdf", "truncated-jpeg", "truncated-png"],
)
def test_it_refuses_bad_uploads_leaving_nothing_behind(alice, content, reason):
    before = stored_files()
    with pytest.raises(UploadRejected, match=reason):
        services.study_create(uploaded_by=alice, image=SimpleUploadedFile("x.jpg", content))
    assert Study.objects.count() == 0
    assert Prediction.objects.count() == 0
    assert stored_files() == before


def test_it_refuses_images_above_the_pixel_limit(alice, settings):
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    with pytest.raises(UploadRejected, match="above the limit"):
        services.study_create(
            uploaded_by=alice, image=SimpleUploadedFile("x.jpg", jpeg_bytes(size=128))
        )
    assert Study.objects.count() == 0


def test_it_stores_all_or_none_of_a_multi_upload(alice, xray_upload):
    before = stored_files()
    good, bad = xray_upload("a.jpg"), SimpleUploadedFile("b.jpg", b"not an image")
    with pytest.raises(UploadRejected, match=r"b\.jpg"):
        services.study_create_many(uploaded_by=alice, images=[good, bad])
    assert Study.objects.count() == 0
    assert stored_files() == before


def test_it_deletes_written_files_when_the_transaction_fails(alice, xray_upload, monkeypatch):
    before = stored_files()

    def broken_create(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Prediction.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        services.study_create_many(uploaded_by=alice, images=[xray_upload(), xray_upload("b.jpg")])
    assert Study.objects.count() == 0
    assert stored_files() == before


def test_it_refuses_uploads_from_users_without_a_role(nemo, xray_upload):
    with pytest.raises(PermissionDenied):
        services.study_create(uploaded_by=nemo, image=xray_upload())


def test_it_enqueues_only_after_commit(
    alice, xray_upload, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = study.predictions.get()
    assert prediction.enqueued_at is None  # nothing was sent inside the transaction
    assert len(callbacks) == 1

    callbacks[0]()  # the commit: publishes to the real broker
    prediction.refresh_from_db()
    assert prediction.enqueued_at is not None


def taken_from(queue_name: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the real broker's queue, taken off it."""
    from pneumo_site.celery import app

    taken = []
    with app.connection_for_read() as connection:
        queue = app.amqp.queues[queue_name].bind(connection.default_channel)
        queue.declare()
        while (message := queue.get(no_ack=True)) is not None:
            taken.append((message.headers["task"], message.decode()[0]))
    return taken


def test_it_sends_each_task_by_a_name_a_worker_runs_to_its_queue(db, broker):
    # The services name the tasks rather than import the task module, which imports them: a
    # name that no task has, or a lost route, would leave the messages for no worker.
    from diagnosis import tasks
    from diagnosis.services import training

    predictions_queue, training_queue = settings.CELERY_TASK_DEFAULT_QUEUE, settings.TRAINING_QUEUE
    taken_from(predictions_queue), taken_from(training_queue)  # what earlier tests left

    assert predictions.prediction_enqueue(101) and training.training_job_enqueue(202)
    predictions.heatmaps_schedule()

    assert taken_from(predictions_queue) == [
        (tasks.predict.name, [101]),
        (tasks.draw_heatmaps.name, []),
    ]
    assert taken_from(training_queue) == [(tasks.retrain.name, [202])]


def test_it_keeps_every_review_and_the_latest_label(alice, rita, ada, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA", note="opacity RLL")
    services.review_create(study=study, reviewer=ada, label="NORMAL", note="artefact")

    study.refresh_from_db()
    assert study.current_label == "NORMAL"
    trail = list(Review.objects.filter(study=study).order_by("created_at", "id"))
    assert [(r.reviewer.username, r.previous_label, r.label, r.note) for r in trail] == [
        ("rita", "", "PNEUMONIA", "opacity RLL"),
        ("ada", "PNEUMONIA", "NORMAL", "artefact"),
    ]


def test_it_refuses_reviews_from_uploaders(alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    with pytest.raises(PermissionDenied):
        services.review_create(study=study, reviewer=alice, label="NORMAL")
    assert Review.objects.count() == 0


def test_it_registers_a_checkpoint_with_its_description(checkpoint_path, ada):
    version = services.model_version_register(path=checkpoint_path, user=ada, activate=True)

    assert version.name.startswith("resnet34-")
    assert version.architecture == "resnet34"
    assert version.class_names == ["NORMAL", "PNEUMONIA"]
    assert version.positive_class == "PNEUMONIA"
    assert version.preprocessing["input_size"] == 128
    assert version.threshold == 0.5
    assert version.is_active and version.activated_by == ada
    assert Path(settings.MEDIA_ROOT, version.file).read_bytes() == checkpoint_path.read_bytes()


def test_it_refuses_a_broken_checkpoint_leaving_nothing(tmp_path, db):
    from ml.checkpoint import CheckpointError

    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        services.model_version_register(path=path)
    assert ModelVersion.objects.count() == 0
    assert not list((Path(settings.MEDIA_ROOT) / "models").glob("broken*"))


def test_it_refuses_the_same_checkpoint_twice(checkpoint_path, db):
    services.model_version_register(path=checkpoint_path)
    with pytest.raises(ValueError, match="already registered"):
        services.model_version_register(path=checkpoint_path, name="other")


def test_it_keeps_one_active_model(checkpoint_path, tmp_path, db):
    first = services.model_version_register(
        path=checkpoint_path, name="a", activate=True, user=SYSTEM
    )
    second = services.model_version_register(
        path=make_checkpoint(tmp_path / "b.pt", seed=1, threshold=0.3), name="b"
    )
    assert list(ModelVersion.objects.filter(is_active=True)) == [first]

    services.model_version_activate(version=second, user=SYSTEM)
    assert list(ModelVersion.objects.filter(is_active=True)) == [second]


def test_it_predicts_real_full_resolution_xrays(alice, active_model):
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "full_resolution"
    if not folder.is_dir():
        pytest.skip(f"real X-rays not found at {folder} (see ../shared/data/README.md)")
    paths = sorted(folder.glob("*/*.jpeg"))[::4]
    for path in paths:
        upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/jpeg")
        study = services.study_create(uploaded_by=alice, image=upload)
        prediction = services.prediction_run(study.predictions.get().pk)
        assert prediction.status == "done", prediction.error
        assert min(study.width, study.height) > 500  # the real, large images
    assert Study.objects.count() == len(paths) >= 4
