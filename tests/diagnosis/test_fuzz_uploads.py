"""Property-based tests of the upload validator: whatever bytes arrive, the answer is an
accepted image or a clear refusal, never another exception (which would be a 500)."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diagnosis.validation import ImageInfo, UploadRejected, inspect_upload
from tests.conftest import jpeg_bytes, png_bytes
from tests.dicom import dicom_bytes

SEEDS = {"jpeg": jpeg_bytes(size=64), "png": png_bytes(size=64), "dicom": dicom_bytes()}
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check(data: bytes, name: str = "fuzz.jpg") -> None:
    try:
        info = inspect_upload(io.BytesIO(data), filename=name, size=len(data))
    except UploadRejected as exc:
        assert exc.reason and name in str(exc)
    else:
        assert isinstance(info, ImageInfo) and info.width > 0 and info.height > 0
        assert len(info.sha256) == 64 and info.content_type in ("image/jpeg", "image/png")


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.UPLOAD_MAX_PIXELS = 4_000_000


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_accepted_or_refused_cleanly(data):
    check(data)


@FUZZ
@given(
    kind=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    cut=st.floats(0.05, 1.0),
)
def test_damaged_images_are_accepted_or_refused_cleanly(kind, edits, cut):
    data = bytearray(SEEDS[kind])
    for where, value in edits:  # overwrite bytes anywhere, headers included
        data[int(where * len(data))] = value
    check(bytes(data[: max(1, int(cut * len(data)))]), f"fuzz.{kind}")


@FUZZ
@given(st.binary(min_size=1, max_size=512))
@example(tail=b"\x02\x01B\x10OB\x02\x10\x01\x01")  # cut inside an element: struct.error once
def test_garbage_after_a_dicom_marker_is_refused_cleanly(tail):
    check(b"\0" * 128 + b"DICM" + tail, "scan")
