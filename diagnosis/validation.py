"""Checks an uploaded file before anything is written: is it one whole JPEG, PNG or DICOM
image within the configured limits?

The file is decoded completely here (at reduced scale for JPEG), so a truncated or
corrupt image is refused at upload instead of failing later in the worker. A DICOM file is
recognised by its content, whatever its name, and converted here to the 8-bit PNG that is
stored (ml.dicom); only its de-identified facts are kept, never the header itself.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from diagnosis import guardrails

FORMATS = {"JPEG": ("image/jpeg", ".jpg"), "PNG": ("image/png", ".png")}


class UploadRejected(ValueError):
    """The upload is not acceptable; the message says why, in words a user understands."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    content_type: str  # of the file stored: image/jpeg or image/png
    extension: str
    width: int
    height: int
    sha256: str  # of the bytes uploaded (duplicates are found by it)
    size: int
    source_format: str = "JPEG"  # JPEG, PNG or DICOM
    facts: dict = field(default_factory=dict)  # de-identified DICOM header facts
    warnings: list = field(default_factory=list)  # intended-use warnings (guardrails)
    converted: bytes | None = None  # what to store instead of the upload (DICOM -> PNG)
    patient_key: str = ""  # the keyed hash of the DICOM's PatientID (diagnosis.pseudonyms)


def _sha256(file: BinaryIO) -> str:
    file.seek(0)
    digest = hashlib.file_digest(file, "sha256").hexdigest()
    file.seek(0)
    return digest


def inspect_upload(file: BinaryIO, *, filename: str, size: int) -> ImageInfo:
    """Return what the platform records about the image, or raise UploadRejected."""
    if size == 0:
        raise UploadRejected(filename, "the file is empty.")
    if size > settings.UPLOAD_MAX_BYTES:
        limit_mb = settings.UPLOAD_MAX_BYTES / (1024 * 1024)
        raise UploadRejected(filename, f"the file is larger than the {limit_mb:.0f} MB limit.")
    from ml.dicom import is_dicom

    file.seek(0)
    if is_dicom(file):
        return _inspect_dicom(file, filename=filename, size=size)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's DecompressionBombWarning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
            kind = image.format
            if kind not in FORMATS:
                raise UploadRejected(
                    filename,
                    f"{kind or 'this'} images are not accepted; upload a JPEG, PNG or DICOM.",
                )
            width, height = image.size
            if width * height > settings.UPLOAD_MAX_PIXELS:
                raise UploadRejected(
                    filename,
                    f"the image is {width}x{height} pixels, above the limit of "
                    f"{settings.UPLOAD_MAX_PIXELS} pixels.",
                )
            if getattr(image, "n_frames", 1) > 1:
                raise UploadRejected(filename, "animated or multi-frame images are not accepted.")
            # Decoding at reduced scale still reads every byte of the compressed data.
            image.draft("L" if image.mode == "L" else image.mode, (512, 512))
            image.load()
            found = guardrails.pixel_warnings(image)
    except UploadRejected:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, far above our limit
        raise UploadRejected(
            filename,
            f"the image has far more pixels than the limit of {settings.UPLOAD_MAX_PIXELS}.",
        ) from None
    except UnidentifiedImageError:
        raise UploadRejected(filename, "this is not a readable JPEG, PNG or DICOM image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(filename, f"the image is damaged or truncated ({exc}).") from None
    finally:
        file.seek(0)
    content_type, extension = FORMATS[kind]
    return ImageInfo(
        content_type, extension, width, height, _sha256(file), size, kind, warnings=found
    )


def _inspect_dicom(file: BinaryIO, *, filename: str, size: int) -> ImageInfo:
    from diagnosis.pseudonyms import patient_key
    from ml.dicom import DicomError, read_dicom

    try:
        dicom = read_dicom(file, max_pixels=settings.UPLOAD_MAX_PIXELS)
    except DicomError as exc:
        raise UploadRejected(filename, str(exc)) from None
    buffer = io.BytesIO()
    dicom.image.save(buffer, format="PNG")
    small = dicom.image.copy()
    small.thumbnail((512, 512))
    found = guardrails.header_warnings(dicom.facts) + guardrails.pixel_warnings(small)
    width, height = dicom.image.size
    content_type, extension = FORMATS["PNG"]
    return ImageInfo(
        content_type, extension, width, height, _sha256(file), size, "DICOM",
        facts=dicom.facts, warnings=found, converted=buffer.getvalue(),
        patient_key=patient_key(*dicom.patient),
    )  # fmt: skip
