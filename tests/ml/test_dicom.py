"""DICOM decoding: windows, bit depths, MONOCHROME1, compressed syntaxes, refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from ml.dicom import DicomError, age_in_years, is_dicom, read_dicom
from tests.dicom import dicom_bytes, xray_pixels


def read(data: bytes, max_pixels: int = 10**8):
    return read_dicom(io.BytesIO(data), max_pixels=max_pixels)


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(read(data).image, dtype=np.int16)


def test_monochrome1_is_inverted_to_the_same_image_as_monochrome2():
    stored = xray_pixels(bits=12)
    mono2 = pixels_of(dicom_bytes(stored, photometric="MONOCHROME2"))
    mono1 = pixels_of(dicom_bytes((2**12 - 1) - stored, photometric="MONOCHROME1"))
    assert np.array_equal(mono1, mono2)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_every_bit_depth_gives_the_same_picture(bits):
    reference = pixels_of(dicom_bytes(xray_pixels(bits=8), bits=8))
    assert np.abs(pixels_of(dicom_bytes(xray_pixels(bits=bits), bits=bits)) - reference).max() <= 1


def test_the_window_of_the_header_is_applied():
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (256, 1))  # a 12-bit ramp
    full = pixels_of(dicom_bytes(stored, bits=12))
    windowed = pixels_of(dicom_bytes(stored, bits=12, window=(2048, 1024)))
    # Below the window is black, above it white, inside it a steeper ramp.
    assert full[0, 64] > 0 and windowed[0, 64] == 0  # stored 1024
    assert full[0, 192] < 255 and windowed[0, 192] == 255  # stored 3072
    assert 100 < windowed[0, 128] < 155  # stored 2048, the centre


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_syntaxes_decode_to_the_uncompressed_image(syntax):
    stored = xray_pixels(bits=12)
    assert np.array_equal(
        pixels_of(dicom_bytes(stored, transfer_syntax=syntax)), pixels_of(dicom_bytes(stored))
    )
    assert read(dicom_bytes(stored, transfer_syntax=syntax)).transfer_syntax.startswith(
        ("RLE", "JPEG 2000")
    )


def test_only_de_identified_facts_are_read():
    facts = read(dicom_bytes(view="AP", age="030M", sex="M")).facts
    assert facts == {
        "modality": "DX", "view_position": "AP", "body_part": "CHEST", "sex": "M", "age_years": 2
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"modality": "CT"}, "modality CT is not a radiograph"),
        ({"frames": 2}, "multi-frame"),
    ],
)
def test_it_refuses_what_is_not_a_single_radiograph(kwargs, reason):
    with pytest.raises(DicomError, match=reason):
        read(dicom_bytes(**kwargs))


def test_it_refuses_colour_an_unsupported_syntax_and_too_many_pixels():
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DicomError, match="grayscale"):
        read(buffer.getvalue())

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(transfer_syntax=RLELossless)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DicomError, match="not supported"):
        read(buffer.getvalue())

    with pytest.raises(DicomError, match="above the limit"):
        read(dicom_bytes(), max_pixels=1000)


def test_it_recognises_dicom_by_content_and_refuses_garbage_after_the_marker():
    assert is_dicom(io.BytesIO(dicom_bytes()))
    assert not is_dicom(io.BytesIO(b"\xff\xd8\xff" + b"\0" * 200))
    with pytest.raises(DicomError, match=r"cannot be read|no image"):
        read(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 10)


@pytest.mark.parametrize(
    ("age", "years"),
    [("007Y", 7), ("018M", 1), ("003W", 0), ("045D", 0), ("", None), ("7Y", 7), ("abc", None)],
)
def test_age_in_years(age, years):
    assert age_in_years(age) == years
