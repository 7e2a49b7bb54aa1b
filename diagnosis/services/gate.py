"""The promotion gate and the frozen validation split it judges on.

The split is frozen once (the active model's own validation images, or a patient split of
the training pool) and cut once, by patient, into a selection part (training chooses its
epoch and threshold there) and a gate part (the gate judges candidate and active there, and
no training choice sees it). Used by retraining (services.training) and site adaptation.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from diagnosis import files, selectors
from diagnosis.models import Evaluation, ModelVersion, ValidationSplit
from diagnosis.pseudonyms import key_counts
from diagnosis.services.cleaning import training_pool
from diagnosis.services.storage import atomic_files

logger = logging.getLogger(__name__)

GATE_METRICS = ("auc", "sensitivity", "specificity", "accuracy")

# ---------------------------------------------------------------------------- the gate


def gate_decide(candidate: dict, active: dict | None) -> dict:
    """The promotion verdict from two ml.evaluate results on the same validation split.

    Passed when the candidate's sensitivity (at its own threshold) reaches
    RETRAIN_MIN_SENSITIVITY and its RETRAIN_GATE_METRIC is at least the active model's minus
    RETRAIN_GATE_MARGIN. When the active model answers the subtype question, the candidate
    must answer it too, with a subtype AUC (bacterial vs viral on the gate images of known
    subtype) at least the active model's minus the same margin. With no active model, only
    the floor applies."""
    metric, margin = settings.RETRAIN_GATE_METRIC, settings.RETRAIN_GATE_MARGIN
    floor = settings.RETRAIN_MIN_SENSITIVITY
    if metric not in GATE_METRICS:
        raise ValueError(f"RETRAIN_GATE_METRIC must be one of {', '.join(GATE_METRICS)}")
    if active is not None and active.get("data", {}).get("manifest_hash") != candidate.get(
        "data", {}
    ).get("manifest_hash"):
        raise ValueError("the two evaluations are not on the same validation split")
    keys = (*GATE_METRICS, "threshold")
    verdict = {
        "metric": metric,
        "margin": margin,
        "min_sensitivity": floor,
        "candidate": {k: candidate.get(k) for k in keys},
        "active": None if active is None else {k: active.get(k) for k in keys},
        "subtype": {
            "candidate": _subtype_auc(candidate),
            "active": None if active is None else _subtype_auc(active),
        },
    }
    ours, sensitivity = candidate.get(metric), candidate.get("sensitivity")
    reasons = []
    if sensitivity is None or sensitivity < floor:
        reasons.append(f"sensitivity {_fmt(sensitivity)} is below the floor {floor:.3f}")
    if active is not None:
        theirs = active.get(metric)
        if ours is None or (theirs is not None and ours < theirs - margin):
            reasons.append(
                f"{metric} {_fmt(ours)} is worse than the active model's {_fmt(theirs)} "
                f"by more than the margin {margin:.3f}"
            )
        reasons += _subtype_reasons(candidate, active, margin)
    if reasons:
        return verdict | {"passed": False, "reason": "; ".join(reasons)}
    if active is None:
        reason = f"no active model; sensitivity {_fmt(sensitivity)} >= {floor:.3f}"
    else:
        reason = (
            f"{metric} {_fmt(ours)} vs active {_fmt(active.get(metric))} (margin {margin:.3f}); "
            f"sensitivity {_fmt(sensitivity)} >= {floor:.3f}"
        )
    return verdict | {"passed": True, "reason": reason}


def _subtype_auc(evaluation: dict) -> float | None:
    return (evaluation.get("subtype") or {}).get("auc")


def _subtype_reasons(candidate: dict, active: dict, margin: float) -> list[str]:
    """Why the candidate fails on the subtype question, if the active model answers it."""
    theirs = _subtype_auc(active)
    if active.get("subtype") is None or theirs is None:
        return []  # the active model does not answer it (or the gate images lack a subtype)
    if candidate.get("subtype") is None:
        return ["the candidate does not answer the subtype question the active model answers"]
    ours = _subtype_auc(candidate)
    if ours is None or ours < theirs - margin:
        return [
            f"subtype AUC {_fmt(ours)} is worse than the active model's {_fmt(theirs)} by more "
            f"than the margin {margin:.3f}"
        ]
    return []


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------- validation split


# A frozen validation split takes VALIDATION_FRACTION of the training pool, by patient, and
# is cut in two: GATE_FRACTION of it is the gate part, which the gate judges on, the rest the
# selection part, on which ml.train chooses the epoch and the threshold. Each part is then as
# large as ml.train's own validation split (15%).
VALIDATION_FRACTION = 0.3
GATE_FRACTION = 0.5


def validation_split_get_or_create(*, base_data: Path | None, seed: int = 0, user=None):
    """The validation split in force, frozen now if there is none yet.

    The first time, the active model's own validation images are adopted when ml.train's
    manifest of them is still on disk and they are in the pool: the active model never
    trained on them, so comparing it with a candidate there is fair (its own epoch and
    threshold were chosen on them, which can only favour it). Otherwise VALIDATION_FRACTION
    of the pool, whole patients at a time. Either way the split is cut once more, by patient,
    into the selection part and the gate part (GATE_FRACTION); a split frozen before the
    parts existed is cut the first time it is asked for."""
    current = selectors.validation_split_current()
    if current is not None:
        return current if current.gate_manifest else _validation_split_cut(current, seed=seed)
    with files.scratch_folder("validation-split"):
        return _validation_split_create(base_data=base_data, seed=seed, user=user)


def _validation_split_create(*, base_data: Path | None, seed: int, user) -> ValidationSplit:
    from ml.data import patient_of, read_manifest, split_by_patient

    pool = training_pool(base_data=base_data, exclude_held_out=False)
    if len(pool) < 4:
        raise ValueError(f"the training pool has {len(pool)} images; retraining needs more")
    val, origin = [], ""
    active = selectors.model_version_active()
    manifest = Path(str((active.train_args if active else {}).get("val_manifest") or ""))
    if manifest.name and manifest.is_file():
        # By key where the manifest has one (a reviewed study's copy may sit elsewhere).
        held = {item.source or item.path.resolve() for item in read_manifest(manifest)}
        val = [i for i in pool if i.source in held or Path(i.path).resolve() in held]
        origin = f"the validation images of {active.name} ({manifest.name})"
    if len({item.label for item in val}) < 2 or len(val) < 10:
        _, val = split_by_patient(pool, val_fraction=VALIDATION_FRACTION, seed=seed)
        origin = f"a patient split of the training pool ({VALIDATION_FRACTION:.0%})"
    with atomic_files() as written, transaction.atomic():
        manifest, manifest_hash = _manifest_save("training/validation.csv", val, written)
        return ValidationSplit.objects.create(
            created_by=user,
            manifest=manifest,
            manifest_hash=manifest_hash,
            item_keys=[item.source for item in val],
            origin=origin,
            key_counts=key_counts(patient_of(item) for item in val),
            **_parts(val, seed, written),
        )


def _validation_split_cut(split: ValidationSplit, *, seed: int) -> ValidationSplit:
    from ml.data import patient_of, read_manifest

    with files.scratch_folder("validation-split"):
        val = read_manifest(files.stored_manifest(split.manifest))
    counts = key_counts(patient_of(item) for item in val)
    with atomic_files() as written, transaction.atomic():
        ValidationSplit.objects.filter(pk=split.pk).update(
            **_parts(val, seed, written), key_counts=counts
        )
    split.refresh_from_db()
    logger.info("Validation split %s cut into selection and gate parts.", split.pk)
    return split


def _parts(val: list, seed: int, written: list) -> dict:
    """The ValidationSplit fields of `val` cut by patient into selection and gate parts, their
    manifests saved (and recorded in `written`, deleted if the transaction fails)."""
    from ml.data import split_by_patient

    selection, gate = split_by_patient(val, val_fraction=GATE_FRACTION, seed=seed)
    selection_manifest, selection_hash = _manifest_save(
        "training/validation-selection.csv", selection, written
    )
    gate_manifest, gate_hash = _manifest_save("training/validation-gate.csv", gate, written)
    return {
        "selection_manifest": selection_manifest,
        "selection_hash": selection_hash,
        "gate_manifest": gate_manifest,
        "gate_hash": gate_hash,
        "gate_item_keys": [item.source for item in gate],
    }


def _manifest_save(name: str, items: list, written: list) -> tuple[str, str]:
    """(stored name, manifest hash) of `items` written as a CSV manifest to the storage."""
    from ml.data import manifest_hash, write_manifest

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_manifest(Path(tmp) / Path(name).name, items)
        stored = default_storage.save(name, ContentFile(csv_path.read_bytes()))
    written.append(stored)
    return stored, manifest_hash(items)


def validation_split_parts(
    split: ValidationSplit, *, base_data: Path | None = None
) -> tuple[Path, Path]:
    """(selection part, gate part) of the split as local CSV manifests of local images
    (files.stored_manifest; base images under `base_data` when given). Call inside
    files.scratch_folder()."""
    return (
        files.stored_manifest(split.selection_manifest, base_data=base_data),
        files.stored_manifest(split.gate_manifest, base_data=base_data),
    )


def gate_images(split: ValidationSplit) -> dict:
    """What a verdict records about its images: which chose, which judged."""
    return {
        "validation_split": split.pk,
        "chosen_on": {"part": "selection", "n": split.n_selection, "hash": split.selection_hash},
        "judged_on": {"part": "gate", "n": split.n_gate, "hash": split.gate_hash},
    }


def gate_source(split: ValidationSplit) -> str:
    """What an evaluation on the gate part records as its data: the stored manifest, not the
    scratch copy the evaluation read (gone once the job ends)."""
    return f"gate part of validation split #{split.pk} ({split.gate_manifest})"


def evaluation_on_split(version: ModelVersion, split: ValidationSplit) -> Evaluation | None:
    """An evaluation of `version` on exactly this split's gate part, if one was stored."""
    return version.evaluations.filter(data_hash=split.gate_hash).order_by("-created_at").first()


def gate_judge(candidate: ModelVersion, active: ModelVersion | None, split: ValidationSplit,
               gate_csv: Path, *, user) -> tuple[Evaluation, Evaluation | None, dict]:  # fmt: skip
    """The gate any new version goes through (a retrain, a site adaptation): the candidate
    evaluated on the split's gate part, the active version too (its stored evaluation on that
    part when it has one), and the verdict, which records which images chose and which
    judged. Returns (candidate's evaluation, active's or None, verdict)."""
    from diagnosis.services.registry import evaluation_create

    candidate_eval = evaluation_create(
        version=candidate, data=gate_csv, user=user, source=gate_source(split)
    )
    active_eval = None
    if active is not None:
        active_eval = evaluation_on_split(active, split) or evaluation_create(
            version=active, data=gate_csv, user=user, source=gate_source(split)
        )
    verdict = gate_decide(candidate_eval.metrics, active_eval.metrics if active_eval else None)
    return candidate_eval, active_eval, verdict | gate_images(split)
