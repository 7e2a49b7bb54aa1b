"""DICOM files for tests, written with pydicom from synthetic radiographs.

from tests.dicom import dicom_bytes
dicom_bytes(bits=12, photometric="MONOCHROME1", view="LL", age="045Y")
"""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.synthetic import make_xray


def xray_pixels(label: str = "PNEUMONIA", *, seed: int = 0, size: int = 256, bits: int = 12):
    """A synthetic radiograph as stored values of `bits` bits (bright = dense, as MONOCHROME2)."""
    gray = np.asarray(make_xray(label, seed=seed, size=size), dtype=np.float64) / 255.0
    return np.rint(gray * (2**bits - 1)).astype(np.uint16 if bits > 8 else np.uint8)


def dicom_bytes(
    pixels: np.ndarray | None = None,
    *,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    view: str = "PA",
    body_part: str = "CHEST",
    age: str = "004Y",
    sex: str = "F",
    window: tuple[float, float] | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    frames: int = 1,
    preamble: bool = True,
    patient_id: str = "MRN-0042-SECRET",
    issuer: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> bytes:
    if pixels is None:
        pixels = xray_pixels(bits=bits)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # A PACS files every instance under its study and series.
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    # Identifying tags, which must never reach the database, the pages or the logs.
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "20210304"
    ds.AccessionNumber = "ACC-777"
    ds.InstitutionName = "St Example Hospital"
    ds.PatientAge, ds.PatientSex = age, sex
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, view, body_part
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    ds.PixelData = pixels.tobytes()
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.compress(transfer_syntax, pixels)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()
