"""What the pages say, the clinical way: the call and its borderline rule on fixed
probabilities, who the model is (a demo, a candidate), the training banner per role, the
review history's model call -> radiologist call, rates with their intervals, per-file upload
outcomes, thumbnails and the worklist's waiting count."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from diagnosis import selectors, services, wording
from diagnosis.models import ModelVersion, Prediction, Study
from tests.conftest import api_client_for, jpeg_bytes


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def version(name: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name, architecture="resnet34", file=f"models/{name}.pt", sha256=name.ljust(64, "0"),
        class_names=["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA", preprocessing={},
        threshold=0.3, **fields,
    )  # fmt: skip


def called(study: Study, model: ModelVersion, probability: float, threshold: float = 0.3):
    """Give the study's pending prediction a fixed result, as a worker would record it."""
    prediction = study.predictions.get()
    prediction.status = Prediction.Status.DONE
    prediction.probability, prediction.threshold = probability, threshold
    prediction.label = "PNEUMONIA" if probability >= threshold else "NORMAL"
    prediction.model_version = model
    prediction.finished_at = timezone.now()
    prediction.save()
    return prediction


@pytest.fixture
def study(alice, xray_upload):
    return services.study_create(uploaded_by=alice, image=xray_upload("child.jpg", seed=3))


# ---------------------------------------------------------------------------- the words


@pytest.mark.parametrize(
    ("probability", "label", "headline", "sureness"),
    [
        (0.95, "PNEUMONIA", "Pneumonia likely", "very sure"),  # (0.95-0.3)/0.7 = 0.93
        (0.55, "PNEUMONIA", "Pneumonia likely", "fairly sure"),  # 0.36 of the way
        (0.65, "PNEUMONIA", "Pneumonia likely", "very sure"),  # exactly half-way
        (0.39, "PNEUMONIA", "Borderline: leans pneumonia", "borderline"),  # 0.09 above
        (0.30, "PNEUMONIA", "Borderline: leans pneumonia", "borderline"),  # at the threshold
        (0.21, "NORMAL", "Borderline: leans normal", "borderline"),  # 0.09 below
        (0.20, "NORMAL", "No pneumonia found", "fairly sure"),  # 0.10 below: not borderline
        (0.10, "NORMAL", "No pneumonia found", "very sure"),  # 2/3 of the way to 0
    ],
)
def test_the_call_is_worded_by_the_stated_rule(settings, probability, label, headline, sureness):
    settings.BORDERLINE_MARGIN = 0.1
    call = wording.pneumonia_call(probability, 0.3, label)
    assert (call.headline, call.sureness) == (headline, sureness)
    assert call.borderline == (sureness == "borderline")
    assert (call.percent, call.threshold_percent) == (round(probability * 100), 30)


def test_the_margin_is_a_setting(settings):
    settings.BORDERLINE_MARGIN = 0.02
    assert not wording.pneumonia_call(0.27, 0.3, "NORMAL").borderline
    assert "within 0.02 of the operating point" in wording.borderline_rule()
    settings.BORDERLINE_MARGIN = 0.05
    assert wording.pneumonia_call(0.27, 0.3, "NORMAL").borderline


@pytest.mark.parametrize(
    ("probability", "expected", "shown"),
    [(0.92, "Pneumonia likely", False), (0.35, "Borderline: leans pneumonia", True),
     (0.05, "No pneumonia found", False)],
)  # fmt: skip
def test_the_study_page_says_the_call_first_and_the_figures_in_details(
    alice, study, probability, expected, shown
):
    called(study, version("v1", is_active=True), probability)
    page = client_for(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    assert f"<strong>{expected}</strong>" in page
    assert f"Probability of pneumonia {round(probability * 100)}%, operating point 30%" in page
    assert ('id="borderline-rule"' in page) is shown
    technical = page[page.index('<details id="technical">') :]
    assert f'P(pneumonia) = <span id="p-pneumonia">{probability:.3f}</span>' in technical
    api = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert api["prediction"]["call"]["headline"] == expected
    assert api["prediction"]["call"]["borderline"] is shown


def test_a_demo_model_is_said_to_be_one_on_every_page(alice, rita, study, settings):
    demo = version("demo-effnet", is_active=True, is_demo=True)
    called(study, demo, 0.8)
    for user, url in [
        (alice, reverse("study-list")),
        (alice, reverse("study-detail", args=[study.pk])),
        (rita, reverse("worklist")),
        (rita, reverse("agreement")),
    ]:
        page = client_for(user).get(url).content.decode()
        assert 'id="demo-banner"' in page and "Demo model, not for patient care." in page
        assert f"Intended use: {demo.intended_use}" in page
    page = client_for(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    assert 'id="model-warning"' in page and "is a DEMO" in page
    api = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert "is a DEMO" in api["prediction"]["model_warning"]
    assert api["prediction"]["model_intended_use"] == demo.intended_use


def test_a_prediction_by_a_candidate_is_flagged_and_the_active_model_is_not(alice, study):
    active = version("v-active", is_active=True)
    candidate = version("v-candidate")
    called(study, candidate, 0.8)
    page = client_for(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    assert "Made by the candidate model v-candidate, not the active one." in page
    assert "Demo model" not in page
    called_again = study.predictions.get()
    called_again.model_version = active
    called_again.save()
    page = client_for(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    assert 'id="model-warning"' not in page


def test_register_model_marks_a_demo_and_records_the_intended_use(db, checkpoint_path):
    from django.core.management import call_command

    call_command(
        "register_model", str(checkpoint_path), "--name", "d", "--demo", stdout=io.StringIO()
    )
    made = ModelVersion.objects.get(name="d")
    assert made.is_demo and made.intended_use.startswith("Decision support for frontal chest")
    assert made.standing == "candidate"


# ---------------------------------------------------------------------------- the banners


def write_training_marker(settings, *, started_ago: float, expected: float = 360) -> None:
    assert settings.VAR_DIR.name == "var-of-this-test"  # never the shared one
    marker = {"started_at": time.time() - started_ago, "expected_seconds": expected}
    (settings.VAR_DIR / "demo-training.json").write_text(json.dumps(marker))


def test_while_the_demo_trains_the_banner_says_since_when_and_how_long(
    settings, tmp_path, alice, ada
):
    settings.VAR_DIR = tmp_path / "var-of-this-test"
    settings.VAR_DIR.mkdir()
    write_training_marker(settings, started_ago=125)
    page = client_for(alice).get(reverse("study-list")).content.decode()
    assert 'id="training-banner"' in page and "A demo model is being trained" in page
    assert "2 min ago; it takes about\n  6 min, so roughly 4 min more" in page
    assert "Uploads are kept and predicted as soon as it is ready." in page
    assert "manage.py" not in page and 'id="no-model-banner"' not in page
    # Long past what it should take: said, and only an admin is pointed at the log.
    write_training_marker(settings, started_ago=3600)
    page = client_for(alice).get(reverse("study-list")).content.decode()
    assert "taking longer than expected: an admin can see why" in page
    assert "train-demo.log" not in page
    assert "train-demo.log" in client_for(ada).get(reverse("study-list")).content.decode()


def test_without_a_model_only_an_admin_is_shown_a_command(alice, rita, ada):
    for user in (alice, rita):
        page = client_for(user).get(reverse("study-list")).content.decode()
        assert 'id="no-model-banner"' in page and "register_model" not in page
    page = client_for(ada).get(reverse("study-list")).content.decode()
    assert "<code>.venv/bin/python manage.py register_model PATH --activate</code>" in page


# ---------------------------------------------------------------------------- review history


def test_the_history_says_whether_the_radiologist_agreed_or_overruled(alice, rita, study):
    called(study, version("v1", is_active=True), 0.8)  # the model: PNEUMONIA
    client = client_for(rita)
    client.post(reverse("review-create", args=[study.pk]), {"label": "NORMAL", "note": "no"})
    client.post(reverse("review-create", args=[study.pk]), {"label": "PNEUMONIA"})
    lines = selectors.study_review_history(study, list(selectors.study_predictions(study)))
    assert [(line.model_label, line.review.label, line.verdict) for line in lines] == [
        ("PNEUMONIA", "PNEUMONIA", "agrees"),
        ("PNEUMONIA", "NORMAL", "overrides the model"),
    ]
    page = client.get(reverse("study-detail", args=[study.pk])).content.decode()
    table = page[page.index('<table id="reviews">') :]
    assert table.index("<strong>agrees</strong>") < table.index("<strong>overrides the model")
    assert "(was NORMAL)" in table


def test_a_review_before_any_model_call_says_so(rita, study):
    client_for(rita).post(reverse("review-create", args=[study.pk]), {"label": "NORMAL"})
    (line,) = selectors.study_review_history(study, list(selectors.study_predictions(study)))
    assert (line.model_label, line.verdict) == ("", "no model call yet")


def test_the_prediction_history_shows_when_it_was_made_not_requested(alice, study):
    prediction = called(study, version("v1", is_active=True), 0.8)
    Prediction.objects.filter(pk=prediction.pk).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    prediction.refresh_from_db()
    page = client_for(alice).get(reverse("study-detail", args=[study.pk])).content.decode()
    made = timezone.localtime(prediction.finished_at).strftime("%Y-%m-%d %H:%M:%S")
    requested = timezone.localtime(prediction.created_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"<td>{requested}</td><td>{made}</td>" in page


# ---------------------------------------------------------------------------- agreement


def test_rates_carry_n_a_wilson_interval_and_a_too_few_warning(settings):
    settings.AGREEMENT_MIN_CASES = 30
    # Reference values of the 95% Wilson score interval.
    assert selectors.wilson_rate(0, 1).high == pytest.approx(0.7935, abs=1e-4)
    assert selectors.wilson_rate(0, 1).low == 0.0
    rate = selectors.wilson_rate(45, 50)
    assert (rate.low, rate.high) == (
        pytest.approx(0.7864, abs=1e-4),
        pytest.approx(0.9565, abs=1e-4),
    )
    assert not rate.too_few and selectors.wilson_rate(1, 29).too_few
    assert selectors.wilson_rate(0, 0) is None


def test_one_reviewed_case_is_shown_as_too_few(alice, rita, study):
    called(study, version("v1", is_active=True), 0.8)
    services.review_create(study=study, reviewer=rita, label="NORMAL")
    page = client_for(alice).get(reverse("agreement")).content.decode()
    table = page[page.index('<table id="agreement">') : page.index("</table>")]
    assert "0.000\n  <small>(0/1; 95% CI 0.00 to 0.79)</small>" in table
    assert "too few cases" in table


# ---------------------------------------------------------------------------- uploads


def test_a_mixed_batch_keeps_the_good_files_and_names_every_refused_one(alice):
    files = [
        SimpleUploadedFile("good.jpg", jpeg_bytes(seed=1)),
        SimpleUploadedFile("empty.jpg", b""),
        SimpleUploadedFile("notes.txt", b"hello"),
    ]
    stored_before = (
        set(default_storage.listdir("studies")[1]) if default_storage.exists("studies") else set()
    )
    response = client_for(alice).post(reverse("study-upload"), {"images": files}, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Last upload: 1 accepted, 0 duplicate, 2 refused: the acceptable files were kept" in page
    assert "<td>empty.jpg</td><td><strong>refused</strong></td>" in page
    assert "<td>notes.txt</td><td><strong>refused</strong></td>" in page
    assert list(Study.objects.values_list("original_filename", flat=True)) == ["good.jpg"]
    written = set(default_storage.listdir("studies")[1]) - stored_before
    assert len(written) == 1  # the good file only: a refused one leaves nothing behind


def test_the_upload_answers_json_per_file_for_the_progress_bar(alice):
    client = client_for(alice)
    first = client.post(
        reverse("study-upload"), {"images": [SimpleUploadedFile("a.jpg", jpeg_bytes(seed=2))]},
        headers={"accept": "application/json"},
    )  # fmt: skip
    assert first.status_code == 200 and first.json()["files"][0]["result"] == "accepted"
    again = client.post(
        reverse("study-upload"),
        {"images": [SimpleUploadedFile("b.jpg", jpeg_bytes(seed=2)),
                    SimpleUploadedFile("c.png", b"\x89PNG broken")]},
        headers={"accept": "application/json"},
    )  # fmt: skip
    body = again.json()
    assert [f["result"] for f in body["files"]] == ["duplicate", "refused"]
    assert body["redirect"] == reverse("study-list")
    none = client.post(
        reverse("study-upload"), {"images": [SimpleUploadedFile("d.txt", b"x")]},
        headers={"accept": "application/json"},
    )  # fmt: skip
    assert none.status_code == 400 and none.json()["summary"].endswith("nothing was stored.")
    assert Study.objects.count() == 1


# ---------------------------------------------------------------------------- lists


def test_the_thumbnail_is_a_small_jpeg_of_the_study(alice, xray_upload):
    upload = SimpleUploadedFile("big.jpg", jpeg_bytes(seed=4, size=512), "image/jpeg")
    big = services.study_create(uploaded_by=alice, image=upload)
    response = client_for(alice).get(reverse("study-thumbnail", args=[big.pk]))
    assert response["Content-Type"] == "image/jpeg"
    assert "private" in response["Cache-Control"]
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert max(thumb.size) == 96 and thumb.mode == "L"
        low, high = thumb.getextrema()
    assert high - low > 20  # an image, not a blank square


def test_a_thumbnail_whose_file_is_gone_is_a_404_not_a_500(alice, study):
    default_storage.delete(study.image.name)
    assert client_for(alice).get(reverse("study-thumbnail", args=[study.pk])).status_code == 404


def test_the_lists_show_a_bar_and_a_borderline_mark(alice, rita, xray_upload):
    v1 = version("v1", is_active=True)
    sure = services.study_create(uploaded_by=alice, image=xray_upload("sure.jpg", seed=5))
    edge = services.study_create(uploaded_by=alice, image=xray_upload("edge.jpg", seed=6))
    called(sure, v1, 0.95)
    called(edge, v1, 0.33)
    for user, url in [(alice, reverse("study-list")), (rita, reverse("worklist"))]:
        page = client_for(user).get(url).content.decode()
        row = page[page.index(f'data-study-id="{edge.pk}"') :]
        row = row[: row.index("</tr>")]
        assert "Borderline: leans pneumonia" in row and 'class="borderline-mark"' in row
        assert 'aria-label="probability 33%, operating point 30%, borderline"' in row
        assert f'src="{reverse("study-thumbnail", args=[edge.pk])}"' in row
        row = page[page.index(f'data-study-id="{sure.pk}"') :]
        row = row[: row.index("</tr>")]
        assert "Pneumonia likely" in row and "borderline-mark" not in row


def test_the_worklist_counts_what_waits_and_for_how_long(rita, alice, xray_upload, settings):
    settings.WORKLIST_MAX_WAIT_SECONDS = 3600
    old = services.study_create(uploaded_by=alice, image=xray_upload("old.jpg", seed=7))
    services.study_create(uploaded_by=alice, image=xray_upload("new.jpg", seed=8))
    Study.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=3))
    summary = selectors.worklist_summary()
    assert (summary["n"], summary["overdue"]) == (2, 1)
    page = client_for(rita).get(reverse("worklist")).content.decode()
    assert "<strong>2 studies wait for review</strong>" in page
    assert "the oldest for 3\xa0hours" in page and "1 overdue</span> (waiting over 1 h)" in page


def test_the_favicon_is_served():
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


# ---------------------------------------------------------------------------- models page


def test_the_models_page_shows_the_card_and_each_evaluation_with_its_split(alice, ada):
    from diagnosis.models import Evaluation

    made = version(
        "v-card", is_active=True, is_demo=True,
        train_args={"recipe": "crops", "pretrained": "imagenet", "freeze_epochs": 1,
                    "epochs": 2, "img_size": 160, "lr_used": 0.0019, "test_split": "acquisition"},
        metrics={"n_train": 3644, "n_val": 784, "n_test": 788, "val_auc": 0.99,
                 "threshold_rule": {"rule": "sensitivity", "target": 0.95, "n": 784}},
    )  # fmt: skip
    for split, auc in (("val", 0.99), ("test", 0.97)):
        Evaluation.objects.create(
            model_version=made, data_source=f"var/models/demo.{split}.csv",
            metrics={"auc": auc, "sensitivity": 0.9, "specificity": 0.8, "threshold": 0.3,
                     "n": {"total": 784}},
            plots={"roc": f"evaluations/{split}-roc.png"},
        )  # fmt: skip
    page = client_for(alice).get(reverse("model-list")).content.decode()
    card = page[page.index('id="card-v-card"') :]
    assert "<dt>What it is</dt><dd>a DEMO, not for patient care; active</dd>" in card
    assert "recipe crops; 1 frozen + 2 unfrozen epochs at 160 px" in card
    assert "3644 training, 784 validation and 788 held-out test images" in card
    assert "0.300: sensitivity &gt;= 0.95 on 784 validation images" in card
    assert "held-out test split (by patient): nothing was chosen on it" in page
    assert "validation split (by patient): it chose the epoch and the threshold" in page
    assert page.count('alt="roc of evaluation') == 2
    bare = version("v-bare")
    page = client_for(alice).get(reverse("model-list")).content.decode()
    assert "No stored evaluation yet." in page and "manage.py evaluate" not in page
    assert "manage.py evaluate --data DIR --model v-bare" in (
        client_for(ada).get(reverse("model-list")).content.decode()
    )
    assert bare.standing == "candidate"
