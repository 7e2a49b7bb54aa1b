"""Reads: every query a view, API view or admin page makes goes through here."""

from __future__ import annotations

from django.db.models import F, OuterRef, Prefetch, Q, QuerySet, Subquery

from diagnosis import roles
from diagnosis.models import Evaluation, ModelVersion, Prediction, Study


def _latest_prediction(field: str) -> Subquery:
    latest = Prediction.objects.filter(study=OuterRef("pk")).order_by("-created_at", "-id")
    return Subquery(latest.values(field)[:1])


def studies_annotated(qs: QuerySet[Study] | None = None) -> QuerySet[Study]:
    """Studies with their latest prediction's status, label and probability as columns,
    so that lists can filter and sort on them."""
    qs = Study.objects.all() if qs is None else qs
    return qs.annotate(
        latest_status=_latest_prediction("status"),
        predicted_label=_latest_prediction("label"),
        predicted_probability=_latest_prediction("probability"),
    )


def filter_disagreement(qs: QuerySet[Study], disagree: bool) -> QuerySet[Study]:
    """Reviewed studies whose latest prediction differs (or not) from the current label."""
    reviewed = qs.exclude(current_label="").exclude(predicted_label="")
    if disagree:
        return reviewed.exclude(current_label=F("predicted_label"))
    return reviewed.filter(current_label=F("predicted_label"))


def study_list_for(user, *, status: str = "", label: str = "", predicted_label: str = ""):
    predictions = Prediction.objects.select_related("model_version")
    qs = studies_annotated().select_related("uploaded_by")
    qs = qs.prefetch_related(Prefetch("predictions", queryset=predictions))
    if not roles.sees_all_studies(user):
        qs = qs.filter(uploaded_by=user)
    if status:
        qs = qs.filter(latest_status=status)
    if label:
        qs = qs.filter(current_label=label)
    if predicted_label:
        qs = qs.filter(predicted_label=predicted_label)
    return qs


def study_get_for(user, pk: int) -> Study | None:
    """The study if `user` may see it, else None (callers answer 404, hiding its existence)."""
    return study_list_for(user).filter(pk=pk).first()


def prediction_heatmap_for(user, study_pk: int, prediction_pk: int) -> Prediction | None:
    """The prediction if `user` may see its study and it has a heatmap, else None."""
    study = study_get_for(user, study_pk)
    if study is None:
        return None
    return study.predictions.exclude(heatmap="").filter(pk=prediction_pk).first()


def study_predictions(study: Study) -> QuerySet[Prediction]:
    return study.predictions.select_related("model_version").order_by("-created_at", "-id")


def study_reviews(study: Study):
    return study.reviews.select_related("reviewer").order_by("-created_at", "-id")


def model_version_list() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related("activated_by", "registered_by").prefetch_related(
        "evaluations"
    )


PLOT_OWNERS = {"evaluation": Evaluation, "version": ModelVersion}


def plot_file(owner: str, pk: int, plot: str) -> str | None:
    """The stored file of one plot of an evaluation or a model version, or None."""
    row = PLOT_OWNERS[owner].objects.filter(pk=pk).first() if owner in PLOT_OWNERS else None
    return row.plots.get(plot) if row else None


def model_version_active() -> ModelVersion | None:
    return ModelVersion.objects.filter(is_active=True).first()


def predictions_to_requeue(*, pending_before, running_before) -> QuerySet[Prediction]:
    """Predictions that should be in the queue but may not be: pending ones not enqueued
    recently, and running ones whose worker has held them past the lease (it died)."""
    never_sent = Q(
        status=Prediction.Status.PENDING, enqueued_at__isnull=True, created_at__lt=pending_before
    )
    sent_long_ago = Q(status=Prediction.Status.PENDING, enqueued_at__lt=pending_before)
    lease_over = Q(status=Prediction.Status.RUNNING, started_at__lt=running_before)
    return Prediction.objects.filter(never_sent | sent_long_ago | lease_over)
