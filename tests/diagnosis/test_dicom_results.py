"""The result objects on their own (no PACS): what they say, and that building one twice
gives the same object (the PACS then stores it once)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pytest
from PIL import Image

from diagnosis import dicom_results as dr
from tests.dicom import dicom_bytes

FACTS = dr.ResultFacts(
    probability=0.713, threshold=0.243, threshold_source="site north", model_label="PNEUMONIA",
    model_name="demo-v2", model_version="0123456789abcdef",
    made_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
)  # fmt: skip


@pytest.fixture
def source():
    return dr.read_header(dicom_bytes(age="004Y"))


def items(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from items(item)


def codes(sr) -> list[tuple[str, str]]:
    return [(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
            for i in items(sr) if i.ValueType == "CODE"]  # fmt: skip


def report(source, facts=FACTS, uid="1.2.3.4"):
    return dr.structured_report(source, facts, sop_instance_uid=uid, series_instance_uid="1.2.3")


def test_a_report_is_the_same_object_when_built_twice(source):
    assert dr.encode(report(source)) == dr.encode(report(source))
    assert dr.encode(report(source)) != dr.encode(report(source, uid="1.2.3.5"))
    assert dr.result_uid("a", 1) == dr.result_uid("a", 1) != dr.result_uid("a", 2)


def test_the_report_says_the_call_and_whose_threshold(source):
    sr = report(source)
    assert ("Pneumonia", "Present") in codes(sr)
    absent = report(source, dataclasses.replace(FACTS, model_label="NORMAL"))
    assert ("Pneumonia", "Absent") in codes(absent)
    texts = [i.TextValue for i in items(sr) if i.ValueType == "TEXT"]
    assert {"demo-v2", "0123456789abcdef", "threshold source=site north"} <= set(texts)
    assert sr.VerificationFlag == "UNVERIFIED" and "VerifyingObserverSequence" not in sr
    assert (sr.ContentDate, sr.ContentTime) == ("20261201", "093000")
    assert not [i for i in items(sr) if "Bacterial" in str(i.get("ConceptCodeSequence", ""))]


def test_a_subtype_model_adds_a_bacterial_group_and_a_review_verifies(source):
    facts = dataclasses.replace(FACTS, p_bacterial=0.8, subtype="bacterial", subtype_threshold=0.5)
    assert ("Bacterial pneumonia", "Present") in codes(report(source, facts))
    reviewed = dataclasses.replace(
        facts, verified_label="PNEUMONIA", verified_subtype="viral", verifier="Reader^Rita",
        organization="North", verified_at=datetime(2026, 12, 2, tzinfo=UTC),
    )  # fmt: skip
    sr = dr.structured_report(source, reviewed, sop_instance_uid="1.2.3.9",
                              series_instance_uid="1.2.3", previous=report(source))  # fmt: skip
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Rita"
    assert ("Bacterial pneumonia", "Absent") in codes(sr)  # the radiologist's viral
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0].ReferencedSOPInstanceUID == "1.2.3.4"  # fmt: skip


def test_the_overlay_is_derived_and_marked_not_for_diagnosis(source):
    overlay = Image.new("RGB", (96, 96), (30, 120, 200))
    sc = dr.secondary_capture(source, overlay, FACTS, sop_instance_uid="1.2.3.7",
                              series_instance_uid="1.2.8")  # fmt: skip
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    pixels = sc.pixel_array
    assert pixels.shape == (96, 96, 3)
    assert (pixels[2, 2] == 0).all() and (pixels[-1, -1] == (30, 120, 200)).all()  # the banner


def test_the_overlay_is_the_same_object_when_built_twice(source):
    overlay = Image.new("RGB", (64, 64), (9, 9, 9))

    def build():
        return dr.encode(dr.secondary_capture(source, overlay, FACTS, sop_instance_uid="1.2.3.7",
                                              series_instance_uid="1.2.8"))  # fmt: skip

    first = build()
    time.sleep(0.01)
    assert build() == first
