"""Writes: every change to studies, predictions, reviews, model versions and cleaning
decisions goes through this package.

Views, API views, admin actions, Celery tasks and management commands parse input, call one
service function and format the answer.
"""

from __future__ import annotations

from diagnosis.services.cleaning import cleaning_decide, cleaning_run_create, training_pool
from diagnosis.services.gate import (
    gate_decide,
    validation_split_get_or_create,
    validation_split_parts,
)
from diagnosis.services.pacs import pacs_check, pacs_deliver, pacs_poll
from diagnosis.services.predictions import (
    heatmaps_draw,
    prediction_enqueue,
    prediction_model_load,
    prediction_run,
    predictions_sweep,
)
from diagnosis.services.registry import (
    RuntimeRejected,
    evaluation_create,
    model_train,
    model_version_activate,
    model_version_discard,
    model_version_register,
    model_version_rollback,
    runtime_artifact_create,
)
from diagnosis.services.sites import (
    audit_json,
    site_audit_run,
    site_get_or_create,
    site_import,
    site_onboard,
)
from diagnosis.services.studies import (
    review_create,
    studies_relabel,
    study_create,
    study_create_batch,
    study_create_many,
)
from diagnosis.services.thresholds import site_threshold_activate, site_threshold_from_audit
from diagnosis.services.training import (
    model_version_promote,
    training_job_create,
    training_job_enqueue,
    training_job_run,
    training_jobs_sweep,
)

__all__ = [
    "RuntimeRejected",
    "audit_json",
    "cleaning_decide",
    "cleaning_run_create",
    "evaluation_create",
    "gate_decide",
    "heatmaps_draw",
    "model_train",
    "model_version_activate",
    "model_version_discard",
    "model_version_promote",
    "model_version_register",
    "model_version_rollback",
    "pacs_check",
    "pacs_deliver",
    "pacs_poll",
    "prediction_enqueue",
    "prediction_model_load",
    "prediction_run",
    "predictions_sweep",
    "review_create",
    "runtime_artifact_create",
    "site_audit_run",
    "site_get_or_create",
    "site_import",
    "site_onboard",
    "site_threshold_activate",
    "site_threshold_from_audit",
    "studies_relabel",
    "study_create",
    "study_create_batch",
    "study_create_many",
    "training_job_create",
    "training_job_enqueue",
    "training_job_run",
    "training_jobs_sweep",
    "training_pool",
    "validation_split_get_or_create",
    "validation_split_parts",
]
