"""Pseudonymous patient keys: a keyed hash of the DICOM PatientID (or of an identifier given
with a JPEG or PNG) groups a patient's images in every whole-patient split, under any file
name; the raw identifier is kept nowhere."""

from __future__ import annotations

import io
import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import Study
from diagnosis.pseudonyms import patient_key
from ml.data import patient_of, read_manifest, split_by_patient, write_manifest
from tests.conftest import api_client_for, jpeg_bytes
from tests.dicom import dicom_bytes, xray_pixels

RAW = "MRN-7781-SECRET"


def _dicom(user, name: str, patient: str, seed: int, issuer: str = "") -> Study:
    content = dicom_bytes(xray_pixels(seed=seed), patient_id=patient, issuer=issuer)
    return services.study_create(uploaded_by=user, image=SimpleUploadedFile(name, content))


def test_the_key_is_a_keyed_hash_that_differs_under_another_secret(settings):
    key = patient_key(RAW)
    assert len(key) == 64 and RAW not in key and key == patient_key(f" {RAW} ")
    assert patient_key(RAW, "HOSPITAL-A") != key != patient_key("MRN-7782-SECRET")
    assert patient_key("") == ""
    settings.PSEUDONYM_KEY = "another installation"
    assert patient_key(RAW) != key


def test_two_dicoms_of_one_patient_under_unrelated_names_land_in_the_same_split_part(
    alice, rita, tmp_path
):
    same = [_dicom(alice, name, RAW, seed) for seed, name in enumerate(["a.dcm", "IM9", "x"])]
    others = [_dicom(alice, f"o{i}.dcm", f"MRN-{i}", 10 + i) for i in range(12)]
    for study in same + others:
        services.review_create(study=study, reviewer=rita, label="PNEUMONIA")
    keys = {s.pk: Study.objects.get(pk=s.pk).patient_key for s in same + others}
    assert len({keys[s.pk] for s in same}) == 1 and len(set(keys.values())) == 13

    pool = services.training_pool(base_data=None, exclude_held_out=False)
    patients = {item.source: patient_of(item) for item in pool}
    assert len({patients[f"study:{s.pk}"] for s in same}) == 1
    # Through a manifest, as a training run reads it, and for any seed of the split.
    pool = read_manifest(write_manifest(tmp_path / "pool.csv", pool))
    for seed in range(8):
        train, val = split_by_patient(pool, val_fraction=0.3, seed=seed)
        parts = [{i.source for i in part} for part in (train, val)]
        assert sum(all(f"study:{s.pk}" in part for s in same) for part in parts) == 1
    assert RAW not in (tmp_path / "pool.csv").read_text()


def test_the_validation_split_counts_the_images_known_by_a_patient_key(alice, rita, ada):
    keyed = [_dicom(alice, f"k{i}.dcm", f"MRN-{i // 2}", seed=i) for i in range(8)]
    unkeyed = [
        services.study_create(
            uploaded_by=alice, image=SimpleUploadedFile(f"u{i}.jpg", jpeg_bytes(seed=20 + i))
        )
        for i in range(4)
    ]
    for i, study in enumerate(keyed + unkeyed):
        services.review_create(study=study, reviewer=rita, label=["NORMAL", "PNEUMONIA"][i % 2])
    split = services.validation_split_get_or_create(base_data=None, user=ada)
    in_split = set(split.item_keys)
    keyed_in = sum(f"study:{s.pk}" in in_split for s in keyed)
    assert split.key_counts["images"] == len(in_split) > 0
    assert split.key_counts["images_keyed"] == keyed_in
    assert split.key_counts["patients_keyed"] == len(
        {Study.objects.get(pk=s.pk).patient_key for s in keyed if f"study:{s.pk}" in in_split}
    )
    client = Client()
    client.force_login(ada)
    page = client.get(reverse("model-list")).content.decode()
    assert f"{keyed_in} images (" in page and "known by a patient key" in page
    api = api_client_for(ada).get(reverse("api:model-list")).json()
    assert api["validation_split"]["key_counts"] == split.key_counts


def test_a_jpeg_takes_its_patient_id_from_the_api_and_a_bad_one_is_refused(alice, settings):
    client = api_client_for(alice)
    url = reverse("api:study-list")
    ids = []
    for seed in (1, 2):
        image = SimpleUploadedFile(f"{seed}.jpg", jpeg_bytes(seed=seed))
        response = client.post(url, {"image": image, "patient_id": RAW}, format="multipart")
        assert response.status_code == 202 and RAW not in response.content.decode()
        ids.append(response.json()["id"])
    assert {Study.objects.get(pk=pk).patient_key for pk in ids} == {patient_key(RAW)}

    before = {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()}
    image = SimpleUploadedFile("3.jpg", jpeg_bytes(seed=3))
    response = client.post(url, {"image": image, "patient_id": "x" * 65}, format="multipart")
    assert response.status_code == 400 and "patient_id" in response.json()
    assert Study.objects.count() == 2
    assert {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()} == before


def test_an_imported_folder_takes_patients_from_its_csv_and_the_audit_counts_them(
    active_model, rita, ada, tmp_path, capsys
):
    from tests.synthetic import write_dataset

    folder = tmp_path / "site"
    items = write_dataset(folder, 6, size=64, seed=3)
    rows = [f"{p.parent.name}/{p.name},MRN-{i // 2}" for i, (p, _) in enumerate(items)]
    (folder / "patients.csv").write_text("file,patient_id\n" + "\n".join(rows) + "\n")
    site = services.site_get_or_create(name="keyed")
    counts = services.site_import(site=site, data=folder, user=rita)
    assert counts["with_patient_id"] == 12
    assert len(set(site.studies.values_list("patient_key", flat=True))) == 6

    audit = services.site_audit_run(site=site, user=ada)
    calibrated = audit.metrics["calibrated"]
    assert calibrated["patients"] == 6 and calibrated["patients_keyed"] == 6
    assert calibrated["images"] == calibrated["images_keyed"] == 12
    client = Client()
    client.force_login(ada)
    page = client.get(reverse("site-detail", args=[site.name])).content.decode()
    assert "12 images of 6 patients; 12 images (6 patients) known by a patient key" in page
    # Whole patients: each patient's two studies are on one side of the calibration split.
    side = {pk: "cal" for pk in calibrated["cal_studies"]}
    side |= {pk: "eval" for pk in calibrated["eval_studies"]}
    by_patient: dict[str, set] = {}
    for study in site.studies.all():
        by_patient.setdefault(study.patient_key, set()).add(side[study.pk])
    assert all(len(sides) == 1 for sides in by_patient.values())


def test_a_patients_csv_naming_a_missing_image_imports_nothing(rita, tmp_path):
    from tests.synthetic import write_dataset

    folder = tmp_path / "site"
    write_dataset(folder, 2, size=64, seed=3)
    (folder / "patients.csv").write_text("file,patient_id\nNORMAL/nope.jpeg,MRN-1\n")
    site = services.site_get_or_create(name="bad-csv")
    with pytest.raises(ValueError, match=r"no image 'NORMAL/nope\.jpeg'"):
        services.site_import(site=site, data=folder, user=rita)
    assert not Study.objects.exists()


def test_the_raw_patient_id_is_kept_nowhere(alice, rita, ada, active_model, caplog, settings):
    caplog.set_level(logging.DEBUG)
    study = _dicom(alice, "chest.dcm", RAW, seed=5, issuer="HOSPITAL-A")
    services.prediction_run(study.predictions.get().pk)
    services.review_create(study=study, reviewer=rita, label="NORMAL")
    client = Client()
    client.force_login(ada)
    pages = [
        client.get(reverse("study-detail", args=[study.pk])).content,
        client.get(reverse("admin:diagnosis_study_change", args=[study.pk])).content,
        api_client_for(ada).get(reverse("api:study-detail", args=[study.pk])).content,
    ]
    dump = io.StringIO()
    call_command("dumpdata", "diagnosis", stdout=dump)
    files = [p.read_bytes() for root in (settings.MEDIA_ROOT, settings.VAR_DIR)
             for p in root.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]  # fmt: skip
    for where in [*pages, dump.getvalue().encode(), caplog.text.encode(), *files]:
        assert RAW.encode() not in where and b"HOSPITAL-A" not in where
    assert Study.objects.get(pk=study.pk).patient_key == patient_key(RAW, "HOSPITAL-A")
