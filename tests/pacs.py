"""A real PACS for tests: an Orthanc process (scripts/orthanc.py), a modality that C-STOREs
into it with pynetdicom, and a DICOM destination that results are forwarded to.

    server = start_orthanc(tmp)               # skips (fails in CI) when Orthanc is missing
    c_store(server, [dicom_bytes(...)])        # as the X-ray machine would
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from scripts.orthanc import OrthancProcess, available, free_port

MODALITY_AET = "TESTSCU"  # the X-ray machine: the only peer Orthanc takes stores from
DESTINATION_AET = "TESTDEST"  # where results are forwarded (a pynetdicom SCP, DestinationSCP)
USERNAME, PASSWORD = "pneumo-test", "a-test-password"


def start_orthanc(folder: Path, *, destination_port: int) -> OrthancProcess:
    if not available():
        message = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.getenv("REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    modalities = {
        "MODALITY": [MODALITY_AET, "127.0.0.1", free_port()],
        "DEST": [DESTINATION_AET, "127.0.0.1", destination_port],
    }
    return OrthancProcess(
        folder, username=USERNAME, password=PASSWORD, modalities=modalities
    ).start()


def c_store(server: OrthancProcess, files: list[bytes], *, aet: str = MODALITY_AET) -> list[int]:
    """Send the files over one association, as a modality does; the C-STORE statuses."""
    from pynetdicom import AE

    datasets = [dcmread(io.BytesIO(data)) for data in files]
    ae = AE(ae_title=aet)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class)
    association = ae.associate("127.0.0.1", server.dicom_port, ae_title="PNEUMO-PACS")
    assert association.is_established, "Orthanc refused the association"
    try:
        statuses = []
        for ds in datasets:
            status = association.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        association.release()


class DestinationSCP:
    """A DICOM storage SCP on 127.0.0.1 that keeps what it receives (results forwarded)."""

    def __init__(self, port: int) -> None:
        self.port, self.received, self.server = port, [], None

    def __enter__(self) -> DestinationSCP:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        def keep(event):
            self.received.append(event.dataset)
            return 0x0000

        ae = AE(ae_title=DESTINATION_AET)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)]
        )
        return self

    def __exit__(self, *_) -> None:
        self.server.shutdown()


def wait_for(condition, timeout: float = 15.0, step: float = 0.1):
    """Poll `condition()` until it returns something truthy; that value, or a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"not reached within {timeout} s: {condition.__doc__ or condition}")
