"""The training pool and its cleaning: rankings stored, decisions append-only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.db import transaction

from diagnosis import files, roles, selectors
from diagnosis.models import CleaningCandidate, CleaningDecision, CleaningRun, Label, Study
from diagnosis.pseudonyms import key_counts, patient_group

# ---------------------------------------------------------------------------- training pool


def pool_patient(item) -> str:
    """The patient a training-pool item belongs to, grouped as a site's studies are
    (pseudonyms.patient_group): a reviewed study carries its group, a base image the patient
    its Kermany-style file name names, else its own source (the image alone)."""
    return item.patient or patient_group("", Path(item.path).name, item.source)


def training_pool(*, base_data: Path | None = None, exclude_held_out: bool = True) -> list:
    """What the next training run sees: the base data set folder (its training images only)
    plus every reviewed study (with its reviewed subtype), minus unusable images, with
    cleaning decisions applied (the latest per image: exclude drops it, relabel changes its
    label, keep leaves it), minus the frozen validation split's images and the studies a site
    audit evaluated on with every other image of their patients (held out: never trained on,
    never cleaned, so later comparisons and audits stay honest).
    Each item's `source` is its key: "base:<path under base_data>" or "study:<id>". A
    study's path is a local one (files.local_path): call inside files.scratch_folder()."""
    from ml.data import SUBTYPES, Item, scan_folder

    candidates: list[Item] = []
    if base_data is not None:
        for path, label in scan_folder(base_data):
            key = f"base:{Path(path).resolve().relative_to(Path(base_data).resolve())}"
            candidates.append(Item(Path(path), label, source=key))
    reviewed = Study.objects.exclude(current_label="").filter(unusable_reason="")
    for study in reviewed.order_by("pk"):
        path = files.local_path(study.image.name)
        key = f"study:{study.pk}"
        patient = patient_group(study.patient_key, study.original_filename, key)
        # The reviewed subtype teaches the second question; undetermined teaches nothing.
        subtype = study.current_subtype if study.current_subtype in SUBTYPES else ""
        candidates.append(
            Item(path, study.current_label, source=key, patient=patient, subtype=subtype)
        )

    if exclude_held_out:
        evaluated = selectors.site_evaluation_keys()
        # Every image of a patient an audit evaluated on stays out too: a base image can be
        # the original a constructed site's case was made from (ml.shift keeps the names).
        patients = {pool_patient(item) for item in candidates if item.source in evaluated}
        held_out = set(evaluated)
        if (split := selectors.validation_split_current()) is not None:
            held_out |= set(split.item_keys)
        candidates = [
            item
            for item in candidates
            if item.source not in held_out and pool_patient(item) not in patients
        ]
    decisions = selectors.cleaning_decisions(item.source for item in candidates)
    pool = []
    for item in candidates:
        decision = decisions.get(item.source)
        if decision is not None and decision.decision == CleaningDecision.Decision.EXCLUDE:
            continue
        if decision is not None and decision.decision == CleaningDecision.Decision.RELABEL:
            item = dataclasses.replace(item, label=decision.label)
        pool.append(item)
    return pool


def cleaning_decide(*, item_key: str, decision: str, user, label: str = "") -> CleaningDecision:
    """Record keep / relabel / exclude for a pool image; the next training run honours it."""
    if not roles.can_review(user):
        raise PermissionDenied("Only radiologists and admins may clean the training data.")
    if decision not in CleaningDecision.Decision.values:
        raise ValueError(f"decision must be one of {', '.join(CleaningDecision.Decision.values)}")
    if (decision == CleaningDecision.Decision.RELABEL) != bool(label):
        raise ValueError("a relabel decision needs a label, and only a relabel has one")
    if label and label not in Label.values:
        raise ValueError(f"label must be one of {', '.join(Label.values)}")
    return CleaningDecision.objects.create(
        item_key=item_key, decision=decision, label=label, user=user
    )


@files.with_scratch("cleaning")
def cleaning_run_create(
    *,
    base_data: Path | None,
    folds: int = 5,
    seed: int = 0,
    checkpoint: str | None = None,
    user=None,
    features=None,
) -> CleaningRun:
    """Rank the current training pool with out-of-fold predictions (ml.cleaning) and keep
    the ranking, so reviewers can work through it and their decisions persist."""
    from ml.cleaning import rank_label_issues
    from ml.data import patient_of

    pool = training_pool(base_data=base_data)
    keys = {str(Path(item.path)): item.source for item in pool}
    results = rank_label_issues(
        pool, folds=folds, seed=seed, checkpoint=checkpoint, features=features
    )
    with transaction.atomic():
        run = CleaningRun.objects.create(
            created_by=user,
            parameters={
                "folds": folds,
                "seed": seed,
                "checkpoint": checkpoint or "",
                "base_data": str(base_data or ""),
                # folds are whole patients: how many images and patients, and how many of
                # each known by a real patient key
                **key_counts(patient_of(item) for item in pool),
            },
            n_items=len(results),
            n_issues=sum(r.label_issue for r in results),
        )
        CleaningCandidate.objects.bulk_create(
            CleaningCandidate(
                run=run, item_key=keys[str(Path(r.path))], path=str(r.path),
                given_label=r.label, probability=r.probability, loss=r.loss,
                self_confidence=r.self_confidence, label_issue=r.label_issue, rank=r.rank,
            )
            for r in results
        )  # fmt: skip
    return run
