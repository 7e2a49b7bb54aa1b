from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import ModelActivation, ModelVersion, Review, Study, TrainingJob
from tests.conftest import jpeg_bytes


@pytest.fixture
def alices_study(alice, xray_upload):
    return services.study_create(uploaded_by=alice, image=xray_upload("alice.jpg", seed=0))


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


PAGES = {
    # page: {persona: status}; 302 sends anonymous users to the login page.
    "list": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 200, "rita": 200, "ada": 200},
    "detail": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 404, "rita": 200, "ada": 200},
    "image": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 404, "rita": 200, "ada": 200},
    "models": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 200, "rita": 200, "ada": 200},
    "review": {"anonymous": 302, "nemo": 403, "alice": 403, "bob": 403, "rita": 302, "ada": 302},
    "upload": {"anonymous": 302, "nemo": 403, "alice": 302, "bob": 302, "rita": 302, "ada": 302},
    "admin": {"anonymous": 302, "nemo": 302, "alice": 302, "bob": 302, "rita": 302, "ada": 200},
    "retrain": {"anonymous": 302, "nemo": 403, "alice": 403, "bob": 403, "rita": 403, "ada": 302},
    "job": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 200, "rita": 200, "ada": 200},
    "promote": {"anonymous": 302, "nemo": 403, "alice": 403, "bob": 403, "rita": 403, "ada": 302},
    "worklist": {"anonymous": 302, "nemo": 403, "alice": 403, "bob": 403, "rita": 200, "ada": 200},
    "agreement": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 200, "rita": 200, "ada": 200},
    "cleaning": {"anonymous": 302, "nemo": 403, "alice": 403, "bob": 403, "rita": 200, "ada": 200},
    "heatmap": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 404, "rita": 200, "ada": 200},
    "thumbnail": {"anonymous": 302, "nemo": 403, "alice": 200, "bob": 404, "rita": 200, "ada": 200},
}


@pytest.mark.parametrize("persona", ["anonymous", "nemo", "alice", "bob", "rita", "ada"])
@pytest.mark.parametrize("page", PAGES)
def test_it_enforces_roles_on_every_page(request, persona, page, alices_study):
    user = None if persona == "anonymous" else request.getfixturevalue(persona)
    client = client_for(user)
    pk = alices_study.pk
    prediction = alices_study.predictions.get()
    if page == "heatmap":  # a real one, drawn by the model, for those who may see it
        request.getfixturevalue("active_model")
        services.prediction_run(prediction.pk)
        assert services.heatmaps_draw(quiet=0) == 1
    job = TrainingJob.objects.create(init="imagenet")
    version = ModelVersion.objects.create(
        name="v", architecture="resnet34", file="models/v.pt", sha256="0" * 64,
        class_names=["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA", preprocessing={},
        threshold=0.5,
    )  # fmt: skip
    activations_before = ModelActivation.objects.count()
    calls = {
        "list": lambda: client.get(reverse("study-list")),
        "detail": lambda: client.get(reverse("study-detail", args=[pk])),
        "image": lambda: client.get(reverse("study-image", args=[pk])),
        "models": lambda: client.get(reverse("model-list")),
        "review": lambda: client.post(reverse("review-create", args=[pk]), {"label": "NORMAL"}),
        "upload": lambda: client.post(
            reverse("study-upload"), {"images": SimpleUploadedFile("x.jpg", jpeg_bytes(seed=1))}
        ),
        "admin": lambda: client.get(reverse("admin:diagnosis_study_changelist")),
        "retrain": lambda: client.post(reverse("training-job-create"), {"init": "imagenet"}),
        "job": lambda: client.get(reverse("training-job", args=[job.pk])),
        "promote": lambda: client.post(reverse("model-promote", args=[version.pk])),
        "worklist": lambda: client.get(reverse("worklist")),
        "agreement": lambda: client.get(reverse("agreement")),
        "cleaning": lambda: client.get(reverse("cleaning")),
        "heatmap": lambda: client.get(reverse("prediction-heatmap", args=[pk, prediction.pk])),
        "thumbnail": lambda: client.get(reverse("study-thumbnail", args=[pk])),
    }
    reviews_before, studies_before = Review.objects.count(), Study.objects.count()
    jobs_before = TrainingJob.objects.count()

    response = calls[page]()

    assert response.status_code == PAGES[page][persona]
    if persona == "anonymous":
        assert response["Location"].startswith(("/accounts/login/", "/admin/login/"))
    allowed = PAGES[page][persona] in (200, 302) and persona not in ("anonymous", "nemo")
    assert Review.objects.count() == reviews_before + (page == "review" and allowed)
    assert Study.objects.count() == studies_before + (page == "upload" and allowed)
    assert TrainingJob.objects.count() == jobs_before + (page == "retrain" and allowed)
    assert ModelActivation.objects.count() == activations_before + (page == "promote" and allowed)


def test_it_uploads_several_files_from_the_page(alice):
    files = [SimpleUploadedFile(f"{i}.jpg", jpeg_bytes(seed=i)) for i in range(3)]
    response = client_for(alice).post(reverse("study-upload"), {"images": files}, follow=True)

    assert response.status_code == 200
    assert "Last upload: 3 accepted, 0 duplicate, 0 refused." in response.content.decode()
    assert sorted(Study.objects.values_list("original_filename", flat=True)) == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
    ]


def test_it_shows_a_form_error_for_a_bad_file(alice):
    response = client_for(alice).post(
        reverse("study-upload"), {"images": SimpleUploadedFile("notes.jpg", b"hello")}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "0 accepted, 0 duplicate, 1 refused: nothing was stored." in page
    assert "<td>notes.jpg</td><td><strong>refused</strong></td>" in page
    assert "this is not a readable JPEG, PNG or DICOM image." in page
    assert Study.objects.count() == 0


def test_it_shows_a_banner_while_no_model_is_active(alice, alices_study):
    page = client_for(alice).get(reverse("study-list")).content.decode()
    assert 'id="no-model-banner"' in page


def test_it_hides_the_banner_once_a_model_is_active(alice, active_model):
    page = client_for(alice).get(reverse("study-list")).content.decode()
    assert 'id="no-model-banner"' not in page


def test_it_shows_the_prediction_on_the_study_page(alice, active_model, alices_study):
    prediction = services.prediction_run(alices_study.predictions.get().pk)
    page = client_for(alice).get(reverse("study-detail", args=[alices_study.pk])).content.decode()

    headline = "Pneumonia likely" if prediction.label == "PNEUMONIA" else "No pneumonia found"
    assert headline in page or "Borderline: leans" in page
    assert f'<span data-field="label">{prediction.label}</span>' in page  # in the details
    assert f"{prediction.probability:.3f}" in page
    assert "test-v1" in page
    assert 'id="review-form"' not in page  # alice is not a radiologist


def test_it_lets_a_radiologist_correct_the_label(rita, alices_study):
    client = client_for(rita)
    page = client.get(reverse("study-detail", args=[alices_study.pk])).content.decode()
    assert 'id="review-form"' in page

    response = client.post(
        reverse("review-create", args=[alices_study.pk]),
        {"label": "PNEUMONIA", "note": "patchy opacity"},
        follow=True,
    )
    page = response.content.decode()
    assert "patchy opacity" in page
    alices_study.refresh_from_db()
    assert alices_study.current_label == "PNEUMONIA"


def test_a_models_note_is_on_the_models_page_and_on_every_page_while_it_is_active(
    alice, checkpoint_path, tmp_path
):
    from django.core.management import call_command

    from tests.conftest import make_checkpoint

    note = "A demo, trained in minutes; not validated at any site."
    call_command(
        "register_model", str(checkpoint_path), "--name", "demo", "--activate", "--note", note
    )
    client = client_for(alice)
    for name in ("study-list", "model-list", "agreement"):
        html = client.get(reverse(name)).content.decode()
        assert f"Active model demo: {note}" in html
    assert '<small class="note">' + note in client.get(reverse("model-list")).content.decode()
    # Once another version is active, the banner goes; the models page keeps the note.
    other = make_checkpoint(tmp_path / "other.pt", seed=4)
    call_command("register_model", str(other), "--name", "real", "--activate")
    assert "model-note-banner" not in client.get(reverse("study-list")).content.decode()
    assert note in client.get(reverse("model-list")).content.decode()
