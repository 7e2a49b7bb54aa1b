from __future__ import annotations

import io

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from diagnosis import services
from diagnosis.models import ModelActivation, Prediction, Review, Study, TrainingJob
from tests.conftest import api_client_for, jpeg_bytes


@pytest.fixture
def alices_study(alice, xray_upload):
    return services.study_create(uploaded_by=alice, image=xray_upload("alice.jpg", seed=0))


def upload(client: APIClient, content: bytes | None = None, name: str = "chest.jpg"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    content = jpeg_bytes(seed=1) if content is None else content
    return client.post(
        reverse("api:study-list"),
        {"image": SimpleUploadedFile(name, content)},
        format="multipart",
    )


# --------------------------------------------------------------------- permissions, every role

PERSONAS = ["anonymous", "nemo", "alice", "alice-token", "bob", "rita", "ada"]


def client_as(request, persona: str) -> APIClient:
    if persona == "anonymous":
        return APIClient()
    if persona.endswith("-token"):  # a real token, as a script would send it
        return request.getfixturevalue("token_client")(request.getfixturevalue(persona[:-6]))
    return api_client_for(request.getfixturevalue(persona))


def _row(anonymous, nemo, alice, bob, rita, ada) -> dict[str, int]:
    row = {"anonymous": anonymous, "nemo": nemo, "alice": alice, "bob": bob, "rita": rita}
    return row | {"ada": ada, "alice-token": alice}


# What each persona gets on alice's study: bob is another uploader, nemo has no role.
EXPECTED = {
    "list": _row(401, 403, 200, 200, 200, 200),
    "upload": _row(401, 403, 202, 202, 202, 202),
    "detail": _row(401, 403, 200, 404, 200, 200),
    "image": _row(401, 403, 200, 404, 200, 200),
    "heatmap": _row(401, 403, 200, 404, 200, 200),
    "review": _row(401, 403, 403, 403, 201, 201),
    "worklist": _row(401, 403, 403, 403, 200, 200),
    "agreement": _row(401, 403, 200, 200, 200, 200),
    "models": _row(401, 403, 200, 200, 200, 200),
    "training-jobs": _row(401, 403, 200, 200, 200, 200),
    "training-job": _row(401, 403, 200, 200, 200, 200),
    "retrain": _row(401, 403, 403, 403, 403, 202),
    "promote": _row(401, 403, 403, 403, 403, 200),
    "schema": _row(401, 200, 200, 200, 200, 200),
}


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("operation", EXPECTED)
def test_it_enforces_roles_on_every_endpoint(
    request, persona, operation, alices_study, checkpoint_path
):
    client = client_as(request, persona)
    pk = alices_study.pk
    prediction = alices_study.predictions.get()
    if operation == "heatmap":  # a real one, drawn by the model, for those who may see it
        request.getfixturevalue("active_model")
        services.prediction_run(prediction.pk)
        assert services.heatmaps_draw(quiet=0) == 1
    job = TrainingJob.objects.create(init="imagenet")

    def promote():
        version = services.model_version_register(path=checkpoint_path, name="candidate")
        return client.post(reverse("api:model-promote", args=[version.name]), {}, format="json")

    calls = {
        "list": lambda: client.get(reverse("api:study-list")),
        "upload": lambda: upload(client),
        "detail": lambda: client.get(reverse("api:study-detail", args=[pk])),
        "image": lambda: client.get(reverse("api:study-image", args=[pk])),
        "heatmap": lambda: client.get(reverse("api:prediction-heatmap", args=[pk, prediction.pk])),
        "review": lambda: client.post(
            reverse("api:study-reviews", args=[pk]), {"label": "PNEUMONIA"}, format="json"
        ),
        "worklist": lambda: client.get(reverse("api:worklist")),
        "agreement": lambda: client.get(reverse("api:agreement")),
        "models": lambda: client.get(reverse("api:model-list")),
        "training-jobs": lambda: client.get(reverse("api:training-job-list")),
        "training-job": lambda: client.get(reverse("api:training-job-detail", args=[job.pk])),
        "retrain": lambda: client.post(
            reverse("api:training-job-list"), {"init": "imagenet"}, format="json"
        ),
        "promote": promote,
        "schema": lambda: client.get(reverse("api:schema")),
    }
    before = (Study.objects.count(), Review.objects.count(), TrainingJob.objects.count())
    activations_before = ModelActivation.objects.count()

    response = calls[operation]()

    assert response.status_code == EXPECTED[operation][persona]
    if response.status_code >= 400:
        after = (Study.objects.count(), Review.objects.count(), TrainingJob.objects.count())
        assert after == before
        assert ModelActivation.objects.count() == activations_before


def test_it_lists_only_an_uploaders_own_studies(alice, bob, rita, alices_study, xray_upload):
    services.study_create(uploaded_by=bob, image=xray_upload("bob.jpg"))

    def names(user):
        body = api_client_for(user).get(reverse("api:study-list")).json()
        return sorted(s["original_filename"] for s in body["results"])

    assert names(alice) == ["alice.jpg"]
    assert names(bob) == ["bob.jpg"]
    assert names(rita) == ["alice.jpg", "bob.jpg"]


def test_it_accepts_tokens(alice, token_client):
    client = token_client(alice)
    response = upload(client)
    assert response.status_code == 202
    assert client.get(response["Location"]).status_code == 200


def test_it_refuses_a_wrong_token(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get(reverse("api:study-list")).status_code == 401


# --------------------------------------------------------------------- upload and read back


def test_it_answers_an_upload_with_202_and_a_location(alice):
    response = upload(api_client_for(alice))

    assert response.status_code == 202
    study = Study.objects.get()
    assert response.json() == {
        "id": study.pk,
        "status": "pending",
        "url": f"/api/studies/{study.pk}/",
        "duplicate": False,
        "warnings": [],
    }
    assert response["Location"] == f"http://testserver/api/studies/{study.pk}/"


@pytest.mark.parametrize(
    "content", [b"", b"plain text", jpeg_bytes()[:1500]], ids=["empty", "text", "truncated"]
)
def test_it_answers_a_bad_upload_with_a_json_400(alice, content):
    response = upload(api_client_for(alice), content)

    assert response.status_code == 400
    assert "image" in response.json()
    assert response.json()["image"][0]
    assert Study.objects.count() == 0


def test_it_answers_a_missing_file_with_a_json_400(alice):
    response = api_client_for(alice).post(reverse("api:study-list"), {}, format="multipart")
    assert response.status_code == 400
    assert "image" in response.json()


def test_it_shows_a_study_with_its_prediction_and_reviews(alice, rita, active_model, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA", note="RLL")

    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()

    assert body["status"] == "done"
    assert body["current_label"] == "PNEUMONIA"
    assert body["prediction"]["label"] == prediction.label
    assert body["prediction"]["probability"] == pytest.approx(prediction.probability)
    assert body["prediction"]["threshold"] == 0.5
    assert body["prediction"]["model_version"] == "test-v1"
    assert [
        (r["reviewer"], r["previous_label"], r["label"], r["note"]) for r in body["reviews"]
    ] == [("rita", "", "PNEUMONIA", "RLL")]
    assert body["image_url"] == f"/api/studies/{study.pk}/image/"


def test_it_serves_the_image_to_authorized_users(alice, alices_study):
    response = api_client_for(alice).get(reverse("api:study-image", args=[alices_study.pk]))
    assert response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content) == jpeg_bytes()


def test_it_filters_by_status_and_label(alice, rita, active_model, xray_upload):
    done = services.study_create(uploaded_by=alice, image=xray_upload("done.jpg"))
    services.prediction_run(done.predictions.get().pk)
    services.study_create(uploaded_by=alice, image=xray_upload("pending.jpg"))
    services.review_create(study=done, reviewer=rita, label="NORMAL")
    client = api_client_for(rita)

    def names(**params):
        body = client.get(reverse("api:study-list"), params).json()
        return [s["original_filename"] for s in body["results"]]

    assert names(status="pending") == ["pending.jpg"]
    assert names(status="done") == ["done.jpg"]
    assert names(reviewed_label="NORMAL") == ["done.jpg"]
    assert names(reviewed_label="PNEUMONIA") == []
    predicted = done.predictions.get().label
    other = "NORMAL" if predicted == "PNEUMONIA" else "PNEUMONIA"
    assert names(predicted_label=predicted) == ["done.jpg"]
    assert names(predicted_label=other) == []
    assert client.get(reverse("api:study-list"), {"status": "bogus"}).status_code == 400
    # "label" alone is ambiguous (the model's or the radiologists'?): refused, saying why.
    answer = client.get(reverse("api:study-list"), {"label": "NORMAL"})
    assert answer.status_code == 400 and "predicted_label" in answer.json()["label"][0]


@pytest.mark.parametrize("page_size", ["0", "-1", "abc", "501", "2.5", ""])
def test_a_bad_page_size_answers_400(alice, page_size):
    answer = api_client_for(alice).get(reverse("api:study-list"), {"page_size": page_size})
    assert answer.status_code == 400
    assert "page_size" in answer.json()


def test_the_schema_documents_the_list_filters_and_page_size(alice):
    schema = api_client_for(alice).get(reverse("api:schema"), {"format": "json"}).json()
    params = {p["name"]: p for p in schema["paths"]["/api/studies/"]["get"]["parameters"]}
    assert "the model's call" in params["predicted_label"]["description"]
    assert "the radiologists' label" in params["reviewed_label"]["description"]
    assert "1 to 500" in params["page_size"]["description"]
    assert "label" not in params


def test_it_paginates_the_list(alice, xray_upload):
    for i in range(3):
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg"))

    body = api_client_for(alice).get(reverse("api:study-list"), {"page_size": 2}).json()
    assert body["count"] == 3
    assert len(body["results"]) == 2
    assert body["next"]


def test_it_records_a_review_through_the_api(rita, alices_study):
    client = api_client_for(rita)
    url = reverse("api:study-reviews", args=[alices_study.pk])

    response = client.post(url, {"label": "PNEUMONIA", "note": "consolidation"}, format="json")
    assert response.status_code == 201
    assert response.json()["label"] == "PNEUMONIA"
    assert client.post(url, {"label": "maybe"}, format="json").status_code == 400
    alices_study.refresh_from_db()
    assert alices_study.current_label == "PNEUMONIA"
    assert Review.objects.count() == 1


def test_it_lists_model_versions_and_the_active_one(alice, active_model):
    body = api_client_for(alice).get(reverse("api:model-list")).json()
    assert body["active"] == "test-v1"
    assert [(v["name"], v["is_active"], v["architecture"]) for v in body["results"]] == [
        ("test-v1", True, "resnet34")
    ]


def test_it_publishes_an_openapi_schema_and_docs(alice):
    client = api_client_for(alice)
    schema = client.get(reverse("api:schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {
        "/api/studies/",
        "/api/studies/{id}/",
        "/api/studies/{id}/reviews/",
        "/api/models/",
    } <= set(paths)
    assert "202" in paths["/api/studies/"]["post"]["responses"]
    assert client.get(reverse("api:docs")).status_code == 200


def test_it_never_creates_predictions_for_refused_uploads(alice):
    upload(api_client_for(alice), b"nope")
    assert Prediction.objects.count() == 0


def test_it_lists_studies_in_a_constant_number_of_queries(
    rita, alice, active_model, xray_upload, django_assert_max_num_queries
):
    for i in range(6):
        study = services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg"))
        services.prediction_run(study.predictions.get().pk)
    client = api_client_for(rita)
    with django_assert_max_num_queries(8):
        body = client.get(reverse("api:study-list")).json()
    assert [s["prediction"]["model_version"] for s in body["results"]] == ["test-v1"] * 6


def test_it_serves_the_heatmap_of_a_prediction_to_those_who_may_see_it(
    alice, bob, rita, active_model, xray_upload
):
    from PIL import Image

    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)
    services.heatmaps_draw(quiet=0)
    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    url = body["prediction"]["heatmap_url"]
    assert url == f"/api/studies/{study.pk}/predictions/{prediction.pk}/heatmap/"

    response = api_client_for(rita).get(url)
    assert response["Content-Type"] == "image/png"
    overlay = Image.open(io.BytesIO(b"".join(response.streaming_content)))
    assert overlay.mode == "RGBA" and overlay.size == (256, 256)  # the colour layer
    assert api_client_for(bob).get(url).status_code == 404
    assert APIClient().get(url).status_code == 401


def test_it_skips_heatmaps_when_they_are_turned_off(alice, active_model, xray_upload, settings):
    settings.PREDICTION_HEATMAPS = "off"
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)

    assert prediction.status == "done" and not prediction.heatmap
    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert body["prediction"]["heatmap_url"] is None


def test_an_upload_naming_a_site_with_a_nul_byte_is_refused_not_a_server_error(
    db, alice, active_model
):
    from diagnosis.models import Study

    response = api_client_for(alice).post(
        "/api/studies/", {"image": _upload_for_nul_test(), "site": "a\x00b"}, format="multipart"
    )
    assert response.status_code == 400 and "site" in response.json()
    assert not Study.objects.exists()


def _upload_for_nul_test():
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("x.jpg", jpeg_bytes("NORMAL", seed=1), content_type="image/jpeg")
