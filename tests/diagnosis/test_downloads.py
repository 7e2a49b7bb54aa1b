"""A stored file that the database names but the storage lost answers 404 with a clear
message and an error in the log, on every page and API view that serves files: never a 500."""

from __future__ import annotations

import logging
import os

import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import CleaningCandidate, CleaningRun, ModelVersion
from tests.conftest import api_client_for
from tests.diagnosis.test_views import client_for


@pytest.fixture
def lost(alice, active_model, xray_upload, tmp_path):
    """A study with its prediction and heatmap, a model version with a plot and a cleaning
    candidate: every file of theirs deleted from disk, the rows kept."""
    study = services.study_create(uploaded_by=alice, image=xray_upload("lost.jpg", seed=3))
    prediction = services.prediction_run(study.predictions.get().pk)
    services.heatmaps_draw(quiet=0)
    prediction.refresh_from_db()
    version = ModelVersion.objects.get(pk=active_model.pk)
    version.plots = {"roc": "plots/never-written.png"}
    version.save(update_fields=["plots"])
    run = CleaningRun.objects.create(n_items=1, n_issues=0)
    candidate = CleaningCandidate.objects.create(
        run=run, item_key="k", path=str(tmp_path / "moved.jpeg"), given_label="NORMAL",
        probability=0.5, loss=0.7, self_confidence=0.5, label_issue=False, rank=1,
    )  # fmt: skip
    os.remove(study.image.path)
    os.remove(prediction.heatmap.path)
    return {
        "study-image": [study.pk],
        "prediction-heatmap": [study.pk, prediction.pk],
        "plot": ["version", version.pk, "roc"],
        "cleaning-image": [candidate.pk],
    }


PAGES = ["study-image", "prediction-heatmap", "plot", "cleaning-image"]
API = ["study-image", "prediction-heatmap", "plot"]


@pytest.mark.parametrize(("kind", "name"), [("page", n) for n in PAGES] + [("api", n) for n in API])
def test_a_file_missing_from_storage_is_a_404_that_says_so(kind, name, lost, rita, caplog):
    url = reverse(name if kind == "page" else f"api:{name}", args=lost[name])
    client = client_for(rita) if kind == "page" else api_client_for(rita)
    with caplog.at_level(logging.ERROR, logger="diagnosis.downloads"):
        response = client.get(url)

    assert response.status_code == 404
    text = response.json()["detail"] if kind == "api" else response.content.decode()
    assert "is missing from storage" in text
    (record,) = [r for r in caplog.records if r.name == "diagnosis.downloads"]
    assert record.levelno == logging.ERROR and "missing from storage" in record.getMessage()


def test_an_unknown_address_says_so_in_words(rita):
    response = client_for(rita).get("/no/such/page/")
    assert response.status_code == 404
    text = response.content.decode()
    assert "The page you asked for does not exist." in text and "Resolver404" not in text
