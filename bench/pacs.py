"""The PACS rows of `manage.py bench`: an Orthanc of its own (scripts/orthanc.py, Debian's
package), the listener (`manage.py pacs_listen`) as one more child of the platform, and
studies C-STOREd into Orthanc by pynetdicom as a modality sends them.

- idle: one study at a time, from the end of its C-STORE to its structured report being
  retrievable from Orthanc (Orthanc's StableAge of 1 s included), p50 / p95;
- burst: N studies C-STOREd by S senders at once (one association each), then every
  prediction and every report awaited; the reports per study are counted (none twice).

The studies are real chest X-rays (the benchmark's JPEGs) wrapped as DX DICOM with made-up
patient data; each run makes new UIDs.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
USERNAME = "pneumo-bench"
MODALITY_AET = "BENCHSCU"


def as_dicom(path: Path, study_uid: str | None = None, *, bits: int = 8) -> bytes:
    """A JPEG chest X-ray as a DX DICOM instance (MONOCHROME2, 8 or 16 bits stored, what a
    DR system would send) of study `study_uid` (new if None), with made-up patient data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    if bits == 16:
        pixels = pixels.astype(np.uint16) * 257
    study_uid = study_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID = "Bench^Patient", f"BENCH-{study_uid[-8:]}"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.PatientAge, ds.PatientSex = "004Y", "O"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def c_store(port: int, files: list[bytes]) -> float:
    """Send `files` over one association; returns the time the last C-STORE ended."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1")
    association = ae.associate("127.0.0.1", port, ae_title="PNEUMO-PACS")
    if not association.is_established:
        raise RuntimeError("Orthanc refused the benchmark's association")
    try:
        for data in files:
            status = association.send_c_store(dcmread(io.BytesIO(data)))
            if int(status.get("Status", -1)) != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        association.release()
    return time.perf_counter()


def reports(pacs, study_uid: str) -> int:
    """How many structured reports the study holds in Orthanc."""
    found = [r for r in pacs.lookup(study_uid) if r["Type"] == "Study"]
    if not found:
        return 0
    return sum(
        pacs.tags(i["ID"]).get("Modality") == "SR" for i in pacs.study_instances(found[0]["ID"])
    )


def pacs_rows(running, paths: list[Path], rows, *, n_idle: int, n_burst: int, senders: int,
              say=print) -> None:  # fmt: skip
    """Append the PACS rows, measured on the started platform `running` (bench.launch)."""
    from pydicom.uid import generate_uid

    from bench.load import percentile
    from diagnosis.orthanc import Orthanc
    from scripts.orthanc import OrthancProcess, available

    if not available():
        rows.append(("PACS", "not measured: Orthanc is not installed (apt-get install orthanc)"))
        return
    if len(paths) < n_idle + n_burst + 1:
        raise RuntimeError(f"the PACS rows need {n_idle + n_burst + 1} images")
    password = generate_uid()[-16:]
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-orthanc-") as folder:
        server = OrthancProcess(
            Path(folder), username=USERNAME, password=password,
            modalities={"BENCH": [MODALITY_AET, "127.0.0.1", 11112]},
        ).start()  # fmt: skip
        try:
            env = {**running.child_env, "ORTHANC_URL": server.url,
                   "ORTHANC_USERNAME": USERNAME, "ORTHANC_PASSWORD": password}  # fmt: skip
            listener = running.spawn("pacs-listener", [sys.executable, "manage.py",
                                                       "pacs_listen"], env)  # fmt: skip
            pacs = Orthanc(server.url, USERNAME, password)
            deadline = time.monotonic() + 60
            while "PACS: Orthanc" not in listener.output():
                listener.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the listener did not start:\n{listener.tail()}")
                time.sleep(0.1)
            say(f"PACS: Orthanc at {server.url}, listener pid {listener.proc.pid}")

            def until_reported(uid: str, timeout: float = 120) -> float:
                end = time.monotonic() + timeout
                while reports(pacs, uid) < 1:
                    if time.monotonic() > end:
                        raise RuntimeError(f"no report for a study within {timeout} s")
                    time.sleep(0.02)
                return time.perf_counter()

            images = iter(paths[-(n_idle + n_burst + 1) :])
            latencies = []
            for k in range(n_idle + 1):  # the first one is not measured (warm-up)
                uid = generate_uid()
                sent = c_store(server.dicom_port, [as_dicom(next(images), uid)])
                if k:
                    latencies.append(until_reported(uid) - sent)
                else:
                    until_reported(uid)
            rows.append((
                f"PACS: C-STORE end -> report in Orthanc, {n_idle} studies one at a time, "
                "p50 / p95 (s)",
                f"{percentile(latencies, 50):.2f} / {percentile(latencies, 95):.2f} "
                f"(mean {statistics.fmean(latencies):.2f}; StableAge 1 s included)",
            ))  # fmt: skip
            burst = [(generate_uid(), next(images)) for _ in range(n_burst)]
            files = [as_dicom(path, uid) for uid, path in burst]
            start = time.perf_counter()
            with ThreadPoolExecutor(senders) as pool:
                list(pool.map(lambda k: c_store(server.dicom_port, files[k::senders]),
                              range(senders)))  # fmt: skip
            stored = time.perf_counter()
            end = max(until_reported(uid, timeout=1800) for uid, _ in burst)
            counts = [reports(pacs, uid) for uid, _ in burst]
            from diagnosis.models import Prediction

            predicted = Prediction.objects.filter(
                status="done",
                study__pacs_instance__study_instance_uid__in=[uid for uid, _ in burst],
            ).count()
            rows += [
                (f"PACS burst: {n_burst} studies C-STOREd by {senders} senders",
                 f"stored in {stored - start:.1f} s; every report in Orthanc {end - start:.1f} s "
                 f"after the first C-STORE ({n_burst / (end - start):.1f} studies/s)"),
                ("PACS burst: predictions done; studies with 1 report / 0 / more than 1",
                 f"{predicted}; {counts.count(1)} / {counts.count(0)} / "
                 f"{sum(c > 1 for c in counts)}"),
            ]  # fmt: skip
        finally:
            server.stop()
