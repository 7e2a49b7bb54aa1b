"""The platform as a DICOM node, against a real Orthanc and a real C-STORE (pynetdicom):
studies in once, results out once (a structured report and a secondary capture, then a
verified report after review), an Orthanc outage or a restart mid-feed losing and doubling
nothing, refusals recorded, no PHI kept."""

from __future__ import annotations

import io
import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from diagnosis import services
from diagnosis.models import PacsDelivery, PacsFeed, PacsInstance, Prediction, Study
from diagnosis.orthanc import Orthanc, OrthancError
from scripts.orthanc import free_port
from tests.conftest import api_client_for
from tests.dicom import dicom_bytes, xray_pixels
from tests.pacs import PASSWORD, USERNAME, DestinationSCP, c_store, start_orthanc, wait_for

pytestmark = pytest.mark.slow  # starts Orthanc (not in make test-unit)

PHI = ("Doe^Jane", "MRN-0042-SECRET", "ACC-777", "St Example Hospital", "20210304")
DESTINATION_PORT = free_port()


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), destination_port=DESTINATION_PORT)
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc_server, settings, db):
    """The platform pointed at an empty Orthanc, its feed read up to now."""
    settings.ORTHANC_URL = orthanc_server.url
    settings.ORTHANC_USERNAME, settings.ORTHANC_PASSWORD = USERNAME, PASSWORD
    settings.ORTHANC_FORWARD_TO = []
    settings.PREDICTION_HEATMAPS = "inline"
    client = Orthanc.from_settings()
    for patient in client.patients():
        client.delete("patients", patient)
    PacsFeed.objects.create(source=client.url, last_seq=client.changes(since=0, limit=0)["Last"])
    return client


def radiograph(seed: int = 0, **kwargs) -> bytes:
    return dicom_bytes(xray_pixels(seed=seed), **kwargs)


def ingest(pacs, expected: int) -> int:
    """Poll the feed until `expected` instances were taken (Orthanc's StableAge is 1 s)."""
    taken = [0]

    def enough():
        taken[0] += services.pacs_poll(pacs)
        return taken[0] >= expected

    wait_for(enough)
    return taken[0]


def predict_all() -> list[Prediction]:
    pending = Prediction.objects.filter(status="pending").order_by("pk")
    return [services.prediction_run(pk) for pk in list(pending.values_list("pk", flat=True))]


def stored(pacs, uid: str):
    """The instance with this SOPInstanceUID as Orthanc returns it, parsed."""
    found = [r for r in pacs.lookup(uid) if r["Type"] == "Instance"]
    assert found, f"{uid} is not in Orthanc"
    return dcmread(io.BytesIO(pacs.instance_file(found[0]["ID"])))


def study_instances(pacs, study_uid: str) -> list:
    found = [r for r in pacs.lookup(study_uid) if r["Type"] == "Study"]
    return pacs.study_instances(found[0]["ID"]) if found else []


def items(dataset):
    """Every content item of an SR tree, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from items(item)


def numbers(sr) -> dict:
    return {
        i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
        for i in items(sr)
        if i.ValueType == "NUM"
    }


def findings(sr) -> dict:
    return {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
        for i in items(sr)
        if i.ValueType == "CODE"
    }


def test_a_stored_study_is_ingested_once_predicted_and_reported_back(
    pacs, orthanc_server, active_model
):
    study_uid, sop_uid = generate_uid(), generate_uid()
    assert c_store(orthanc_server, [radiograph(study_uid=study_uid, sop_uid=sop_uid)]) == [0]

    assert ingest(pacs, 1) == 1
    instance = PacsInstance.objects.get()
    assert (instance.status, instance.sop_instance_uid) == ("ingested", sop_uid)
    study = instance.study
    assert (study.source_format, study.modality, study.uploaded_by.username) == (
        "DICOM", "DX", "pacs",
    )  # fmt: skip
    assert not study.uploaded_by.is_active and not study.uploaded_by.has_usable_password()
    # The feed replayed from the start takes nothing twice.
    PacsFeed.objects.update(last_seq=0)
    assert services.pacs_poll(pacs) == 0
    assert Study.objects.count() == 1

    [prediction] = predict_all()
    assert prediction.status == "done" and prediction.heatmap
    assert set(prediction.deliveries.values_list("kind", "status")) == {
        ("report", "pending"), ("overlay", "pending"),
    }  # fmt: skip
    assert services.pacs_deliver(pacs) == 2
    assert services.pacs_deliver(pacs) == 0  # nothing owed twice

    report = prediction.deliveries.get(kind="report")
    sr = stored(pacs, report.sop_instance_uid)
    assert sr.SOPClassUID.name == "Comprehensive 3D SR Storage"
    assert (sr.StudyInstanceUID, sr.VerificationFlag, sr.CompletionFlag) == (
        study_uid, "UNVERIFIED", "COMPLETE",
    )  # fmt: skip
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study_uid
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == instance.series_instance_uid
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop_uid
    assert numbers(sr)["Probability"] == pytest.approx(prediction.probability, abs=1e-6)
    assert numbers(sr)["Threshold Value"] == pytest.approx(prediction.threshold, abs=1e-6)
    called = "Present" if prediction.label == "PNEUMONIA" else "Absent"
    assert findings(sr)["Pneumonia"] == called
    names = [i.TextValue for i in items(sr) if i.ValueType == "TEXT"]
    assert active_model.name in names and active_model.sha256[:16] in names
    assert sr.PatientID == "MRN-0042-SECRET"  # the same patient in the PACS

    overlay = prediction.deliveries.get(kind="overlay")
    sc = stored(pacs, overlay.sop_instance_uid)
    assert sc.StudyInstanceUID == study_uid and sc.SeriesInstanceUID != series.SeriesInstanceUID
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sop_uid
    assert sc.pixel_array.shape[-1] == 3
    assert len(study_instances(pacs, study_uid)) == 3  # the image, the report, the overlay
    # The study is stable again with our two objects in it: they are not taken as studies.
    wait_for(lambda: any(c["ChangeType"] == "StableStudy" for c in pacs.changes(
        since=PacsFeed.objects.get().last_seq)["Changes"]))  # fmt: skip
    assert services.pacs_poll(pacs) == 0 and PacsInstance.objects.count() == 1


def test_a_review_sends_a_verified_report_that_supersedes_it(
    pacs, orthanc_server, active_model, rita
):
    rita.first_name, rita.last_name = "Rita", "Reader"
    rita.save()
    study_uid = generate_uid()
    c_store(orthanc_server, [radiograph(study_uid=study_uid)])
    ingest(pacs, 1)
    [prediction] = predict_all()
    services.pacs_deliver(pacs)
    other = "NORMAL" if prediction.label == "PNEUMONIA" else "PNEUMONIA"

    review = services.review_create(study=prediction.study, reviewer=rita, label=other)

    verified = PacsDelivery.objects.get(kind="verified")
    assert verified.review == review
    assert services.pacs_deliver(pacs) == 1
    sr = stored(pacs, verified.sop_instance_uid)
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("VERIFIED", "COMPLETE")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Rita"
    assert findings(sr)["Pneumonia"] == ("Present" if other == "PNEUMONIA" else "Absent")
    first = prediction.deliveries.get(kind="report").sop_instance_uid
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first
    assert len(study_instances(pacs, study_uid)) == 4


def test_results_wait_out_an_orthanc_outage_and_are_stored_once(pacs, orthanc_server, active_model):
    study_uid = generate_uid()
    c_store(orthanc_server, [radiograph(study_uid=study_uid)])
    ingest(pacs, 1)
    predict_all()

    orthanc_server.stop()
    try:
        assert services.pacs_deliver(pacs) == 0
        owed = list(PacsDelivery.objects.order_by("pk"))
        assert [d.status for d in owed] == ["pending", "pending"]
        assert all(d.attempts == 1 and "unreachable" in d.last_error for d in owed)
        assert all(d.next_attempt_at > timezone.now() for d in owed)
        assert services.pacs_deliver(pacs) == 0  # backing off: not tried again yet
        assert PacsDelivery.objects.filter(attempts=1).count() == 2
    finally:
        orthanc_server.start()

    PacsDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert services.pacs_deliver(pacs) == 2
    # A sender that stored an object and died before recording it sends it again: the PACS
    # already has that UID, so it is marked delivered without a second copy.
    PacsDelivery.objects.update(status="pending", delivered_at=None)
    assert services.pacs_deliver(pacs) == 2
    assert len(study_instances(pacs, study_uid)) == 3
    assert set(PacsDelivery.objects.values_list("status", flat=True)) == {"delivered"}


class FailingAfter(Orthanc):
    """The real Orthanc, until `studies` studies have been read: then the platform 'crashes'
    (a poll that stops with an error half-way through the feed)."""

    studies = 1

    def study_instances(self, study_id: str) -> list[dict]:
        if self.studies <= 0:
            raise OrthancError("the platform stopped here")
        self.studies -= 1
        return super().study_instances(study_id)


def test_a_restart_mid_feed_skips_nothing_and_takes_nothing_twice(
    pacs, orthanc_server, active_model
):
    uids = [generate_uid() for _ in range(3)]
    c_store(orthanc_server, [radiograph(seed=i, study_uid=uid) for i, uid in enumerate(uids)])
    wait_for(lambda: sum(
        c["ChangeType"] == "StableStudy"
        for c in pacs.changes(since=PacsFeed.objects.get().last_seq)["Changes"]
    ) == 3)  # fmt: skip

    start = PacsFeed.objects.get().last_seq
    crashing = FailingAfter(pacs.url, USERNAME, PASSWORD)
    with pytest.raises(OrthancError):
        services.pacs_poll(crashing, limit=4)  # one study taken, then it stops
    seq = PacsFeed.objects.get().last_seq
    assert PacsInstance.objects.count() == 1 and seq > start  # progress was kept

    assert services.pacs_poll(pacs) == 2  # resumes from the stored sequence number
    assert services.pacs_poll(pacs) == 0
    assert sorted(PacsInstance.objects.values_list("study_instance_uid", flat=True)) == sorted(uids)
    assert Study.objects.count() == 3 and PacsFeed.objects.get().last_seq > seq


def test_a_study_stored_by_stow_rs_is_ingested_too(pacs):
    import requests

    sop_uid, boundary = generate_uid(), "pneumo-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + radiograph(sop_uid=sop_uid) + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    answer = requests.post(
        f"{pacs.url}/dicom-web/studies", data=body, auth=(USERNAME, PASSWORD), timeout=10,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={boundary}"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text

    assert ingest(pacs, 1) == 1
    assert PacsInstance.objects.get().sop_instance_uid == sop_uid
    assert PacsInstance.objects.get().study.predictions.get().status == "pending"


def test_a_ct_or_a_multi_frame_object_is_refused_with_its_reason(pacs, orthanc_server):
    ct, cine = generate_uid(), generate_uid()
    c_store(orthanc_server, [
        radiograph(modality="CT", sop_uid=ct), radiograph(frames=2, sop_uid=cine),
    ])  # fmt: skip

    assert ingest(pacs, 2) == 2
    reasons = dict(PacsInstance.objects.values_list("sop_instance_uid", "reason"))
    assert "modality CT is not a radiograph" in reasons[ct]
    assert "multi-frame" in reasons[cine]
    assert set(PacsInstance.objects.values_list("status", flat=True)) == {"refused"}
    assert not Study.objects.exists() and not Prediction.objects.exists()
    assert services.pacs_poll(pacs) == 0  # refused once, not retried for ever


def test_a_study_deleted_before_it_was_read_does_not_block_the_feed(pacs, orthanc_server):
    gone, kept = generate_uid(), generate_uid()
    c_store(orthanc_server, [radiograph(study_uid=gone)])
    wait_for(lambda: any(c["ChangeType"] == "StableStudy" for c in pacs.changes(
        since=PacsFeed.objects.get().last_seq)["Changes"]))  # fmt: skip
    [study] = [r for r in pacs.lookup(gone) if r["Type"] == "Study"]
    pacs.delete("studies", study["ID"])
    c_store(orthanc_server, [radiograph(seed=1, study_uid=kept)])

    assert ingest(pacs, 1) == 1
    assert list(PacsInstance.objects.values_list("study_instance_uid", flat=True)) == [kept]


def test_results_are_forwarded_to_a_destination(pacs, orthanc_server, settings, active_model):
    settings.ORTHANC_FORWARD_TO = ["DEST"]
    with DestinationSCP(DESTINATION_PORT) as destination:
        c_store(orthanc_server, [radiograph()])
        ingest(pacs, 1)
        predict_all()
        assert services.pacs_deliver(pacs) == 2
        kinds = sorted(ds.SOPClassUID.name for ds in destination.received)
    assert kinds == ["Comprehensive 3D SR Storage", "Secondary Capture Image Storage"]
    assert all(d.forwarded_to == ["DEST"] for d in PacsDelivery.objects.all())


def test_no_identifying_data_reaches_a_row_a_log_or_a_page(
    pacs, orthanc_server, active_model, rita, caplog, client
):
    caplog.set_level(logging.DEBUG)
    c_store(orthanc_server, [radiograph()])
    ingest(pacs, 1)
    [prediction] = predict_all()
    services.pacs_deliver(pacs)
    services.review_create(study=prediction.study, reviewer=rita, label="NORMAL")
    services.pacs_deliver(pacs)
    client.force_login(rita)
    page = client.get(reverse("study-detail", args=[prediction.study_id]))
    api = api_client_for(rita).get(f"/api/studies/{prediction.study_id}/")
    assert page.status_code == 200 and api.status_code == 200

    with connection.cursor() as cursor:
        dump = []
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            dump.extend(repr(row) for row in cursor.fetchall())
    texts = {"rows": "\n".join(dump), "logs": caplog.text, "page": page.content.decode(),
             "api": api.content.decode()}  # fmt: skip
    for where, text in texts.items():
        for value in PHI:
            assert value not in text, f"{value!r} found in {where}"


def test_the_listener_checks_its_settings_at_start(pacs, settings):
    settings.ORTHANC_PASSWORD = "wrong"
    with pytest.raises(CommandError, match="refused the credentials"):
        call_command("pacs_listen", "--once")
    settings.ORTHANC_PASSWORD, settings.ORTHANC_SITE = PASSWORD, "no-such-site"
    with pytest.raises(CommandError, match="ORTHANC_SITE names site 'no-such-site'"):
        call_command("pacs_listen", "--once")
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CommandError, match="Orthanc unreachable"):
        call_command("pacs_listen", "--once")


def test_the_study_page_and_api_show_each_result_delivery_and_ids_to_admins_only(
    pacs, orthanc_server, active_model, rita, ada, client
):
    sop_uid = generate_uid()
    c_store(orthanc_server, [radiograph(sop_uid=sop_uid)])
    ingest(pacs, 1)
    [prediction] = predict_all()
    orthanc_server.stop()
    try:
        services.pacs_deliver(pacs)  # fails: both objects stay pending with the reason
    finally:
        orthanc_server.start()
    PacsDelivery.objects.filter(kind="report").update(next_attempt_at=None)
    services.pacs_deliver(pacs)  # the report gets through; the overlay waits its backoff
    url = f"/api/studies/{prediction.study_id}/"

    shown = api_client_for(rita).get(url).json()
    states = {d["kind"]: d for d in shown["predictions"][0]["deliveries"]}
    assert states["report"]["status"] == "delivered" and states["report"]["attempts"] == 2
    assert states["overlay"]["status"] == "pending" and states["overlay"]["attempts"] == 1
    assert "unreachable" in states["overlay"]["last_error"]
    assert shown["pacs"] is None and sop_uid not in str(shown)
    assert api_client_for(ada).get(url).json()["pacs"]["sop_instance_uid"] == sop_uid

    client.force_login(rita)
    page = client.get(reverse("study-detail", args=[prediction.study_id])).content.decode()
    assert "Sent back to the PACS" in page and "Delivered" in page and "Pending" in page
    assert sop_uid not in page
    client.force_login(ada)
    page = client.get(reverse("study-detail", args=[prediction.study_id])).content.decode()
    assert sop_uid in page
