"""Studies and reviews: uploads stored all or nothing; reviews append-only."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from diagnosis import roles, selectors
from diagnosis.models import (
    Label,
    Prediction,
    Review,
    Site,
    Study,
    Subtype,
    Unusable,
    default_site_pk,
)
from diagnosis.pseudonyms import MAX_ID_LENGTH, patient_key
from diagnosis.services.outbox import delivery_for_review
from diagnosis.services.predictions import prediction_enqueue
from diagnosis.services.storage import atomic_files
from diagnosis.validation import ImageInfo, UploadRejected, inspect_upload

# ---------------------------------------------------------------------------- studies


def study_create(
    *, uploaded_by, image: UploadedFile, site: Site | None = None, patient_id: str = ""
) -> Study:
    return study_create_many(
        uploaded_by=uploaded_by, images=[image], site=site, patient_ids=[patient_id]
    )[0]


def study_create_many(
    *, uploaded_by, images: Sequence[UploadedFile], site: Site | None = None,
    patient_ids: Sequence[str] | None = None,
) -> list[Study]:  # fmt: skip
    """Store the images, each as a Study of `site` (default: the default site) with a pending
    Prediction, all or nothing.

    Every file is checked before anything is written. The rows are created in one
    transaction, and the files written during it are deleted if it fails, so a refused or
    failed upload leaves neither a row nor a file. Jobs are enqueued only after commit.

    An exact duplicate (same bytes) of a study the uploader may already see is not stored or
    predicted again: that study is returned instead, with `is_duplicate = True`. (A duplicate
    of a study the uploader may not see is stored as a new study: linking to it would reveal
    that someone else uploaded the image.)

    `patient_ids` (one per image, "" for none) are identifiers the uploader gives for images
    that carry none (JPEG, PNG); only their keyed hash is stored (diagnosis.pseudonyms). A
    DICOM's own PatientID wins over a given one.
    """
    _check_batch(uploaded_by, images)
    patient_ids = list(patient_ids) if patient_ids is not None else [""] * len(images)
    if len(patient_ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(patient_ids)} patient ids")
    for given in patient_ids:
        if len(given or "") > MAX_ID_LENGTH or not (given or "").isprintable():
            raise UploadRejected(
                "patient_id", f"a patient id is at most {MAX_ID_LENGTH} printable characters."
            )
    infos = [inspect_upload(f, filename=f.name or "upload", size=f.size or 0) for f in images]
    return _studies_store(uploaded_by, site, list(zip(images, infos, patient_ids, strict=True)))


def _check_batch(uploaded_by, images) -> None:
    """What refuses a whole upload: a user who may not upload, no file, too many files."""
    if not roles.can_upload(uploaded_by):
        raise PermissionDenied("Only uploaders, radiologists and admins may upload studies.")
    if not images:
        raise UploadRejected("upload", "no file was sent.")
    if len(images) > settings.UPLOAD_MAX_FILES:
        raise UploadRejected("upload", f"at most {settings.UPLOAD_MAX_FILES} files at once.")


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one file of a page upload: a new study, a duplicate of one the
    uploader can see (study set, duplicate true), or refused (study None, reason why)."""

    filename: str
    study: Study | None
    duplicate: bool = False
    reason: str = ""


def study_create_batch(
    *, uploaded_by, images: Sequence[UploadedFile], site: Site | None = None
) -> list[UploadOutcome]:
    """The upload page's batch: each file judged on its own. The acceptable ones are stored
    as study_create_many stores them (one transaction; a failure writes none of them); each
    refused one is reported with its reason and changes nothing. A batch-wide problem (no
    file, too many, not allowed) still refuses the whole batch (UploadRejected)."""
    _check_batch(uploaded_by, images)
    names = [_display_name(upload.name) for upload in images]
    refused: dict[int, str] = {}
    good = []
    for i, (upload, name) in enumerate(zip(images, names, strict=True)):
        try:
            good.append((upload, inspect_upload(upload, filename=name, size=upload.size or 0), ""))
        except UploadRejected as exc:
            refused[i] = exc.reason
    stored = iter(_studies_store(uploaded_by, site, good) if good else [])
    outcomes = []
    for i, name in enumerate(names):
        if i in refused:
            outcomes.append(UploadOutcome(filename=name, study=None, reason=refused[i]))
        else:
            study = next(stored)
            outcomes.append(UploadOutcome(filename=name, study=study, duplicate=study.is_duplicate))
    return outcomes


def _studies_store(uploaded_by, site, items) -> list[Study]:
    """Write checked images [(upload, info, given patient id)] as studies, all or nothing;
    an exact duplicate of a study the uploader may see is returned instead (is_duplicate)."""
    existing = selectors.studies_by_sha256(uploaded_by, {info.sha256 for _, info, _ in items})
    with atomic_files() as written, transaction.atomic():
        studies = []
        for upload, info, given in items:
            if info.sha256 in existing:
                duplicate = existing[info.sha256]
                duplicate.is_duplicate = True
                studies.append(duplicate)
                continue
            study = study_record(
                info, upload, written, uploaded_by=uploaded_by, site=site,
                original_filename=_display_name(upload.name), given_patient_id=given,
            )  # fmt: skip
            study.is_duplicate = False
            existing[info.sha256] = study  # the same bytes twice in one upload: one study
            studies.append(study)
    return studies


def study_record(
    info: ImageInfo, upload, written: list[str], *, uploaded_by, site: Site | None,
    original_filename: str, given_patient_id: str = "",
) -> Study:  # fmt: skip
    """Write one checked image (inspect_upload's `info`) as a Study with a pending Prediction,
    enqueued after commit. Call inside atomic_files() and transaction.atomic(): the file's
    name goes into `written`, so a failure later in the block removes it."""
    # A server-generated name: the client's file name is only ever displayed.
    content = ContentFile(info.converted) if info.converted is not None else upload
    name = default_storage.save(f"studies/{uuid.uuid4().hex}{info.extension}", content)
    written.append(name)
    study = Study.objects.create(
        image=name,
        original_filename=original_filename,
        content_type=info.content_type,
        sha256=info.sha256,
        width=info.width,
        height=info.height,
        uploaded_by=uploaded_by,
        source_format=info.source_format,
        patient_key=info.patient_key or patient_key(given_patient_id),
        modality=info.facts.get("modality", ""),
        view_position=info.facts.get("view_position", ""),
        body_part=info.facts.get("body_part", ""),
        patient_sex=info.facts.get("sex", ""),
        patient_age_years=info.facts.get("age_years"),
        warnings=info.warnings,
        site_id=site.pk if site is not None else default_site_pk(),
    )
    prediction = Prediction.objects.create(study=study)
    transaction.on_commit(lambda pk=prediction.pk: prediction_enqueue(pk))
    return study


def _display_name(name: str | None) -> str:
    """The client's file name for display only: its last path part, control characters
    dropped, at most 255 characters."""
    base = Path((name or "upload").replace("\\", "/")).name
    cleaned = "".join(ch for ch in base if ch.isprintable())
    return cleaned[:255] or "upload"


# ---------------------------------------------------------------------------- reviews


def review_create(
    *, study: Study, reviewer, label: str = "", note: str = "", unusable_reason: str = "",
    subtype: str = "",
) -> Review:  # fmt: skip
    """Record a radiologist's verdict: a label, or that the image is unusable for training
    (with the reason), or both; with label PNEUMONIA, optionally its subtype (bacterial,
    viral or undetermined). The study's current label, subtype and usability become these."""
    if not roles.can_review(reviewer):
        raise PermissionDenied("Only radiologists and admins may review studies.")
    if label and label not in Label.values:
        raise ValueError(f"label must be one of {', '.join(Label.values)}, got {label!r}")
    if subtype and subtype not in Subtype.values:
        raise ValueError(f"subtype must be one of {', '.join(Subtype.values)}, got {subtype!r}")
    if subtype and label != Label.PNEUMONIA:
        raise ValueError("a subtype goes with the label PNEUMONIA only")
    if unusable_reason and unusable_reason not in Unusable.values:
        raise ValueError(f"unusable_reason must be one of {', '.join(Unusable.values)}")
    if not label and not unusable_reason:
        raise ValueError("a review needs a label or a reason the image is unusable")
    with transaction.atomic():
        # The lock orders concurrent reviews, so each records the label it replaced.
        locked = Study.objects.select_for_update().get(pk=study.pk)
        review = Review.objects.create(
            study=locked,
            reviewer=reviewer,
            previous_label=locked.current_label,
            label=label,
            previous_subtype=locked.current_subtype,
            subtype=subtype,
            unusable_reason=unusable_reason,
            note=note.strip(),
        )
        delivery_for_review(review)  # a study from the PACS: the verified report is owed
        locked.current_label, locked.current_subtype = label, subtype
        locked.unusable_reason = unusable_reason
        locked.reviewed_at = review.created_at
        locked.save(
            update_fields=["current_label", "current_subtype", "unusable_reason", "reviewed_at"]
        )
    study.current_label, study.current_subtype = label, subtype
    study.unusable_reason, study.reviewed_at = unusable_reason, review.created_at
    return review


def studies_relabel(*, studies, reviewer, label: str, note: str = "", subtype: str = "") -> int:
    """Bulk relabel (the admin action): one review per study, through review_create."""
    count = 0
    for study in studies:
        review_create(study=study, reviewer=reviewer, label=label, note=note, subtype=subtype)
        count += 1
    return count
