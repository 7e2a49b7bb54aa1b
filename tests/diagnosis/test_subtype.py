"""Bacterial or viral on the platform: predicted by a version that answers it, reviewed with
the same append-only audit, filtered and ordered in the worklist, compared with the
radiologists, used by retraining and by the gate; and said what it is not."""

from __future__ import annotations

import csv
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from diagnosis import selectors, services
from diagnosis.models import SUBTYPE_CAVEAT, Prediction, Review, Study
from diagnosis.roles import SYSTEM
from diagnosis.services.gate import gate_decide
from tests.conftest import api_client_for, assert_outputs_vary, make_checkpoint


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(scope="session")
def subtype_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("subtype-models") / "two-heads.pt",
        subtype={"head": "two_heads", "threshold": 0.5},
    )


@pytest.fixture
def subtype_model(db, subtype_checkpoint):
    return services.model_version_register(
        path=subtype_checkpoint, name="two-heads", activate=True, user=SYSTEM
    )


# ---------------------------------------------------------------------------------------------
# Predictions


def test_a_version_that_answers_it_predicts_the_subtype_everywhere(
    subtype_model, alice, xray_upload
):
    assert subtype_model.subtype == {"head": "two_heads", "threshold": 0.5}
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg", label=label))
        for i, label in enumerate(["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"])
    ]
    for study in studies:
        services.prediction_run(study.predictions.get().pk)
    done = list(Prediction.objects.filter(study__in=studies))
    assert_outputs_vary([p.p_bacterial for p in done], min_spread=1e-4)
    for p in done:
        assert p.subtype == ("bacterial" if p.p_bacterial >= 0.5 else "viral")
        assert p.subtype_threshold == 0.5

    body = api_client_for(alice).get(reverse("api:study-detail", args=[studies[1].pk])).json()
    prediction = body["prediction"]
    stored = studies[1].predictions.get()
    assert (prediction["subtype"], prediction["p_bacterial"], prediction["subtype_threshold"]) == (
        stored.subtype, pytest.approx(stored.p_bacterial), 0.5,
    )  # fmt: skip
    assert prediction["subtype_caveat"] == SUBTYPE_CAVEAT
    page = _client(alice).get(reverse("study-detail", args=[studies[1].pk])).content.decode()
    assert f"{stored.p_bacterial:.3f}" in page and SUBTYPE_CAVEAT in page
    assert "not predicted by this model" not in page
    models = _client(alice).get(reverse("model-list")).content.decode()
    assert "subtype (two_heads): threshold 0.500" in models


def test_a_binary_version_says_the_subtype_is_not_predicted(active_model, alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    prediction = services.prediction_run(study.predictions.get().pk)
    assert (prediction.p_bacterial, prediction.subtype) == (None, "")
    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert body["prediction"]["subtype"] is None and body["prediction"]["p_bacterial"] is None
    assert body["prediction"]["subtype_caveat"] is None
    page = _client(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    assert "Subtype: not predicted by this model." in page
    assert active_model.subtype is None
    models = _client(alice).get(reverse("model-list")).content.decode()
    assert "subtype: not predicted by this model" in models
    assert (
        api_client_for(alice).get(reverse("api:model-list")).json()["results"][0]["subtype"] is None
    )


# ---------------------------------------------------------------------------------------------
# Reviews


def test_a_review_records_the_subtype_with_its_audit(rita, alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA", subtype="bacterial")
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA", subtype="undetermined")
    services.review_create(study=study, reviewer=rita, label="NORMAL", note="no consolidation")
    trail = Review.objects.filter(study=study).order_by("created_at", "id")
    assert list(trail.values_list("previous_subtype", "subtype")) == [
        ("", "bacterial"), ("bacterial", "undetermined"), ("undetermined", ""),
    ]  # fmt: skip
    study.refresh_from_db()
    assert (study.current_label, study.current_subtype) == ("NORMAL", "")


@pytest.mark.parametrize(
    ("label", "subtype", "error"),
    [
        ("NORMAL", "bacterial", "a subtype goes with the label PNEUMONIA only"),
        ("PNEUMONIA", "fungal", "subtype must be one of"),
    ],
)
def test_a_subtype_that_cannot_be_is_refused_and_changes_nothing(
    rita, alice, xray_upload, label, subtype, error
):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    with pytest.raises(ValueError, match=error):
        services.review_create(study=study, reviewer=rita, label=label, subtype=subtype)
    response = api_client_for(rita).post(
        reverse("api:study-reviews", args=[study.pk]), {"label": label, "subtype": subtype}
    )
    assert response.status_code == 400 and "subtype" in response.json()
    page = _client(rita).post(
        reverse("review-create", args=[study.pk]), {"label": label, "subtype": subtype},
        follow=True,
    )  # fmt: skip
    assert page.status_code == 200
    assert not Review.objects.exists()
    study.refresh_from_db()
    assert (study.current_label, study.current_subtype) == ("", "")


def test_the_page_and_the_api_round_trip_a_reviewed_subtype(rita, alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    client = _client(rita)
    client.post(
        reverse("review-create", args=[study.pk]), {"label": "PNEUMONIA", "subtype": "viral"}
    )
    page = client.get(reverse("study-detail", args=[study.pk])).content.decode()
    assert '<span id="current-subtype">viral</span>' in page
    assert "<td>PNEUMONIA (viral)" in page  # the radiologist's call in the history

    response = api_client_for(rita).post(
        reverse("api:study-reviews", args=[study.pk]),
        {"label": "PNEUMONIA", "subtype": "bacterial", "note": "lobar"},
    )
    assert response.status_code == 201
    assert (response.json()["previous_subtype"], response.json()["subtype"]) == (
        "viral", "bacterial",
    )  # fmt: skip
    body = api_client_for(rita).get(reverse("api:study-detail", args=[study.pk])).json()
    assert body["current_subtype"] == "bacterial"
    assert [r["subtype"] for r in body["reviews"]] == ["bacterial", "viral"]  # newest first


def test_the_admin_relabels_with_a_subtype(ada, alice, xray_upload):
    studies = [
        services.study_create(uploaded_by=alice, image=xray_upload(f"{i}.jpg")) for i in range(2)
    ]
    url = reverse("admin:diagnosis_study_changelist")
    chosen = [s.pk for s in studies]
    form = {"action": "relabel", ACTION_CHECKBOX_NAME: chosen, "apply": "1"}
    refused = _client(ada).post(url, form | {"label": "NORMAL", "subtype": "viral"})
    assert "A subtype goes with the label Pneumonia only." in refused.content.decode()
    assert not Review.objects.exists()
    done = _client(ada).post(url, form | {"label": "PNEUMONIA", "subtype": "viral"}, follow=True)
    assert "Relabeled 2 studies as PNEUMONIA (viral)." in done.content.decode()
    assert set(Study.objects.values_list("current_subtype", flat=True)) == {"viral"}
    assert (
        list(Review.objects.values_list("reviewer__username", "subtype")) == [("ada", "viral")] * 2
    )


# ---------------------------------------------------------------------------------------------
# Worklist and lists


@pytest.fixture
def calls(alice, xray_upload, subtype_model):
    """Four unreviewed studies with known calls: P(bacterial) and the subtype at 0.5."""
    now, made = timezone.now(), {}
    for name, p_bacterial, hours_ago in [
        ("clear-bacterial", 0.95, 1), ("leaning-bacterial", 0.6, 2),
        ("clear-viral", 0.05, 3), ("leaning-viral", 0.4, 4),
    ]:  # fmt: skip
        study = services.study_create(uploaded_by=alice, image=xray_upload(f"{name}.jpg"))
        Study.objects.filter(pk=study.pk).update(created_at=now - timedelta(hours=hours_ago))
        Prediction.objects.filter(study=study).update(
            status="done", probability=0.9, threshold=0.5, label="PNEUMONIA",
            model_version=subtype_model, p_bacterial=p_bacterial, subtype_threshold=0.5,
            subtype="bacterial" if p_bacterial >= 0.5 else "viral",
        )  # fmt: skip
        made[name] = study
    return made


def _names(studies) -> list[str]:
    return [s.original_filename.removesuffix(".jpg") for s in studies]


def test_the_worklist_filters_and_orders_by_the_predicted_subtype(calls, rita):
    assert _names(selectors.worklist(order="bacterial")) == [
        "clear-bacterial", "leaning-bacterial", "leaning-viral", "clear-viral",
    ]  # fmt: skip
    assert _names(selectors.worklist(order="oldest", subtype="viral")) == [
        "leaning-viral", "clear-viral",
    ]  # fmt: skip
    api = api_client_for(rita).get(
        reverse("api:worklist"), {"order": "bacterial", "subtype": "bacterial"}
    )
    assert [s["original_filename"] for s in api.json()["results"]] == [
        "clear-bacterial.jpg", "leaning-bacterial.jpg",
    ]  # fmt: skip
    page = _client(rita).get(reverse("worklist"), {"order": "bacterial", "subtype": "viral"})
    assert _names(page.context["page"]) == ["leaning-viral", "clear-viral"]
    # Reviewing from the filtered worklist moves on within the same filter.
    after = _client(rita).post(
        reverse("review-create", args=[calls["leaning-viral"].pk]),
        {"label": "PNEUMONIA", "subtype": "viral", "order": "bacterial", "subtype_filter": "viral"},
    )
    assert after.url == (
        f"{reverse('worklist-next')}?order=bacterial&subtype=viral&after={calls['leaning-viral'].pk}"
    )
    nxt = _client(rita).get(after.url)
    assert nxt.url.startswith(reverse("study-detail", args=[calls["clear-viral"].pk]))


def test_the_study_list_filters_by_predicted_and_reviewed_subtype(calls, rita, alice):
    services.review_create(
        study=calls["clear-viral"], reviewer=rita, label="PNEUMONIA", subtype="undetermined"
    )
    api = api_client_for(alice)
    listed = api.get(reverse("api:study-list"), {"predicted_subtype": "bacterial"}).json()
    assert sorted(s["original_filename"] for s in listed["results"]) == [
        "clear-bacterial.jpg", "leaning-bacterial.jpg",
    ]  # fmt: skip
    reviewed = api.get(reverse("api:study-list"), {"subtype": "undetermined"}).json()
    assert [s["original_filename"] for s in reviewed["results"]] == ["clear-viral.jpg"]
    page = _client(alice).get(reverse("study-list"), {"subtype": "viral"})
    assert sorted(_names(page.context["page"])) == ["clear-viral", "leaning-viral"]


# ---------------------------------------------------------------------------------------------
# Agreement


def test_subtype_agreement_matches_a_hand_count_and_undetermined_is_no_error(calls, rita, alice):
    # Model calls: clear-bacterial b, leaning-bacterial b, clear-viral v, leaning-viral v.
    review = services.review_create
    review(study=calls["clear-bacterial"], reviewer=rita, label="PNEUMONIA", subtype="bacterial")
    review(study=calls["leaning-bacterial"], reviewer=rita, label="PNEUMONIA", subtype="viral")
    review(study=calls["clear-viral"], reviewer=rita, label="PNEUMONIA", subtype="viral")
    review(study=calls["leaning-viral"], reviewer=rita, label="PNEUMONIA", subtype="undetermined")
    (row,) = selectors.agreement_by_version()
    assert row["subtype"] == {
        "n": 4,
        "n_undetermined": 1,
        "confusion": {
            "bacterial": {"bacterial": 1, "viral": 0},
            "viral": {"bacterial": 1, "viral": 1},
            "undetermined": {"bacterial": 0, "viral": 1},
        },
        "agreement": selectors.wilson_rate(2, 3),  # undetermined is left out, not wrong
        "sensitivity": selectors.wilson_rate(1, 1),
        "specificity": selectors.wilson_rate(1, 2),
    }
    assert row["subtype"]["agreement"].value == pytest.approx(2 / 3)
    answer = api_client_for(alice).get(reverse("api:agreement")).json()[0]["subtype"]
    assert answer["agreement"] == {
        "k": 2, "n": 3, "value": pytest.approx(2 / 3), "low": pytest.approx(0.2077, abs=1e-4),
        "high": pytest.approx(0.9385, abs=1e-4), "too_few": True,
    }  # fmt: skip
    assert answer["confusion"] == row["subtype"]["confusion"]
    page = _client(alice).get(reverse("agreement")).content.decode()
    assert 'id="subtype-agreement"' in page and "0.667" in page


# ---------------------------------------------------------------------------------------------
# Retraining and the gate


def test_the_training_pool_carries_reviewed_subtypes(rita, alice, xray_upload):
    made = {}
    for answer in ("bacterial", "viral", "undetermined", ""):
        study = services.study_create(
            uploaded_by=alice, image=xray_upload(f"{answer or 'none'}.jpg")
        )
        services.review_create(study=study, reviewer=rita, label="PNEUMONIA", subtype=answer)
        made[f"study:{study.pk}"] = answer
    pool = services.training_pool(base_data=None)
    assert {item.source: item.subtype for item in pool} == {
        key: answer if answer != "undetermined" else "" for key, answer in made.items()
    }


def _evaluation(auc: float, subtype_auc: float | None, *, answers: bool = True) -> dict:
    return {
        "auc": auc, "sensitivity": 0.97, "specificity": 0.9, "accuracy": 0.93, "threshold": 0.4,
        "data": {"manifest_hash": "h"},
        "subtype": {"auc": subtype_auc} if answers else None,
    }  # fmt: skip


def test_the_gate_refuses_a_candidate_that_loses_the_subtype(settings):
    settings.RETRAIN_GATE_METRIC, settings.RETRAIN_GATE_MARGIN = "auc", 0.01
    settings.RETRAIN_MIN_SENSITIVITY = 0.95
    active = _evaluation(0.98, 0.90)
    assert gate_decide(_evaluation(0.98, 0.895), active)["passed"]  # within the margin
    worse = gate_decide(_evaluation(0.99, 0.85), active)
    assert not worse["passed"] and "subtype AUC 0.8500 is worse" in worse["reason"]
    assert worse["subtype"] == {"candidate": 0.85, "active": 0.90}
    binary = gate_decide(_evaluation(0.99, None, answers=False), active)
    assert not binary["passed"] and "does not answer the subtype question" in binary["reason"]
    # An active model without the question asks nothing of it.
    assert gate_decide(
        _evaluation(0.98, None, answers=False), _evaluation(0.98, None, answers=False)
    )["passed"]


def test_a_stored_evaluation_carries_the_subtype_report_and_plots(subtype_model, tmp_path, capsys):
    from django.core.management import call_command

    from diagnosis.models import Evaluation
    from tests.synthetic import write_dataset

    write_dataset(tmp_path / "site", 8, size=96, seed=4, subtypes=True)
    call_command("evaluate", "--data", str(tmp_path / "site"))
    evaluation = Evaluation.objects.get()
    subtype = evaluation.metrics["subtype"]
    assert subtype["n"]["bacterial"] + subtype["n"]["viral"] == 8  # read from the file names
    assert {"subtype_roc", "subtype_confusion"} <= set(evaluation.plots)
    assert "subtype AUC" in evaluation.summary and "subtype AUC" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Heatmaps of either question


@pytest.mark.parametrize("mode", ["deferred", "inline"])
def test_a_subtype_model_draws_a_heatmap_of_each_question(
    subtype_model, alice, xray_upload, settings, mode
):
    import numpy as np
    from PIL import Image

    from ml.inference import Predictor

    settings.PREDICTION_HEATMAPS = mode
    study = services.study_create(uploaded_by=alice, image=xray_upload(label="PNEUMONIA"))
    services.prediction_run(study.predictions.get().pk)
    if mode == "deferred":
        assert services.heatmaps_draw(quiet=0) == 1
    prediction = study.predictions.get()
    assert prediction.heatmap and prediction.subtype_heatmap and not prediction.heatmap_due

    # The subtype map is the one Grad-CAM draws for that question, not the pneumonia one.
    predictor = Predictor.from_checkpoint(Path(django_settings.MEDIA_ROOT, subtype_model.file))
    (expected,) = predictor.heatmaps([study.image.path], question="subtype", layer=True)
    drawn = np.asarray(Image.open(prediction.subtype_heatmap.path), np.int16)
    assert np.abs(drawn - np.asarray(expected, np.int16)).max() <= 1
    pneumonia = np.asarray(Image.open(prediction.heatmap.path), np.int16)
    assert np.abs(pneumonia - drawn).mean() > 1.0

    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    url = body["prediction"]["subtype_heatmap_url"]
    assert url.endswith("?question=subtype")
    served = api_client_for(alice).get(url)
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    page = _client(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    page_url = reverse("prediction-heatmap", args=[study.pk, prediction.pk]) + "?question=subtype"
    assert f'data-subtype-heatmap="{page_url}"' in page  # the viewer's second layer
    assert '<option value="subtype">bacterial vs viral</option>' in page
    bad = api_client_for(alice).get(url.replace("subtype", "lungs"))
    assert bad.status_code == 400


def test_a_binary_model_has_no_subtype_heatmap(active_model, alice, xray_upload):
    study = services.study_create(uploaded_by=alice, image=xray_upload())
    services.prediction_run(study.predictions.get().pk)
    services.heatmaps_draw(quiet=0)
    prediction = study.predictions.get()
    assert prediction.heatmap and not prediction.subtype_heatmap
    base = reverse("prediction-heatmap", args=[study.pk, prediction.pk])
    assert _client(alice).get(f"{base}?question=subtype").status_code == 404
    assert _client(alice).get(base).status_code == 200
    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert body["prediction"]["subtype_heatmap_url"] is None


# ---------------------------------------------------------------------------------------------
# A site audit


def assert_subtype_figures_of(version, figures: dict, known: list):
    """`figures` (subtype_on_eval) are `version`'s on the `known`-subtype studies: its AUC
    from a run of the version on their images, at its own subtype threshold. Returns the
    version's predictor."""
    from ml.inference import Predictor
    from ml.metrics import roc_auc

    predictor = Predictor.from_checkpoint(Path(django_settings.MEDIA_ROOT, version.file))
    p = [r.p_bacterial for r in predictor.predict_batch([s.image.path for s in known])]
    assert_outputs_vary(p)
    y = [int(s.current_subtype == "bacterial") for s in known]
    assert figures["auc"] == pytest.approx(roc_auc(y, p), abs=1e-9)
    assert figures["threshold"] == version.subtype["threshold"]
    return predictor


def test_a_site_audit_imports_the_subtype_and_reports_it_on_its_evaluation_part(
    subtype_model, rita, ada, tmp_path
):
    import io

    from django.core.management import call_command

    from diagnosis.models import SiteAudit
    from ml.data import kermany_subtype
    from tests.synthetic import write_dataset

    written = write_dataset(tmp_path / "site", 14, size=96, seed=5, subtypes=True)
    out = io.StringIO()
    call_command(
        "site_audit", "--site", "clinic-s", "--data", str(tmp_path / "site"),
        "--import-user", "rita", stdout=out,
    )  # fmt: skip

    # Each pneumonia's subtype, as its file name says, recorded with its imported review.
    studies = {s.original_filename: s for s in Study.objects.filter(site__name="clinic-s")}
    said = {
        path.name: kermany_subtype(path) if label == "PNEUMONIA" else "" for path, label in written
    }
    assert {name: s.current_subtype for name, s in studies.items()} == said
    assert {"bacterial", "viral"} <= set(said.values())
    reviews = Review.objects.filter(study__site__name="clinic-s")
    assert set(reviews.values_list("subtype", flat=True)) == {"", "bacterial", "viral"}

    # The figures on the evaluation part equal a hand count and a model run on those images.
    audit = SiteAudit.objects.get(site__name="clinic-s")
    figures = audit.metrics["calibrated"]["subtype_on_eval"]
    part = [s for s in studies.values() if s.pk in audit.metrics["calibrated"]["eval_studies"]]
    known = [s for s in part if s.current_subtype in ("bacterial", "viral")]
    assert figures["n"] == {
        "bacterial": sum(s.current_subtype == "bacterial" for s in known),
        "viral": sum(s.current_subtype == "viral" for s in known),
        "unknown": 0,
    }
    assert figures["n"]["bacterial"] and figures["n"]["viral"]
    assert len(part) < len(studies)  # the evaluation part only
    predictor = assert_subtype_figures_of(subtype_model, figures, known)
    assert "Subtype on the evaluation part" in out.getvalue()

    # A subtype threshold of the site's own: Youden's J on the calibration part's pneumonias
    # (a run of the model on their images), judged on the evaluation part only.
    from ml.metrics import sensitivity_specificity, youden_threshold

    def bacterial(group):
        y = [int(s.current_subtype == "bacterial") for s in group]
        return y, [r.p_bacterial for r in predictor.predict_batch([s.image.path for s in group])]

    calibrated = audit.metrics["calibrated"]["subtype_calibrated"]
    cal = [
        s for s in studies.values()
        if s.pk in audit.metrics["calibrated"]["cal_studies"] and s.current_subtype
    ]  # fmt: skip
    y_cal, p_cal = bacterial(cal)
    assert calibrated["n_cal"] == {"bacterial": sum(y_cal), "viral": len(y_cal) - sum(y_cal)}
    assert calibrated["threshold"] == pytest.approx(youden_threshold(y_cal, p_cal), abs=1e-9)
    assert calibrated["version_threshold"] == figures["threshold"] != calibrated["threshold"]
    y_eval, p_eval = bacterial(known)
    at_site = sensitivity_specificity(y_eval, p_eval, calibrated["threshold"])
    assert (calibrated["sensitivity"], calibrated["specificity"]) == pytest.approx(at_site)
    assert calibrated["n"] == figures["n"] and calibrated["auc"] == figures["auc"]
    assert "Subtype threshold calibrated (Youden's J on" in out.getvalue()

    page = _client(ada).get(reverse("site-detail", args=["clinic-s"])).content.decode()
    assert "Subtype (bacterial against viral) on the evaluation part" in page
    assert "Subtype threshold calibrated for this site" in page
    assert f"and subtype threshold {calibrated['threshold']:.4f}" in page  # the button
    assert SUBTYPE_CAVEAT in page

    # Put in force, the audit's thresholds both decide at the site; restoring clears both.
    row = services.site_threshold_from_audit(audit=audit, user=ada)
    assert row.subtype_threshold == calibrated["threshold"]
    assert row.threshold == audit.metrics["calibrated"]["threshold"]
    assert "subtype: youden rule" in row.reason
    site = api_client_for(ada).get(reverse("api:site-detail", args=["clinic-s"])).json()
    assert site["subtype_threshold_in_force"] == calibrated["threshold"]
    assert site["thresholds"][0]["subtype_threshold"] == calibrated["threshold"]
    page = _client(ada).get(reverse("site-detail", args=["clinic-s"])).content.decode()
    assert f"<strong>{calibrated['threshold']:.4f}</strong>, this site's" in page
    assert f"<td>{calibrated['threshold']:.4f}</td>" in page  # the threshold history
    # The next audit measures the subtype at the threshold now in force there.
    again = services.site_audit_run(site=audit.site, user=ada)
    assert again.metrics["calibrated"]["subtype_on_eval"]["threshold"] == calibrated["threshold"]
    restored = services.site_threshold_from_audit(audit=audit, user=ada, restore=True)
    assert (restored.threshold, restored.subtype_threshold) == (None, None)
    site = api_client_for(ada).get(reverse("api:site-detail", args=["clinic-s"])).json()
    assert site["subtype_threshold_in_force"] == subtype_model.subtype["threshold"]


def test_a_sites_subtype_threshold_decides_its_predictions_only(
    subtype_model, checkpoint_path, alice, ada, xray_upload, settings
):
    from ml.inference import Predictor

    settings.PREDICTION_BATCH_SIZE = 16
    site = services.site_get_or_create(name="clinic-t")
    labels = ["PNEUMONIA", "PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA"]
    uploads = [xray_upload(f"t{i}.jpg", label=label) for i, label in enumerate(labels)]
    predictor = Predictor.from_checkpoint(Path(django_settings.MEDIA_ROOT, subtype_model.file))
    p = [r.p_bacterial for r in predictor.predict_batch([u.read() for u in uploads])]
    assert_outputs_vary(p, min_spread=1e-4)
    # A threshold between two of the scores that calls a different number bacterial than
    # the version's own 0.5 does, so the site's threshold visibly decides.
    ranked = sorted(set(p))
    cuts = [(a + b) / 2 for a, b in itertools.pairwise(ranked)]
    own = sum(v >= 0.5 for v in p)
    cut = next(c for c in cuts if sum(v >= c for v in p) != own)
    services.site_threshold_activate(
        site=site, version=subtype_model, threshold=0.3, subtype_threshold=cut, user=ada
    )
    for upload in uploads:
        upload.seek(0)
    there = [services.study_create(uploaded_by=alice, image=u, site=site) for u in uploads]
    here = services.study_create(uploaded_by=alice, image=xray_upload("h.jpg", label="PNEUMONIA"))
    services.prediction_run(there[0].predictions.get().pk)  # one claim takes all seven
    ours = here.predictions.get()
    assert ours.subtype_threshold == 0.5  # the default site: the version's own
    assert ours.subtype == ("bacterial" if ours.p_bacterial >= 0.5 else "viral")
    theirs = [s.predictions.get() for s in there]
    assert [t.p_bacterial for t in theirs] == pytest.approx(p, abs=1e-6)
    for t in theirs:
        assert t.subtype_threshold == cut and t.claim == ours.claim
        assert t.subtype == ("bacterial" if t.p_bacterial >= cut else "viral")
        assert t.threshold == 0.3 and t.label == ("PNEUMONIA" if t.probability >= 0.3 else "NORMAL")
    assert sum(t.subtype == "bacterial" for t in theirs) != own

    # Only a version that answers the subtype takes one; nothing is written otherwise.
    binary = services.model_version_register(path=checkpoint_path, name="binary", user=SYSTEM)
    with pytest.raises(ValueError, match="does not answer the subtype"):
        services.site_threshold_activate(
            site=site, version=binary, threshold=0.4, subtype_threshold=0.5, user=ada
        )
    with pytest.raises(ValueError, match="within"):
        services.site_threshold_activate(
            site=site, version=subtype_model, threshold=0.3, subtype_threshold=1.5, user=ada
        )
    with pytest.raises(ValueError, match="goes with its pneumonia threshold"):
        services.site_threshold_activate(
            site=site, version=subtype_model, threshold=None, subtype_threshold=0.5, user=ada
        )
    assert site.thresholds.count() == 1


@pytest.mark.slow
def test_an_adapted_model_reports_its_subtype_on_the_same_evaluation_part(
    base, rita, ada, tmp_path
):
    import io

    from django.core.management import call_command

    from diagnosis.models import Site, SiteAudit
    from tests.diagnosis.conftest import QUICK
    from tests.synthetic import write_dataset

    path = make_checkpoint(
        tmp_path / "two-heads-64.pt", seed=3, input_size=64,
        subtype={"head": "two_heads", "threshold": 0.5},
    )  # fmt: skip
    services.model_version_register(path=path, name="two-heads-64", activate=True, user=SYSTEM)
    write_dataset(tmp_path / "site", 14, size=64, seed=6, subtypes=True)
    call_command(
        "site_audit", "--site", "clinic-a", "--data", str(tmp_path / "site"),
        "--import-user", "rita", stdout=io.StringIO(),
    )  # fmt: skip
    site = Site.objects.get(name="clinic-a")
    out = []
    audit = services.site_audit_run(
        site=site, user=ada, adapt=True, echo=out.append,
        adapt_params=QUICK | {"epochs": 2, "limit_per_class": 6, "crossfit": False},
    )  # fmt: skip

    # The candidate keeps the second question. Its own subtype threshold is already the
    # site's: ml.train chose it by Youden's J on its validation, the half of the calibration
    # part it did not train on; no other is put in force (pooling the cross-fit's scores,
    # as for the pneumonia threshold, did worse: ml/README "Bacterial or viral").
    from ml.inference import Predictor
    from ml.metrics import youden_threshold

    candidate = audit.candidate
    assert candidate.subtype is not None
    with default_storage.open(candidate.train_args["val_manifest_record"], "r") as f:
        tune = {row["source"] for row in csv.DictReader(f)}
    cal = Study.objects.filter(pk__in=audit.metrics["calibrated"]["cal_studies"])
    held = [s for s in cal if s.current_subtype and f"study:{s.pk}" in tune]
    tuned = Predictor.from_checkpoint(Path(django_settings.MEDIA_ROOT, candidate.file))
    p_held = [r.p_bacterial for r in tuned.predict_batch([s.image.path for s in held])]
    y_held = [int(s.current_subtype == "bacterial") for s in held]
    assert 0 < sum(y_held) < len(y_held)
    assert candidate.subtype["threshold"] == pytest.approx(youden_threshold(y_held, p_held))
    assert candidate.site_thresholds.get(site=site).subtype_threshold is None
    # Its figures are on the audit's evaluation part, at that threshold, and equal a run of
    # the candidate on those images.
    figures = audit.metrics["adapted"]["subtype_on_eval"]
    part = Study.objects.filter(pk__in=audit.metrics["calibrated"]["eval_studies"])
    known = [s for s in part if s.current_subtype in ("bacterial", "viral")]
    assert figures["n"]["bacterial"] + figures["n"]["viral"] == len(known) > 0
    predictor = assert_subtype_figures_of(candidate, figures, known)
    # The three-way matrix: the candidate's calls at the adapted threshold, counted by hand.
    outputs = predictor.predict_batch(
        [s.image.path for s in part], threshold=audit.metrics["adapted"]["threshold"]
    )
    counted = {t: dict.fromkeys(("normal", "bacterial", "viral"), 0) for t in figures["confusion"]}
    for study, output in zip(part, outputs, strict=True):
        called = output.subtype if output.label == "PNEUMONIA" else "normal"
        counted[study.current_subtype or "normal"][called] += 1
    assert figures["confusion"] == counted
    assert audit.metrics["calibrated"]["subtype_on_eval"]["n"] == figures["n"]
    assert any(line.startswith("Adapted model: Subtype on the evaluation part") for line in out)
    page = _client(ada).get(reverse("site-detail", args=["clinic-a"])).content.decode()
    assert f"Adapted model {candidate.name}, subtype on the same evaluation part" in page
    assert SiteAudit.objects.filter(site=site).count() == 2
