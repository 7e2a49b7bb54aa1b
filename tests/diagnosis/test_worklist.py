from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from diagnosis import selectors, services
from diagnosis.models import Prediction, Study
from tests.conftest import api_client_for


@pytest.fixture
def cases(alice, xray_upload, active_model):
    """Four studies with known model outputs (threshold 0.5) and upload times."""
    now = timezone.now()
    made = {}
    for name, probability, hours_ago in [
        ("sure-pneumonia", 0.97, 3),
        ("borderline", 0.52, 2),
        ("sure-normal", 0.02, 1),
        ("also-unsure", 0.40, 4),
    ]:
        study = services.study_create(uploaded_by=alice, image=xray_upload(f"{name}.jpg"))
        Study.objects.filter(pk=study.pk).update(created_at=now - timedelta(hours=hours_ago))
        Prediction.objects.filter(study=study).update(
            status="done",
            probability=probability,
            threshold=0.5,
            label="PNEUMONIA" if probability >= 0.5 else "NORMAL",
            model_version=active_model,
        )
        made[name] = study
    return made


def names(qs) -> list[str]:
    return [s.original_filename.removesuffix(".jpg") for s in qs]


def test_it_orders_the_worklist_three_ways(cases):
    assert names(selectors.worklist(order="triage")) == [
        "sure-pneumonia", "borderline", "also-unsure", "sure-normal"
    ]  # fmt: skip
    assert names(selectors.worklist(order="uncertainty")) == [
        "borderline", "also-unsure", "sure-pneumonia", "sure-normal"
    ]  # fmt: skip
    assert names(selectors.worklist(order="oldest")) == [
        "also-unsure", "sure-pneumonia", "borderline", "sure-normal"
    ]  # fmt: skip


def test_it_moves_studies_that_waited_too_long_to_the_top(cases, settings):
    settings.WORKLIST_MAX_WAIT_SECONDS = int(2.5 * 3600)  # 3 h and 4 h old are overdue

    assert names(selectors.worklist(order="triage")) == [
        "also-unsure", "sure-pneumonia", "borderline", "sure-normal"
    ]  # fmt: skip
    assert names(selectors.worklist(order="uncertainty"))[:2] == ["also-unsure", "sure-pneumonia"]


def test_it_drops_reviewed_studies_from_the_worklist(cases, rita):
    services.review_create(study=cases["borderline"], reviewer=rita, label="NORMAL")
    services.review_create(study=cases["sure-normal"], reviewer=rita, unusable_reason="not_chest")

    assert names(selectors.worklist(order="triage")) == ["sure-pneumonia", "also-unsure"]


def test_it_walks_the_worklist_from_one_review_to_the_next(cases, rita):
    client = Client()
    client.force_login(rita)

    start = client.get(reverse("worklist-next"), {"order": "uncertainty"})
    assert start["Location"] == f"/studies/{cases['borderline'].pk}/?order=uncertainty"
    page = client.get(start["Location"]).content.decode()
    assert 'id="next-case"' in page and "review-keys.js" in page

    saved = client.post(
        reverse("review-create", args=[cases["borderline"].pk]),
        {"label": "PNEUMONIA", "note": "subtle", "order": "uncertainty"},
    )
    after = f"after={cases['borderline'].pk}"
    assert saved["Location"] == f"{reverse('worklist-next')}?order=uncertainty&{after}"
    following = client.get(saved["Location"])
    assert following["Location"] == f"/studies/{cases['also-unsure'].pk}/?order=uncertainty"


def test_it_records_an_unusable_image_with_its_reason(cases, rita):
    client = Client()
    client.force_login(rita)
    study = cases["sure-normal"]

    client.post(
        reverse("review-create", args=[study.pk]),
        {"unusable_reason": "wrong_view", "note": "lateral film"},
    )
    study.refresh_from_db()
    assert (study.unusable_reason, study.current_label) == ("wrong_view", "")
    review = study.reviews.get()
    assert (review.unusable_reason, review.label, review.note) == ("wrong_view", "", "lateral film")
    refused = client.post(reverse("review-create", args=[study.pk]), {"note": "nothing chosen"})
    assert refused.status_code == 302 and study.reviews.count() == 1


def test_it_serves_the_worklist_and_reviews_through_the_api(cases, rita):
    client = api_client_for(rita)
    body = client.get(reverse("api:worklist"), {"order": "triage"}).json()
    assert [s["original_filename"] for s in body["results"]][:2] == [
        "sure-pneumonia.jpg", "borderline.jpg"
    ]  # fmt: skip
    assert client.get(reverse("api:worklist"), {"order": "random"}).status_code == 400

    url = reverse("api:study-reviews", args=[cases["sure-pneumonia"].pk])
    assert client.post(url, {"note": "no verdict"}, format="json").status_code == 400
    made = client.post(url, {"unusable_reason": "poor_quality"}, format="json")
    assert made.status_code == 201 and made.json()["unusable_reason"] == "poor_quality"


@pytest.mark.parametrize(
    ("persona", "page_status", "api_status"),
    [("alice", 403, 403), ("rita", 200, 200), ("ada", 200, 200), ("nemo", 403, 403)],
)
def test_it_shows_the_worklist_to_radiologists_only(request, persona, page_status, api_status):
    user = request.getfixturevalue(persona)
    client = Client()
    client.force_login(user)
    assert client.get(reverse("worklist")).status_code == page_status
    assert client.get(reverse("worklist-next")).status_code in (
        (302,) if page_status == 200 else (403,)
    )
    assert api_client_for(user).get(reverse("api:worklist")).status_code == api_status


def test_it_summarizes_agreement_per_model_version(cases, rita, alice):
    # The model said: sure-pneumonia P, borderline P, sure-normal N, also-unsure N.
    services.review_create(study=cases["sure-pneumonia"], reviewer=rita, label="PNEUMONIA")  # tp
    services.review_create(study=cases["borderline"], reviewer=rita, label="NORMAL")  # fp
    services.review_create(study=cases["sure-normal"], reviewer=rita, label="NORMAL")  # tn
    services.review_create(study=cases["also-unsure"], reviewer=rita, label="PNEUMONIA")  # fn

    (row,) = selectors.agreement_by_version()
    assert row == {
        "model_version": "test-v1",
        "n": 4,
        "confusion": {"tn": 1, "fp": 1, "fn": 1, "tp": 1},
        "agreement": selectors.wilson_rate(2, 4),
        "sensitivity": selectors.wilson_rate(1, 2),
        "specificity": selectors.wilson_rate(1, 2),
        "subtype": None,  # a binary model
    }
    (answer,) = api_client_for(alice).get(reverse("api:agreement")).json()
    assert answer["agreement"]["value"] == 0.5 and answer["agreement"]["n"] == 4
    assert answer["confusion"] == row["confusion"]
    client = Client()
    client.force_login(alice)
    assert "test-v1" in client.get(reverse("agreement")).content.decode()
