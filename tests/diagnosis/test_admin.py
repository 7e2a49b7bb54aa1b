from __future__ import annotations

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import Review, Study


def admin_client(ada) -> Client:
    client = Client()
    client.force_login(ada)
    return client


def test_it_relabels_in_bulk_through_the_audit_trail(ada, alice, xray_upload):
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(3)
    ]
    chosen = [s.pk for s in studies[:2]]
    url = reverse("admin:diagnosis_study_changelist")
    client = admin_client(ada)

    confirm = client.post(url, {"action": "relabel", ACTION_CHECKBOX_NAME: chosen})
    assert confirm.status_code == 200
    assert "Each selected study gets a review" in confirm.content.decode()

    done = client.post(
        url,
        {
            "action": "relabel",
            ACTION_CHECKBOX_NAME: chosen,
            "apply": "1",
            "label": "PNEUMONIA",
            "note": "bulk fix",
        },
        follow=True,
    )
    assert "Relabeled 2 studies as PNEUMONIA." in done.content.decode()
    assert (
        sorted(Study.objects.filter(current_label="PNEUMONIA").values_list("pk", flat=True))
        == chosen
    )
    trail = Review.objects.order_by("study_id").values_list(
        "study_id", "reviewer__username", "previous_label", "label", "note"
    )
    assert list(trail) == [(pk, "ada", "", "PNEUMONIA", "bulk fix") for pk in chosen]


def test_it_filters_studies_by_disagreement(ada, alice, rita, active_model, xray_upload, settings):
    # one study must stay pending
    settings.PREDICTION_BATCH_SIZE, settings.PREDICTION_DRAIN_SECONDS = 1, 0
    agree = services.study_create(uploaded_by=alice, image=xray_upload("agree.jpg"))
    disagree = services.study_create(uploaded_by=alice, image=xray_upload("disagree.jpg", seed=1))
    services.study_create(uploaded_by=alice, image=xray_upload("unreviewed.jpg"))
    for study in (agree, disagree):
        services.prediction_run(study.predictions.get().pk)
    said = {s.pk: s.latest_prediction.label for s in (agree, disagree)}
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    services.review_create(study=agree, reviewer=rita, label=said[agree.pk])
    services.review_create(study=disagree, reviewer=rita, label=other[said[disagree.pk]])
    client = admin_client(ada)
    url = reverse("admin:diagnosis_study_changelist")

    def listed(**params) -> list[str]:
        response = client.get(url, params)
        return sorted(s.original_filename for s in response.context["cl"].result_list)

    assert listed(agreement="disagree") == ["disagree.jpg"]
    assert listed(agreement="agree") == ["agree.jpg"]
    assert listed(status="pending") == ["unreviewed.jpg"]
    assert listed(status="done") == ["agree.jpg", "disagree.jpg"]
    assert "agree.jpg" in listed(current_label=said[agree.pk])
    assert "disagree.jpg" not in listed(current_label=said[disagree.pk])


def test_it_keeps_reviews_read_only_in_the_admin(ada, alice, rita, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    review = services.review_create(study=study, reviewer=rita, label="NORMAL")
    client = admin_client(ada)

    delete = client.post(
        reverse("admin:diagnosis_review_delete", args=[review.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    assert Review.objects.filter(pk=review.pk).exists()
