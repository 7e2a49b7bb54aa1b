"""Real-world inputs: DICOM uploads, PHI kept out, intended-use warnings, duplicates and
hostile files."""

from __future__ import annotations

import io
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from diagnosis import services
from diagnosis.models import Prediction, Study
from diagnosis.validation import UploadRejected
from ml.data import write_manifest
from tests.conftest import api_client_for, assert_outputs_vary, jpeg_bytes, png_bytes
from tests.dicom import dicom_bytes, xray_pixels

PHI = ("Doe", "Jane", "MRN-0042-SECRET", "20210304", "ACC-777", "St Example")


def upload(user, name: str, content: bytes):
    return services.study_create(uploaded_by=user, image=SimpleUploadedFile(name, content))


def stored_files(settings) -> set[str]:
    return {str(p) for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["chest.dcm", "IM000123", "scan.jpg"])
def test_a_dicom_upload_is_stored_as_png_with_de_identified_facts_only(alice, name, caplog):
    caplog.set_level(logging.DEBUG)
    study = upload(alice, name, dicom_bytes(age="030M", sex="M", view="AP"))

    assert (study.source_format, study.content_type) == ("DICOM", "image/png")
    assert study.image.name.endswith(".png") and Image.open(study.image.path).mode == "L"
    assert (study.modality, study.view_position, study.body_part) == ("DX", "AP", "CHEST")
    assert (study.patient_sex, study.patient_age_years, study.warnings) == ("M", 2, [])
    # No identifying value anywhere: the row, the stored file, the API, the page, the logs.
    row = " ".join(str(v) for v in Study.objects.filter(pk=study.pk).values().get().values())
    stored = study.image.read()
    api = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).content
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("study-detail", args=[study.pk])).content
    for value in PHI:
        for where in (row, stored.decode("latin-1"), api.decode(), page.decode(), caplog.text):
            assert value not in where


def test_a_monochrome1_study_is_predicted_like_its_monochrome2_twin(alice, active_model):
    stored = xray_pixels("PNEUMONIA", seed=3, bits=12)
    mono2 = upload(alice, "a.dcm", dicom_bytes(stored, photometric="MONOCHROME2"))
    mono1 = upload(alice, "b.dcm", dicom_bytes(4095 - stored, photometric="MONOCHROME1"))
    services.prediction_run(mono2.latest_prediction.pk)  # one batch runs both
    results = [Prediction.objects.get(study=s) for s in (mono2, mono1)]
    assert all(r.status == "done" for r in results)
    assert_outputs_vary([r.probability for r in results], min_spread=0)
    assert results[0].probability == pytest.approx(results[1].probability, abs=1e-6)


def test_the_header_warns_about_lateral_views_other_body_parts_and_adults(alice):
    study = upload(alice, "x.dcm", dicom_bytes(view="LL", body_part="ABDOMEN", age="045Y"))
    assert [w.split(" ")[0] for w in study.warnings] == ["Lateral", "Body", "Adult"]
    body = api_client_for(alice).get(reverse("api:study-detail", args=[study.pk])).json()
    assert body["warnings"] == study.warnings
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("study-detail", args=[study.pk])).content.decode()
    assert 'id="warnings"' in page and "Adult patient (45 years)" in page


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (jpeg_bytes("NORMAL"), []),
        (png_bytes("PNEUMONIA", seed=4), []),
        (
            _encoded(
                Image.fromarray(
                    np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
                )
            ),
            ["Colour"],
        ),
        (_encoded(Image.new("L", (300, 300), 128)), ["Very", "Mostly"]),
        (_encoded(Image.new("L", (900, 200), 0).resize((900, 200))), ["Unusual", "Very", "Mostly"]),
    ],
    ids=["xray-jpeg", "xray-png", "colour-noise", "flat-grey", "wide-black"],
)
def test_the_pixel_rule_warns_about_images_unlike_a_radiograph(alice, content, expected):
    study = upload(alice, "x.png", content)
    assert [w.split(" ")[0] for w in study.warnings] == expected


def test_an_exact_duplicate_is_linked_not_run_again(alice, bob, rita):
    content = jpeg_bytes("PNEUMONIA", seed=9)
    first = upload(alice, "a.jpg", content)
    client = api_client_for(alice)
    response = client.post(
        reverse("api:study-list"), {"image": SimpleUploadedFile("again.jpg", content)}
    )
    assert response.status_code == 200
    assert response.json()["id"] == first.pk and response.json()["duplicate"] is True
    # rita sees every study: hers is linked too; bob cannot see alice's: a study of his own.
    assert upload(rita, "r.jpg", content).pk == first.pk
    bobs = upload(bob, "b.jpg", content)
    assert bobs.pk != first.pk and not bobs.is_duplicate
    # The same bytes twice in one upload make one study.
    twice = services.study_create_many(
        uploaded_by=alice,
        images=[SimpleUploadedFile(n, jpeg_bytes(seed=10)) for n in ("c.jpg", "d.jpg")],
    )
    assert twice[0].pk == twice[1].pk and twice[1].is_duplicate
    assert Study.objects.count() == 3 and Prediction.objects.count() == 3


def _bomb_png(side: int = 50_000) -> bytes:
    """A tiny PNG that claims side x side 1-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    rows = zlib.compress(b"\0" * (side // 8 + 1) * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def _animated_gif_as_png() -> bytes:
    frames = [Image.new("L", (64, 64), v) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bomb.png", _bomb_png(), "than the limit"),
        ("anim.png", _animated_gif_as_png(), "multi-frame"),
        ("ct.dcm", dicom_bytes(modality="CT"), "not a radiograph"),
        ("cine.dcm", dicom_bytes(frames=3), "multi-frame"),
        ("cut.dcm", dicom_bytes()[:5000], r"cannot be|damaged|decoded"),
    ],
    ids=["decompression-bomb", "animated-png", "dicom-ct", "dicom-multiframe", "dicom-truncated"],
)
def test_hostile_and_unusable_files_are_refused_leaving_nothing(
    alice, settings, name, content, reason
):
    before = stored_files(settings)
    with pytest.raises(UploadRejected, match=reason):
        upload(alice, name, content)
    assert Study.objects.count() == 0 and stored_files(settings) == before
    response = api_client_for(alice).post(
        reverse("api:study-list"), {"image": SimpleUploadedFile(name, content)}
    )
    assert response.status_code == 400 and "image" in response.json()


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/x.jpg", "x.jpg"),
        ("..\\..\\win.jpg", "win.jpg"),
        ("rö\u200bntgen 🫁.jpg", "röntgen 🫁.jpg"),
        ("a\x00b\x1b.jpg", "ab.jpg"),
    ],
    ids=["traversal", "windows-traversal", "unicode", "control-characters"],
)
def test_client_file_names_are_only_displayed_never_used_as_paths(alice, name, shown, settings):
    study = upload(alice, name, jpeg_bytes())
    assert study.original_filename == shown
    assert study.image.name.startswith("studies/") and ".." not in study.image.name
    assert Path(study.image.path).resolve().is_relative_to(Path(settings.MEDIA_ROOT).resolve())


def test_exported_training_manifests_hold_no_phi(alice, rita, tmp_path):
    study = upload(alice, "x.dcm", dicom_bytes())
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA")
    manifest = write_manifest(tmp_path / "pool.csv", services.training_pool())
    text = manifest.read_text()
    assert f"study:{study.pk}" in text and not any(value in text for value in PHI)
