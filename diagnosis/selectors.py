"""Reads: every query a view, API view or admin page makes goes through here."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Case, Count, F, OuterRef, Prefetch, Q, QuerySet, Subquery, When
from django.db.models.functions import Abs
from django.http import Http404
from django.utils import timezone

from diagnosis import roles
from diagnosis.models import (
    CleaningCandidate,
    CleaningDecision,
    CleaningRun,
    Evaluation,
    ModelActivation,
    ModelVersion,
    Prediction,
    Site,
    SiteAudit,
    SiteThreshold,
    Study,
    TrainingJob,
    ValidationSplit,
)


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
        predicted_threshold=_latest_prediction("threshold"),
    )


def filter_disagreement(qs: QuerySet[Study], disagree: bool) -> QuerySet[Study]:
    """Reviewed studies whose latest prediction differs (or not) from the current label."""
    reviewed = qs.exclude(current_label="").exclude(predicted_label="")
    if disagree:
        return reviewed.exclude(current_label=F("predicted_label"))
    return reviewed.filter(current_label=F("predicted_label"))


def study_list_for(user, *, status: str = "", label: str = "", predicted_label: str = ""):
    predictions = Prediction.objects.select_related("model_version", "site_threshold__site")
    qs = studies_annotated().select_related("uploaded_by", "site")
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


def studies_by_sha256(user, digests: set[str]) -> dict[str, Study]:
    """The oldest study with each of these file hashes among those `user` may see."""
    found: dict[str, Study] = {}
    for study in study_list_for(user).filter(sha256__in=digests).order_by("created_at", "id"):
        found.setdefault(study.sha256, study)
    return found


def study_get_for(user, pk: int) -> Study | None:
    """The study if `user` may see it, else None (callers answer 404, hiding its existence)."""
    return study_list_for(user).filter(pk=pk).first()


def study_or_404(user, pk: int) -> Study:
    """The study if `user` may see it; Http404 otherwise, whether it does not exist or is
    someone else's (a 403 would tell that it exists). Pages and API alike."""
    study = study_get_for(user, pk)
    if study is None:
        raise Http404("No such study.")
    return study


def prediction_heatmap_for(user, study_pk: int, prediction_pk: int) -> Prediction | None:
    """The prediction if `user` may see its study and it has a heatmap, else None."""
    study = study_get_for(user, study_pk)
    if study is None:
        return None
    return study.predictions.exclude(heatmap="").filter(pk=prediction_pk).first()


def study_predictions(study: Study) -> QuerySet[Prediction]:
    return study.predictions.select_related("model_version", "site_threshold__site").order_by(
        "-created_at", "-id"
    )


def study_reviews(study: Study):
    return study.reviews.select_related("reviewer").order_by("-created_at", "-id")


def model_version_list() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related(
        "activated_by", "registered_by", "parent"
    ).prefetch_related("evaluations")


def model_version(pk: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(pk=pk).first()


def model_version_by_name(name: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(name=name).first()


def validation_split_current() -> ValidationSplit | None:
    return ValidationSplit.objects.first()


def training_jobs(limit: int = 10) -> QuerySet[TrainingJob]:
    return TrainingJob.objects.select_related("created_by", "candidate")[:limit]


def training_job(pk: int) -> TrainingJob | None:
    return TrainingJob.objects.select_related("created_by", "candidate").filter(pk=pk).first()


PLOT_OWNERS = {"evaluation": Evaluation, "version": ModelVersion, "audit": SiteAudit}


def plot_file(owner: str, pk: int, plot: str) -> str | None:
    """The stored file of one plot of an evaluation, a model version or a site audit."""
    row = PLOT_OWNERS[owner].objects.filter(pk=pk).first() if owner in PLOT_OWNERS else None
    return row.plots.get(plot) if row else None


def model_activations(limit: int = 20) -> QuerySet[ModelActivation]:
    return ModelActivation.objects.select_related("version", "previous", "user")[:limit]


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


# ---------------------------------------------------------------------------- worklist

WORKLIST_ORDERS = {
    # Most likely pneumonia first.
    "triage": [F("predicted_probability").desc(nulls_last=True)],
    # Closest to the decision threshold first: the cases a label teaches the model most.
    "uncertainty": [
        Abs(F("predicted_probability") - F("predicted_threshold")).asc(nulls_last=True)
    ],
    "oldest": [],
}


def worklist(*, order: str = "triage", now=None) -> QuerySet[Study]:
    """Studies awaiting review, in `order`; whatever has waited longer than
    WORKLIST_MAX_WAIT_SECONDS comes first, oldest first, so nothing starves."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.WORKLIST_MAX_WAIT_SECONDS)
    overdue_since = Case(When(created_at__lt=cutoff, then=F("created_at")), default=None)
    qs = studies_annotated(Study.objects.filter(reviewed_at__isnull=True)).annotate(
        overdue_since=overdue_since
    )
    qs = qs.select_related("uploaded_by", "site").prefetch_related(
        Prefetch(
            "predictions",
            queryset=Prediction.objects.select_related("model_version", "site_threshold__site"),
        )
    )
    return qs.order_by(
        F("overdue_since").asc(nulls_last=True), *WORKLIST_ORDERS[order], "created_at", "id"
    )


def worklist_next(*, order: str, after: int | None = None) -> Study | None:
    """The first study of the worklist other than `after` (the one just reviewed)."""
    qs = worklist(order=order)
    return (qs.exclude(pk=after) if after else qs).first()


# ---------------------------------------------------------------------------- agreement


def agreement_by_version() -> list[dict]:
    """Per model version, its finished predictions on reviewed studies against the
    radiologists' current label: confusion matrix, sensitivity, specificity."""
    rows = (
        Prediction.objects.filter(status=Prediction.Status.DONE, model_version__isnull=False)
        .exclude(study__current_label="")
        .values("model_version__name", "label", "study__current_label")
        .annotate(n=Count("id"))
    )
    cells: dict[str, dict[str, int]] = {}
    for row in rows:
        said_pneumonia = row["label"] == "PNEUMONIA"
        is_pneumonia = row["study__current_label"] == "PNEUMONIA"
        key = {(True, True): "tp", (True, False): "fp", (False, True): "fn", (False, False): "tn"}[
            (said_pneumonia, is_pneumonia)
        ]
        counts = cells.setdefault(
            row["model_version__name"], dict.fromkeys(("tn", "fp", "fn", "tp"), 0)
        )
        counts[key] += row["n"]
    summary = []
    for name, c in sorted(cells.items()):
        positives, negatives = c["tp"] + c["fn"], c["tn"] + c["fp"]
        summary.append(
            {
                "model_version": name,
                "n": positives + negatives,
                "confusion": c,
                "agreement": (c["tp"] + c["tn"]) / (positives + negatives),
                "sensitivity": c["tp"] / positives if positives else None,
                "specificity": c["tn"] / negatives if negatives else None,
            }
        )
    return summary


# ---------------------------------------------------------------------------- cleaning


def cleaning_run(pk: int | None = None) -> CleaningRun | None:
    runs = CleaningRun.objects.all()
    return runs.filter(pk=pk).first() if pk else runs.first()


def cleaning_candidates(run: CleaningRun, *, label: str, flagged_only: bool):
    """A run's images of one given label, most likely mislabeled first. "Flagged" means a
    confident-learning label issue or a loss above ln 2 (the model leans the other way)."""
    qs = run.candidates.filter(given_label=label)
    if flagged_only:
        qs = qs.filter(Q(label_issue=True) | Q(loss__gt=0.6931))
    return qs.order_by("rank")


def cleaning_decisions(keys) -> dict[str, CleaningDecision]:
    """The latest decision for each of `keys`."""
    latest: dict[str, CleaningDecision] = {}
    for decision in (
        CleaningDecision.objects.filter(item_key__in=list(keys))
        .order_by("created_at", "id")
        .select_related("user")
    ):
        latest[decision.item_key] = decision
    return latest


def cleaning_candidate(pk: int) -> CleaningCandidate | None:
    return CleaningCandidate.objects.filter(pk=pk).first()


# ---------------------------------------------------------------------------- sites


def site_thresholds_in_force(version: ModelVersion, site_ids) -> dict[int, SiteThreshold]:
    """site id -> the site threshold deciding for `version` there; a site missing from the
    answer uses the version's own threshold (none set, or the latest row restored it)."""
    rows = SiteThreshold.objects.filter(model_version=version, site_id__in=list(site_ids))
    in_force = {}
    for row in rows.order_by("site_id", "-created_at", "-id"):
        in_force.setdefault(row.site_id, row)  # the latest row of each site
    return {site: row for site, row in in_force.items() if row.threshold is not None}


def site_threshold_in_force(version: ModelVersion, site: Site) -> SiteThreshold | None:
    return site_thresholds_in_force(version, [site.pk]).get(site.pk)


def site_list() -> QuerySet[Site]:
    return Site.objects.annotate(
        n_studies=Count("studies", distinct=True), n_audits=Count("audits", distinct=True)
    )


def site(name: str) -> Site | None:
    return Site.objects.filter(name=name).first()


def site_audit(pk: int) -> SiteAudit | None:
    return SiteAudit.objects.select_related("site", "model_version").filter(pk=pk).first()


def site_audits(site: Site) -> QuerySet[SiteAudit]:
    return site.audits.select_related("model_version", "candidate", "created_by")


def site_threshold_history(site: Site) -> QuerySet[SiteThreshold]:
    return site.thresholds.select_related("model_version", "created_by", "audit")


def site_labeled_studies(site: Site) -> QuerySet[Study]:
    """The site's studies a radiologist has labeled and not marked unusable: its audit set."""
    return site.studies.exclude(current_label="").filter(unusable_reason="").order_by("pk")


def site_evaluation_keys() -> set[str]:
    """The studies site audits measured their calibrated figures on, as training-pool keys
    ("study:<id>"): kept out of training so that the next audit of the site stays honest."""
    keys: set[str] = set()
    for metrics in SiteAudit.objects.values_list("metrics", flat=True):
        keys.update(
            f"study:{pk}" for pk in (metrics.get("calibrated") or {}).get("eval_studies", [])
        )
    return keys
