"""DICOM chest radiographs to the 8-bit grayscale images the models read, plus the few
de-identified header facts that the model and the review need.

    from ml.dicom import is_dicom, read_dicom
    if is_dicom(fileobj):
        dicom = read_dicom(fileobj, max_pixels=64_000_000)
        dicom.image          # PIL 'L' image: modality LUT, VOI LUT / window, MONOCHROME1 inverted
        dicom.facts          # {"modality", "view_position", "body_part", "sex", "age_years"}

Accepted: CR, DX and DR radiographs (Modality CR / DX / RG or absent), one frame, one sample
per pixel (MONOCHROME1 or MONOCHROME2), 8 to 16 bits stored. Transfer syntaxes: the
uncompressed ones (implicit / explicit VR, little / big endian, deflated), RLE Lossless (pure
Python), JPEG baseline / extended / lossless, JPEG-LS and JPEG 2000 (HTJ2K included), through
the pylibjpeg plugins. Anything else raises DicomError with the reason.

Nothing identifying leaves this module: patient name, ID, birth date, accession number,
institution and dates are never read into `facts`; the age is reduced to whole years.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image

ACCEPTED_MODALITIES = frozenset({"CR", "DX", "RG", ""})
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 30.4375, "Y": 365.25}


class DicomError(ValueError):
    """The file is DICOM but not an image this platform can read; the message says why."""


@dataclass(frozen=True)
class DicomImage:
    image: Image.Image  # 8-bit grayscale, display-ready (0 black = no attenuation)
    facts: dict  # de-identified: modality, view_position, body_part, sex, age_years
    transfer_syntax: str
    # (PatientID, IssuerOfPatientID), identifying: the caller turns it into a keyed hash at once
    # (diagnosis.pseudonyms) and never stores, shows or logs it. repr=False keeps it out of
    # tracebacks and log lines that print the object.
    patient: tuple[str, str] = field(default=("", ""), repr=False)


def is_dicom(file: BinaryIO) -> bool:
    """True for a DICOM Part 10 file (the "DICM" marker after the 128-byte preamble),
    whatever its name; the read position is left where it was."""
    position = file.tell()
    try:
        file.seek(128)
        return file.read(4) == b"DICM"
    finally:
        file.seek(position)


def age_in_years(age: str) -> int | None:
    """'007Y' -> 7, '018M' -> 1, '003W' -> 0; None when absent or malformed."""
    match = _AGE.match((age or "").strip().upper())
    if not match:
        return None
    return int(int(match[1]) * _DAYS_PER_UNIT[match[2]] // 365.25)


def _facts(ds) -> dict:
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return {
        "modality": str(ds.get("Modality", "") or "").strip().upper(),
        "view_position": str(ds.get("ViewPosition", "") or "").strip().upper(),
        "body_part": str(ds.get("BodyPartExamined", "") or "").strip().upper(),
        "sex": sex if sex in ("M", "F", "O") else "",
        "age_years": age_in_years(str(ds.get("PatientAge", "") or "")),
    }


def _to_8bit(ds, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT (rescale), then the VOI LUT or window the file asks for (min-max when it
    names none), MONOCHROME1 inverted, scaled to 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, ds).astype(np.float64)  # (H, W)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # high values are dark
        scaled = 1.0 - scaled
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def read_uids(data: bytes) -> dict:
    """The UIDs that place a DICOM instance (SOP instance and class, series, study) and its
    modality, from the header alone; empty strings where the header cannot say."""
    import io

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:
        ds = {}
    keys = {"sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID",
            "series_instance_uid": "SeriesInstanceUID", "study_instance_uid": "StudyInstanceUID",
            "modality": "Modality"}  # fmt: skip
    return {name: str(ds.get(keyword, "") or "").strip()[:64] for name, keyword in keys.items()}


def read_dicom(file: BinaryIO, *, max_pixels: int) -> DicomImage:
    """Decode one DICOM radiograph, or raise DicomError saying why it cannot be used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    file.seek(0)
    try:
        with warnings.catch_warnings():  # a damaged header is refused below, not warned about
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(file)
    # struct.error: a header cut short inside an element (pydicom unpacks a missing length).
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        struct.error,
    ) as exc:
        raise DicomError(f"the DICOM file cannot be read ({exc}).") from None
    finally:
        file.seek(0)
    try:
        facts = _check_header(ds, max_pixels)
        syntax = ds.file_meta.TransferSyntaxUID
    except DicomError:
        raise
    except Exception as exc:  # a value of the wrong type or form in a damaged header
        raise DicomError(f"the DICOM header is invalid ({exc}).") from None
    try:
        pixels = ds.pixel_array  # (H, W)
    except NotImplementedError:
        raise DicomError(f"the transfer syntax {syntax.name} is not supported.") from None
    except Exception as exc:  # a plugin's decoder error on damaged data
        raise DicomError(f"the DICOM pixel data cannot be decoded ({exc}).") from None
    if pixels.ndim != 2 or pixels.size == 0:
        raise DicomError(f"unexpected pixel data of shape {pixels.shape}.")
    try:
        image = Image.fromarray(_to_8bit(ds, pixels), mode="L")
    except Exception as exc:  # e.g. a window or LUT the header describes wrongly
        raise DicomError(f"the DICOM image cannot be converted ({exc}).") from None
    patient = (str(ds.get("PatientID", "") or "").strip(),
               str(ds.get("IssuerOfPatientID", "") or "").strip())  # fmt: skip
    return DicomImage(image=image, facts=facts, transfer_syntax=str(syntax.name), patient=patient)


def _check_header(ds, max_pixels: int) -> dict:
    """The de-identified facts, or DicomError when the header says this is not a single
    grayscale radiograph within the pixel limit."""
    facts = _facts(ds)
    if "PixelData" not in ds:
        raise DicomError("the DICOM file holds no image (no Pixel Data).")
    if facts["modality"] not in ACCEPTED_MODALITIES:
        raise DicomError(
            f"modality {facts['modality']} is not a radiograph; upload a CR or DX chest X-ray."
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError("multi-frame DICOM images are not accepted.")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or ds.get("PhotometricInterpretation") not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        raise DicomError("only grayscale (MONOCHROME1 / MONOCHROME2) DICOM images are accepted.")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > max_pixels:
        raise DicomError(
            f"the image is {columns}x{rows} pixels, above the limit of {max_pixels} pixels."
        )
    return facts
