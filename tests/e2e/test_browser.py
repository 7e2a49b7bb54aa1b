"""The main pages in a real headless Chromium, against a live server and a real worker:
an uploader uploads and sees the prediction appear, a radiologist corrects the label."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from diagnosis import wording
from diagnosis.models import Review, Study
from tests.conftest import jpeg_bytes
from tests.e2e.conftest import log_in, log_out, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_it_uploads_predicts_and_reviews_in_a_browser(
    page, live_server, start_worker, active_model, alice, rita, tmp_path
):
    worker = start_worker()
    image = tmp_path / "child-chest.jpg"
    image.write_bytes(jpeg_bytes("PNEUMONIA", seed=7, size=512))

    # alice uploads, and the result appears without a reload.
    log_in(page, live_server.url, "alice")
    page.set_input_files("#id_images", str(image))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("text=Last upload: 1 accepted")
    study = Study.objects.get()
    row = page.locator(f'tr[data-study-id="{study.pk}"]')
    page.evaluate("window.__notReloaded = true")
    wait_until(
        lambda: row.locator('[data-field="status"]').inner_text() == "done",
        timeout=90,
        what="the status to turn done on the page",
        process=worker,
    )
    assert page.evaluate("window.__notReloaded") is True
    predicted = study.latest_prediction.label
    call = row.locator('[data-field="label"]').inner_text()
    assert call == wording.prediction_call(study.latest_prediction).headline
    page.click(f"text=#{study.pk}")
    assert page.text_content('#technical [data-field="label"]').strip() == predicted
    assert call in page.inner_text("#call")
    assert page.locator("#review-form").count() == 0
    # The Grad-CAM overlay the worker stored, drawn at the upload's size (512 px).
    # The viewer lays the Grad-CAM layer the worker stored over the image (512 px).
    # (The heatmap is drawn once no prediction waits; the page reloads when it is.)
    page.wait_for_selector('#viewer-layer option[value="pneumonia"]', state="attached",
                           timeout=90_000)  # fmt: skip
    page.wait_for_selector("#viewer.ready")
    assert page.get_attribute("#viewer", "data-natural-width") == "512"
    assert page.input_value("#viewer-layer") == "pneumonia"
    page.screenshot(path=str(tmp_path / "uploader.png"), full_page=True)
    log_out(page)

    # rita corrects the label with a note.
    corrected = "NORMAL" if predicted == "PNEUMONIA" else "PNEUMONIA"
    log_in(page, live_server.url, "rita")
    page.goto(f"{live_server.url}/studies/{study.pk}/")
    page.check(f"#review-form input[value={corrected}]")
    page.fill("#id_note", "reviewed in the browser test")
    page.click("#review-form button[type=submit]")
    page.wait_for_selector("text=Review recorded")
    assert page.inner_text("#current-label") == corrected
    assert "reviewed in the browser test" in page.inner_text("#reviews")
    page.screenshot(path=str(tmp_path / "radiologist.png"), full_page=True)

    review = Review.objects.get()
    assert (review.reviewer, review.previous_label, review.label) == (rita, "", corrected)
    if os.getenv("SCREENSHOT_DIR"):
        for name in ("uploader.png", "radiologist.png"):
            shutil.copy(tmp_path / name, Path(os.environ["SCREENSHOT_DIR"]) / name)
