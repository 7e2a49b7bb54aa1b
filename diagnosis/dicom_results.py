"""The result objects the platform writes back into the PACS, built with highdicom.

- `structured_report(source, facts)`: a DICOM Structured Report after TID 1500 (Measurement
  Report): one measurement group whose finding type is pneumonia, with the qualitative
  finding present / absent, P(pneumonia) and the operating threshold as measurements, the
  model as the algorithm's identification (TID 4019, as the IHE AI Results profile asks), the
  source image as the group's source, and the platform as the device observer. UNVERIFIED
  when the model alone speaks; VERIFIED, with the verifying observer's name, once a
  radiologist confirmed or corrected the label (then the finding is the radiologist's, and the
  report names the unverified report it supersedes).
- `secondary_capture(source, overlay, ...)`: the Grad-CAM overlay as a Secondary Capture
  image, DERIVED / SECONDARY, "NOT FOR DIAGNOSTIC USE" burned into the pixels and written in
  the header, referencing the source image.

Both land in the source's study (its patient and study modules are copied from the source
header, which is read from the PACS at delivery time and never kept by the platform). Their
UIDs are derived from stable facts (`result_uid`), so building an object twice gives the same
UIDs and the PACS stores it once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from PIL import Image, ImageDraw
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

MANUFACTURER = "pneumo review platform"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
BACTERIAL = CodedConcept("53084003", "SCT", "Bacterial pneumonia")
VIRAL = CodedConcept("75570004", "SCT", "Viral pneumonia")
CHEST_RADIOGRAPH = CodedConcept("399208008", "SCT", "Plain chest X-ray")
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902


@dataclass(frozen=True)
class ResultFacts:
    """What one result object says: the model's call, and the radiologist's when verified."""

    probability: float  # P(pneumonia)
    threshold: float
    threshold_source: str  # "model version" or "site <name>"
    model_label: str  # NORMAL or PNEUMONIA
    model_name: str
    model_version: str  # the version's sha256 (what identifies the weights)
    made_at: datetime  # when the prediction was recorded
    p_bacterial: float | None = None
    subtype: str = ""  # bacterial / viral, when the model answers that question
    subtype_threshold: float | None = None
    # A radiologist's review: the label they gave, their name and organisation, when.
    verified_label: str = ""
    verified_subtype: str = ""
    verifier: str = ""
    organization: str = ""
    verified_at: datetime | None = None

    @property
    def verified(self) -> bool:
        return bool(self.verified_label)


def result_uid(*parts: object) -> str:
    """A DICOM UID derived from `parts` (pydicom's generate_uid with entropy sources): the
    same parts always give the same UID, different parts different UIDs."""
    return generate_uid(entropy_srcs=[MANUFACTURER, *map(str, parts)])


def read_header(dicom: bytes) -> Dataset:
    """The source's header without its pixels (what the result objects copy and reference)."""
    return dcmread(io.BytesIO(dicom), stop_before_pixels=True)


# Patient and study attributes every object in a study carries (type 2: present, may be
# empty). A modality may leave some out; the result objects then carry them empty.
_STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName", "AccessionNumber",
)  # fmt: skip


def _complete(source: Dataset) -> Dataset:
    """A copy of the source header with the type 2 study attributes present."""
    header = Dataset()
    header.update(source)
    for keyword in _STUDY_ATTRIBUTES:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _evaluation(name: CodedConcept, present: bool) -> QualitativeEvaluation:
    return QualitativeEvaluation(name, codes.SCT.Present if present else codes.SCT.Absent)


def _probability(value: float) -> Measurement:
    return Measurement(codes.DCM.Probability, float(value), codes.UCUM.NoUnits)


def structured_report(
    source: Dataset, facts: ResultFacts, *, sop_instance_uid: str, series_instance_uid: str,
    instance_number: int = 1, previous: Dataset | None = None,
) -> Comprehensive3DSR:  # fmt: skip
    """The TID 1500 report of `facts` on the image `source` (see the module's docstring)."""
    source = _complete(source)
    algorithm = AlgorithmIdentification(
        name=facts.model_name,
        version=facts.model_version,
        parameters=[
            f"threshold={facts.threshold:.6g}",
            f"threshold source={facts.threshold_source}",
        ],
        manufacturer=MANUFACTURER,
    )
    source_image = SourceImageForMeasurementGroup.from_source_image(source)
    final = facts.verified_label if facts.verified else facts.model_label
    groups = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=result_uid(sop_instance_uid, "pneumonia"), identifier="pneumonia"
            ),
            finding_type=PNEUMONIA,
            algorithm_id=algorithm,
            source_images=[source_image],
            measurements=[
                _probability(facts.probability),
                Measurement(codes.DCM.ThresholdValue, float(facts.threshold), codes.UCUM.NoUnits),
            ],
            qualitative_evaluations=[_evaluation(PNEUMONIA, final == "PNEUMONIA")],
        )
    ]
    subtype = facts.verified_subtype if facts.verified else facts.subtype
    if facts.p_bacterial is not None and final == "PNEUMONIA":
        evaluations = []
        if subtype in ("bacterial", "viral"):
            evaluations = [_evaluation(BACTERIAL, subtype == "bacterial")]
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=result_uid(sop_instance_uid, "subtype"), identifier="bacterial"
                ),
                finding_type=BACTERIAL,
                algorithm_id=AlgorithmIdentification(
                    name=facts.model_name,
                    version=facts.model_version,
                    manufacturer=MANUFACTURER,
                    parameters=[f"subtype threshold={facts.subtype_threshold:.6g}"],
                ),
                source_images=[source_image],
                measurements=[_probability(facts.p_bacterial)],
                qualitative_evaluations=evaluations or None,
            )
        )
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", facts.model_name, facts.model_version),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=facts.model_name,
        ),
    )
    person = None
    if facts.verified:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=facts.verifier, organization_name=facts.organization or None
            ),
        )
    report = MeasurementReport(
        observation_context=ObservationContext(
            observer_person_context=person, observer_device_context=device
        ),
        procedure_reported=CHEST_RADIOGRAPH,
        imaging_measurements=groups,
    )
    made = facts.verified_at if facts.verified else facts.made_at
    sr = Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=facts.verified,
        is_verified=facts.verified,
        verifying_observer_name=facts.verifier if facts.verified else None,
        verifying_organization=(facts.organization or "unknown") if facts.verified else None,
        previous_versions=[previous] if previous is not None else None,
        series_description="pneumonia classifier report",
    )
    _stamp(sr, made)
    if facts.verified:
        sr.VerifyingObserverSequence[0].VerificationDateTime = made.strftime("%Y%m%d%H%M%S")
    return sr


def secondary_capture(
    source: Dataset, overlay: Image.Image, facts: ResultFacts, *, sop_instance_uid: str,
    series_instance_uid: str, instance_number: int = 1,
) -> hd.sc.SCImage:  # fmt: skip
    """The Grad-CAM overlay as a derived Secondary Capture in the source's study."""
    source = _complete(source)
    image = overlay.convert("RGB")
    banner = f"{NOT_FOR_DIAGNOSIS} - Grad-CAM, {facts.model_name}, P={facts.probability:.2f}"
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), banner)
    draw.rectangle((0, 0, box[2] + 8, box[3] + 6), fill=(0, 0, 0))
    draw.text((4, 3), banner, fill=(255, 255, 255))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(image, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = f"Grad-CAM overlay, {NOT_FOR_DIAGNOSIS}"
    sc.DerivationDescription = (
        f"Grad-CAM heatmap of model {facts.model_name} over the source image; {NOT_FOR_DIAGNOSIS}."
    )
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    _stamp(sc, facts.made_at)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def _stamp(dataset: Dataset, when: datetime) -> None:
    """Dates from the result, not the clock (highdicom stamps the time of building): the same
    result builds the same object, byte for byte."""
    day, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    dataset.ContentDate, dataset.ContentTime = day, time
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = day, time
    if "DateOfSecondaryCapture" in dataset:
        dataset.DateOfSecondaryCapture, dataset.TimeOfSecondaryCapture = day, time
    for equipment in dataset.get("ContributingEquipmentSequence", []):
        equipment.ContributionDateTime = day + time


def encode(dataset: Dataset) -> bytes:
    """The object as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
