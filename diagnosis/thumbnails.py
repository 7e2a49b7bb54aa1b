"""Small JPEG previews of stored studies for the lists and the worklist, made on first
request and kept in Django's cache (CACHE_URL) under the image's sha256: nothing is written
to storage, so a deleted study leaves no file behind, and a cache miss only costs a decode
(PIL draft(): a few ms for a JPEG)."""

from __future__ import annotations

import io

from django.core.cache import cache
from PIL import Image, ImageOps

SIZE = 96  # px, the long side; the lists show them at 48 px for sharpness on dense screens
QUALITY = 80
TIMEOUT = 7 * 24 * 3600


def thumbnail_key(sha256: str, size: int = SIZE) -> str:
    return f"thumbnail:{size}:{sha256}"


def thumbnail_bytes(study, size: int = SIZE) -> bytes:
    """The study's preview as JPEG bytes (OSError when its file is gone from storage)."""
    key = thumbnail_key(study.sha256, size)
    cached = cache.get(key)
    if cached is not None:
        return cached
    with study.image.open("rb") as fh, Image.open(fh) as image:
        image.draft("L", (size, size))  # JPEG only: decode at 1/2, 1/4 or 1/8 of the size
        small = ImageOps.exif_transpose(image).convert("L")
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=QUALITY)
    data = buffer.getvalue()
    cache.set(key, data, TIMEOUT)
    return data
