"""The PACS link as deployed: a real Orthanc, a modality C-STOREing into it, the listener
(`manage.py pacs_listen`) and a prediction worker as separate processes. Studies arrive,
are predicted with their heatmaps and come back as reports and overlays, once each, across a
restart of the listener."""

from __future__ import annotations

import sys

import pytest
from pydicom.uid import generate_uid

from diagnosis.models import PacsDelivery, PacsInstance, Prediction
from diagnosis.orthanc import Orthanc
from tests.dicom import dicom_bytes, xray_pixels
from tests.e2e.conftest import Process, child_env, wait_until
from tests.pacs import PASSWORD, USERNAME, c_store, start_orthanc

pytestmark = pytest.mark.e2e


@pytest.fixture
def orthanc_server(tmp_path):
    from scripts.orthanc import free_port

    server = start_orthanc(tmp_path / "orthanc", destination_port=free_port())
    yield server
    server.stop()


def test_studies_from_the_pacs_come_back_reported_once(
    start_worker, active_model, orthanc_server, tmp_path
):
    pacs_env = {"ORTHANC_URL": orthanc_server.url, "ORTHANC_USERNAME": USERNAME,
                "ORTHANC_PASSWORD": PASSWORD,
                "PREDICTION_HEATMAP_QUIET_SECONDS": "0.2"}  # fmt: skip
    worker = start_worker(**pacs_env)

    def listener() -> Process:
        process = Process([sys.executable, "manage.py", "pacs_listen"],
                          child_env(VAR_DIR=str(tmp_path), **pacs_env))  # fmt: skip
        process.wait_for_output("PACS: Orthanc", timeout=60)
        return process

    def delivered(n: int) -> bool:
        return PacsDelivery.objects.filter(status="delivered").count() >= n

    first = listener()
    studies = [generate_uid() for _ in range(3)]
    c_store(orthanc_server, [dicom_bytes(xray_pixels(seed=0), study_uid=studies[0])])
    wait_until(lambda: delivered(2), timeout=90, what="the first report and overlay", process=first)
    first.kill()  # a crash, not a shutdown
    c_store(orthanc_server, [
        dicom_bytes(xray_pixels(seed=i), study_uid=uid) for i, uid in enumerate(studies[1:], 1)
    ])  # fmt: skip
    second = listener()
    try:
        wait_until(lambda: delivered(6), timeout=90, what="all reports and overlays",
                   process=second)  # fmt: skip
    finally:
        second.stop()

    assert sorted(PacsInstance.objects.values_list("study_instance_uid", flat=True)) == sorted(
        studies
    )
    assert Prediction.objects.filter(status="done").count() == 3
    assert PacsDelivery.objects.count() == 6
    pacs = Orthanc(orthanc_server.url, USERNAME, PASSWORD)
    for uid in studies:
        [study] = [r for r in pacs.lookup(uid) if r["Type"] == "Study"]
        kinds = sorted(pacs.tags(i["ID"])["Modality"] for i in pacs.study_instances(study["ID"]))
        assert kinds == ["DX", "OT", "SR"], kinds  # the image, the overlay, the report
    assert "Traceback" not in worker.output
    # The files' identifying values (tests.dicom) reach neither process's log.
    for value in ("Doe^Jane", "MRN-0042-SECRET", "ACC-777", "St Example Hospital", "20210304"):
        assert value not in worker.output + first.output + second.output, value
