"""The models page and API for retraining and promotion: who may do what."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import ModelActivation, TrainingJob
from tests.conftest import api_client_for, make_checkpoint


@pytest.fixture
def candidate(db, tmp_path, active_model):
    return services.model_version_register(
        path=make_checkpoint(tmp_path / "c.pt", seed=3), name="candidate-v2"
    )


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_only_admins_see_and_use_the_retrain_and_promote_controls(
    candidate, ada, rita, alice, django_capture_on_commit_callbacks
):
    for user in (rita, alice):
        page = browser(user).get(reverse("model-list")).content.decode()
        assert "Start retraining</button>" not in page and ">Promote</button>" not in page
        assert (
            browser(user).post(reverse("training-job-create"), {"init": "active"}).status_code
            == 403
        )
        assert browser(user).post(reverse("model-promote", args=[candidate.pk])).status_code == 403
    assert not TrainingJob.objects.exists() and not candidate.is_active

    page = browser(ada).get(reverse("model-list")).content.decode()
    assert "Start retraining</button>" in page and ">Promote</button>" in page
    with django_capture_on_commit_callbacks() as callbacks:
        response = browser(ada).post(
            reverse("training-job-create"), {"init": "active", "epochs": "2", "clean": "on"}
        )
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "training-job", args=[job.pk]
    )
    assert job.parameters == {"epochs": 2, "clean": True} and job.created_by == ada
    assert len(callbacks) == 1  # sent to the training queue once committed
    page = browser(rita).get(reverse("training-job", args=[job.pk])).content.decode()
    assert "Queued" in page and "data-live" in page and "pause updates" in page

    response = browser(ada).post(
        reverse("model-promote", args=[candidate.pk]), {"reason": "better"}
    )
    assert response.status_code == 302
    candidate.refresh_from_db()
    assert candidate.is_active
    activation = ModelActivation.objects.first()
    assert (activation.user, activation.reason) == (ada, "better")
    page = browser(alice).get(reverse("model-list")).content.decode()
    assert "better" in page and "ada" in page  # the activation history shows who and why


def test_a_bad_retrain_request_is_an_error_message_not_a_job(db, ada):
    response = browser(ada).post(reverse("training-job-create"), {"init": "active"}, follow=True)
    assert "no active model" in response.content.decode()
    response = browser(ada).post(reverse("training-job-create"), {"init": "bogus"}, follow=True)
    assert "Select a valid choice" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_the_api_starts_retraining_and_promotes_for_admins_only(
    candidate, ada, rita, alice, token_client
):
    for user in (rita, alice):
        client = api_client_for(user)
        assert client.post(reverse("api:training-job-list"), {}, format="json").status_code == 403
        url = reverse("api:model-promote", args=[candidate.name])
        assert client.post(url, {}, format="json").status_code == 403
        assert client.get(reverse("api:training-job-list")).status_code == 200
    assert api_client_for(None).get(reverse("api:training-job-list")).status_code in (401, 403)

    client = token_client(ada)
    bad = client.post(reverse("api:training-job-list"), {"epochs": -1}, format="json")
    assert bad.status_code == 400 and "epochs" in bad.json()
    response = client.post(
        reverse("api:training-job-list"), {"init": "imagenet", "epochs": 1}, format="json"
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["init"] == "imagenet"
    assert client.get(response["Location"]).json()["id"] == body["id"]

    response = client.post(
        reverse("api:model-promote", args=[candidate.name]), {"reason": "api"}, format="json"
    )
    assert response.status_code == 200 and response.json()["is_active"]
    models = client.get(reverse("api:model-list")).json()
    assert models["active"] == candidate.name
    assert {"parent", "gate"} <= set(models["results"][0])
    assert client.post(reverse("api:model-promote", args=["nope"]), {}).status_code == 404


def test_the_models_page_and_api_show_the_sizes_of_the_selection_and_gate_parts(
    db, ada, rita, settings, tmp_path
):
    from tests.synthetic import write_dataset

    write_dataset(tmp_path / "base", 20, size=32, seed=1)
    settings.VAR_DIR = tmp_path / "var"
    assert "No validation split yet" in browser(rita).get(reverse("model-list")).content.decode()

    split = services.validation_split_get_or_create(base_data=tmp_path / "base")
    assert split.n_selection > 0 and split.n_gate > 0
    assert split.n_selection + split.n_gate == len(split.item_keys)
    page = browser(rita).get(reverse("model-list")).content.decode()
    assert f"selection part ({split.n_selection} images)" in page
    assert f"gate part ({split.n_gate} images)" in page

    body = api_client_for(rita).get("/api/models/").json()
    assert body["validation_split"] | {"created_at": None} == {
        "id": split.pk, "created_at": None, "origin": split.origin, "n": len(split.item_keys),
        "n_selection": split.n_selection, "n_gate": split.n_gate,
        "manifest_hash": split.manifest_hash, "selection_hash": split.selection_hash,
        "gate_hash": split.gate_hash, "key_counts": split.key_counts,
    }  # fmt: skip
    assert split.key_counts["images"] == len(split.item_keys)
