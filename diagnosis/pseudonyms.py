"""Pseudonymous patient keys: which images belong to one child, without knowing the child.

Whole-patient splits (the validation split, cleaning folds, site calibration) need to know
which images share a patient. A DICOM says so in PatientID (with IssuerOfPatientID, the
authority that assigned it); de-identification rightly drops both. What is kept instead is
their keyed hash, HMAC-SHA256 under the installation secret PSEUDONYM_KEY: the same patient
gets the same key at this installation, the key cannot be reversed, and without the secret
it cannot be recomputed or matched with another installation's. Keys are never shown to
anyone but admins (the Django admin); pages, the API, logs and manifests outside training
never carry the raw identifier.

An upload that is not DICOM may come with an identifier (the API's `patient_id`, a
`patients.csv` beside an imported folder); it is hashed the same way. Images with no key fall
back to the Kermany file-name patterns, and otherwise are each their own patient.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings

MAX_ID_LENGTH = 64  # DICOM's LO value representation holds 64 characters


def patient_key(patient_id: str, issuer: str = "") -> str:
    """The 64-hex-digit key of a patient identifier (and its issuer), "" for a blank one."""
    patient_id, issuer = (patient_id or "").strip(), (issuer or "").strip()
    if not patient_id:
        return ""
    message = f"{issuer}\x00{patient_id}".encode()
    return hmac.new(settings.PSEUDONYM_KEY.encode(), message, hashlib.sha256).hexdigest()


def patient_group(key: str, original_filename: str, fallback: str) -> str:
    """What a study is grouped by in a split: its key ("key:..."), else the patient its
    Kermany-style file name names ("name:..."), else `fallback` (the study alone)."""
    from ml.data import kermany_patient

    if key:
        return f"key:{key}"
    named = kermany_patient(original_filename)
    return f"name:{named}" if named else fallback


def key_counts(groups) -> dict[str, int]:
    """What a split's summary says about its patients, from each image's group (one entry per
    image): how many images and patients, and how many of each are known by a real patient key
    (the rest by a Kermany file name, or each image alone)."""
    groups = [str(group) for group in groups]
    keyed = [group for group in groups if group.startswith("key:")]
    return {
        "images": len(groups),
        "images_keyed": len(keyed),
        "patients": len(set(groups)),
        "patients_keyed": len(set(keyed)),
    }


def key_counts_text(counts: dict) -> str:
    """One line of a split summary, from `key_counts` (or a dict holding its keys), e.g.
    "120 images of 60 patients; 80 images (40 patients) known by a patient key, the others by
    a Kermany file name or each image alone"."""
    if not counts or "images" not in counts:
        return "patient keys not recorded (frozen before they were counted)"
    return (
        f"{counts['images']} images of {counts['patients']} patients; {counts['images_keyed']} "
        f"images ({counts['patients_keyed']} patients) known by a patient key, the others by a "
        "Kermany file name or each image alone"
    )
