"""Every page in a real headless Chromium: no console error, no failed request, no serious
or critical axe-core (WCAG 2.1 AA) violation; the viewer's controls change what the canvas
draws; the clinical wording on fixed probabilities; keyboard-only review of the worklist
(its speed printed, not asserted); a dropped batch uploaded with its progress shown."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from diagnosis import services
from diagnosis.models import ModelVersion, Prediction, Review, Study, TrainingJob
from ml.colormap import heat_layer
from tests.conftest import jpeg_bytes
from tests.e2e.conftest import log_in, log_out

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

THRESHOLD = 0.3


def model(**fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name="effl0-test", architecture="efficientnet_lite0", file="models/x.pt",
        sha256="1" * 64, class_names=["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA",
        preprocessing={}, threshold=THRESHOLD, is_active=True, activated_at=timezone.now(),
        metrics={"val_auc": 0.99, "val_sensitivity": 0.95, "val_specificity": 0.9, "n_val": 784},
        **fields,
    )  # fmt: skip


def hot_centre_layer(size: int = 512) -> str:
    """A stored heatmap layer whose map peaks at the image's centre."""
    y, x = np.mgrid[0:7, 0:7]
    cam = np.exp(-((x - 3) ** 2 + (y - 3) ** 2) / 3.0).astype(np.float32)
    buffer = io.BytesIO()
    heat_layer(cam, (size, size)).save(buffer, format="PNG")
    return default_storage.save("heatmaps/test-layer.png", ContentFile(buffer.getvalue()))


def study_called(uploader, version, probability: float, *, seed: int, heatmap: bool = False):
    upload = ContentFile(jpeg_bytes("PNEUMONIA", seed=seed, size=512), name=f"child-{seed}.jpg")
    upload.content_type, upload.size = "image/jpeg", upload.size
    study = services.study_create(uploaded_by=uploader, image=upload)
    prediction = study.predictions.get()
    prediction.status = Prediction.Status.DONE
    prediction.probability, prediction.threshold = probability, THRESHOLD
    prediction.label = "PNEUMONIA" if probability >= THRESHOLD else "NORMAL"
    prediction.model_version = version
    prediction.elapsed_ms = 25.0
    prediction.started_at = prediction.finished_at = timezone.now()
    if heatmap:
        prediction.heatmap = hot_centre_layer()
    prediction.save()
    return study


@pytest.fixture
def room(transactional_db, alice):
    """An active model and three studies called at fixed probabilities (threshold 0.3)."""
    version = model()
    return {
        "version": version,
        "sure": study_called(alice, version, 0.92, seed=1, heatmap=True),
        "borderline": study_called(alice, version, 0.35, seed=2),
        "normal": study_called(alice, version, 0.05, seed=3),
    }


def axe_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]})
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_every_page_loads_cleanly_and_passes_axe(page, live_server, room, alice, rita, ada):
    job = TrainingJob.objects.create(init="imagenet")
    sure = room["sure"].pk
    pages = {
        None: ["/accounts/login/"],
        "alice": ["/", f"/studies/{sure}/", "/agreement/", "/models/", "/sites/",
                  "/sites/default/", f"/models/jobs/{job.pk}/"],
        "rita": ["/worklist/", "/cleaning/", f"/studies/{sure}/?order=triage"],
        "ada": ["/api/docs/", "/admin/", "/admin/diagnosis/study/",
                f"/admin/diagnosis/study/{sure}/change/", "/admin/diagnosis/modelversion/",
                "/models/"],
    }  # fmt: skip
    failures = []
    for user, urls in pages.items():
        if user:
            log_in(page, live_server.url, user)
        for url in urls:
            page.goto(live_server.url + url)
            page.wait_for_load_state("networkidle")
            if url.startswith("/studies/"):
                page.wait_for_selector("#viewer.ready")
            if url == "/api/docs/":
                page.wait_for_selector(".swagger-ui .info")
                continue  # Swagger UI's own markup and colours (vendored): it must load cleanly
            failures += [f"{user} {url}: {v}" for v in axe_violations(page)]
        if user:
            log_out(page)
    assert not failures, "\n".join(failures)


def canvas_stats(page) -> dict:
    """Mean and spread of the grey level, and redness (R - B), of the canvas's central box."""
    return page.evaluate(
        """() => {
        const c = document.getElementById("viewer-canvas");
        const w = Math.floor(c.width * 0.2), h = Math.floor(c.height * 0.2);
        const d = c.getContext("2d").getImageData((c.width - w) / 2, (c.height - h) / 2, w, h).data;
        let n = 0, sum = 0, sum2 = 0, red = 0, black = 0;
        for (let i = 0; i < d.length; i += 4) {
          const g = (d[i] + d[i + 1] + d[i + 2]) / 3;
          sum += g; sum2 += g * g; red += d[i] - d[i + 2]; n += 1;
        }
        const all = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < all.length; i += 16) {
          if (all[i] + all[i + 1] + all[i + 2] === 0) black += 1;
        }
        const mean = sum / n;
        return {mean: mean, sd: Math.sqrt(sum2 / n - mean * mean), red: red / n,
                black: black / (all.length / 16), drawn: Number(c.dataset.drawn)};
      }"""
    )


def redrawn(page, before: dict) -> dict:
    page.wait_for_function(
        f"Number(document.getElementById('viewer-canvas').dataset.drawn) > {before['drawn']}"
    )
    return canvas_stats(page)


def test_the_viewer_controls_change_what_is_drawn(page, live_server, room, alice):
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/studies/{room['sure'].pk}/")
    page.wait_for_selector("#viewer.ready")
    start = canvas_stats(page)
    assert start["red"] > 40  # the heatmap is on by default, hot at the centre

    # Heatmap off: the centre turns grey; opacity 0 draws the same as off.
    page.select_option("#viewer-layer", "none")
    off = redrawn(page, start)
    assert abs(off["red"]) < 3 and off["red"] < start["red"] - 30
    page.select_option("#viewer-layer", "pneumonia")
    on = redrawn(page, off)
    page.focus("#viewer-opacity")
    page.keyboard.press("Home")  # opacity 0
    transparent = redrawn(page, on)
    assert transparent["mean"] == pytest.approx(off["mean"], abs=0.5)
    assert abs(transparent["red"]) < 3
    page.select_option("#viewer-layer", "none")
    plain = redrawn(page, transparent)

    # Window narrower: more contrast; level higher: darker; invert: mirror of the grey levels.
    page.focus("#viewer-window")
    for _ in range(8):
        page.keyboard.press("PageDown")
    narrow = redrawn(page, plain)
    assert narrow["sd"] > plain["sd"] * 1.3
    page.focus("#viewer-level")
    for _ in range(4):
        page.keyboard.press("PageUp")
    darker = redrawn(page, narrow)
    assert darker["mean"] < narrow["mean"] - 10
    page.click('[data-action="reset"]')
    reset = redrawn(page, darker)
    assert reset["mean"] == pytest.approx(plain["mean"], abs=0.5)
    page.click('[data-action="invert"]')
    inverted = redrawn(page, reset)
    assert inverted["mean"] == pytest.approx(255 - reset["mean"], abs=1.5)
    assert page.get_attribute('[data-action="invert"]', "aria-pressed") == "true"
    page.click('[data-action="invert"]')
    back = redrawn(page, inverted)

    # Zoom in: the black margins around the fitted image shrink; the keyboard zooms too.
    page.click('[data-action="zoom-in"]')
    zoomed = redrawn(page, back)
    assert zoomed["black"] < back["black"] - 0.02
    page.click('[data-action="actual"]')
    full = redrawn(page, zoomed)
    assert "full resolution" in page.inner_text("#viewer-scale")
    page.focus("#viewer-canvas")
    page.keyboard.press("0")  # fit again
    fitted = redrawn(page, full)
    assert fitted["black"] == pytest.approx(back["black"], abs=0.01)
    page.keyboard.press("+")
    assert redrawn(page, fitted)["black"] < fitted["black"] - 0.02


@pytest.mark.parametrize(
    ("case", "headline", "borderline"),
    [("sure", "Pneumonia likely", False), ("borderline", "Borderline: leans pneumonia", True),
     ("normal", "No pneumonia found", False)],
)  # fmt: skip
def test_the_call_is_worded_on_fixed_probabilities(
    page, live_server, room, case, headline, borderline
):
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/studies/{room[case].pk}/")
    page.wait_for_selector("#viewer.ready")
    assert page.inner_text("#call") == headline
    assert page.locator("#borderline-rule").count() == int(borderline)
    assert not page.is_visible("#p-pneumonia")  # the figures wait behind "Technical details"
    page.click("#technical summary")
    assert page.is_visible("#p-pneumonia")
    page.goto(live_server.url + "/")
    row = page.locator(f'tr[data-study-id="{room[case].pk}"]')
    assert row.locator('[data-field="label"]').inner_text() == headline
    assert row.locator(".borderline-mark").count() == int(borderline)


def test_a_radiologist_reviews_twenty_studies_with_the_keyboard_alone(
    page, live_server, transactional_db, alice, rita
):
    version = model()
    studies = [study_called(alice, version, p, seed=10 + i) for i, p in
               enumerate(np.linspace(0.02, 0.98, 20))]  # fmt: skip
    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + "/worklist/?order=oldest")
    for _ in range(40):  # Tab to "Start reviewing", as a keyboard user would
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "start":
            break
    else:
        pytest.fail("Tab never reached the Start reviewing link")
    started = time.perf_counter()
    page.keyboard.press("Enter")
    for _ in studies:
        page.wait_for_selector("#review-form")
        predicted = page.text_content('#technical [data-field="label"]').strip()
        page.keyboard.press("p" if predicted == "PNEUMONIA" else "n")  # agree with the model
        page.keyboard.press("s")
        page.wait_for_load_state("load")
    page.wait_for_selector("text=The worklist is empty.")
    seconds = time.perf_counter() - started
    assert Review.objects.filter(reviewer=rita).count() == 20
    assert set(Study.objects.values_list("reviewed_at", flat=True)) != {None}
    report = {"studies": 20, "seconds": round(seconds, 2), "per_study": round(seconds / 20, 3)}
    print(f"\nkeyboard review of 20 studies: {report}")
    if os.getenv("REVIEW_SPEED_OUT"):
        Path(os.environ["REVIEW_SPEED_OUT"]).write_text(json.dumps(report) + "\n")


def test_a_dropped_batch_uploads_with_progress_and_a_result_per_file(
    page, live_server, transactional_db, alice
):
    log_in(page, live_server.url, "alice")

    def as_file(name: str, kind: str, data: bytes) -> dict:
        return {"name": name, "type": kind, "b64": base64.b64encode(data).decode()}

    files = [as_file("good.jpg", "image/jpeg", jpeg_bytes(seed=30)),
             as_file("notes.txt", "text/plain", b"hello")]  # fmt: skip
    dropped = page.evaluate_handle(
        """(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
          const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
          dt.items.add(new File([bytes], f.name, {type: f.type}));
        }
        return dt;
      }""",
        files,
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    assert page.inner_text("#dropzone-files") == "2 files chosen: good.jpg, notes.txt"

    # Every status line the upload shows, kept across the page change that follows it.
    page.evaluate(
        """() => new MutationObserver(() => {
          const seen = JSON.parse(sessionStorage.getItem("seen") || "[]");
          seen.push(document.getElementById("upload-status").textContent);
          seen.push("progress " + document.getElementById("upload-progress").value);
          sessionStorage.setItem("seen", JSON.stringify(seen));
        }).observe(document.getElementById("upload-status"),
                   {childList: true, characterData: true, subtree: true})"""
    )
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-results")
    assert "1 accepted, 0 duplicate, 1 refused" in page.inner_text("#upload-summary")
    rows = page.locator("#upload-results tbody tr")
    assert rows.nth(0).inner_text().startswith("good.jpg\taccepted")
    assert rows.nth(1).inner_text().startswith("notes.txt\trefused")
    assert list(Study.objects.values_list("original_filename", flat=True)) == ["good.jpg"]
    seen = json.loads(page.evaluate("sessionStorage.getItem('seen')"))
    assert seen[0] == "Uploading…" and "Checking the files…" in seen and "progress 100" in seen
