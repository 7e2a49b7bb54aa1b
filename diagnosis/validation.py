"""Checks an uploaded file before anything is written: is it one whole JPEG or PNG image
within the configured limits?

The file is decoded completely here (at reduced scale for JPEG), so a truncated or
corrupt image is refused at upload instead of failing later in the worker.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from PIL import Image, UnidentifiedImageError

FORMATS = {"JPEG": ("image/jpeg", ".jpg"), "PNG": ("image/png", ".png")}


class UploadRejected(ValueError):
    """The upload is not acceptable; the message says why, in words a user understands."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str
    size: int


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
    file.seek(0)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's DecompressionBombWarning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
            kind = image.format
            if kind not in FORMATS:
                raise UploadRejected(
                    filename, f"{kind or 'this'} images are not accepted; upload a JPEG or PNG."
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
            image.draft("L", (512, 512))
            image.load()
    except UploadRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise UploadRejected(filename, "this is not a readable JPEG or PNG image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(filename, f"the image is damaged or truncated ({exc}).") from None
    finally:
        file.seek(0)
    content_type, extension = FORMATS[kind]
    return ImageInfo(content_type, extension, width, height, _sha256(file), size)
