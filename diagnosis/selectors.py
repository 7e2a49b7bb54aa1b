"""Reads: every query a view, API view or admin page makes goes through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Case, Count, F, Min, OuterRef, Prefetch, Q, QuerySet, Subquery, When
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
    PacsInstance,
    Prediction,
    Review,
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
        predicted_subtype=_latest_prediction("subtype"),
        predicted_p_bacterial=_latest_prediction("p_bacterial"),
        predicted_subtype_threshold=_latest_prediction("subtype_threshold"),
    )


def filter_disagreement(qs: QuerySet[Study], disagree: bool) -> QuerySet[Study]:
    """Reviewed studies whose latest prediction differs (or not) from the current label."""
    reviewed = qs.exclude(current_label="").exclude(predicted_label="")
    if disagree:
        return reviewed.exclude(current_label=F("predicted_label"))
    return reviewed.filter(current_label=F("predicted_label"))


def study_list_for(
    user, *, status: str = "", label: str = "", predicted_label: str = "", subtype: str = "",
    predicted_subtype: str = "",
):  # fmt: skip
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
    if subtype:  # the radiologists' (bacterial, viral or undetermined)
        qs = qs.filter(current_subtype=subtype)
    if predicted_subtype:
        qs = qs.filter(predicted_subtype=predicted_subtype)
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


HEATMAP_FIELDS = {"pneumonia": "heatmap", "subtype": "subtype_heatmap"}  # by question


def prediction_heatmap_for(
    user, study_pk: int, prediction_pk: int, question: str = "pneumonia"
):  # fmt: skip
    """The heatmap file of `question` (HEATMAP_FIELDS) of the prediction, if `user` may see
    its study and it has one; else None."""
    study = study_get_for(user, study_pk)
    field = HEATMAP_FIELDS.get(question)
    if study is None or field is None:
        return None
    prediction = study.predictions.exclude(**{field: ""}).filter(pk=prediction_pk).first()
    return None if prediction is None else getattr(prediction, field)


def study_predictions(study: Study) -> QuerySet[Prediction]:
    """Newest first, with each one's result objects owed to the PACS (deliveries)."""
    return (
        study.predictions.select_related("model_version", "site_threshold__site")
        .prefetch_related("deliveries")
        .order_by("-created_at", "-id")
    )


def study_pacs_instance(study: Study):
    """Where the study came from in the PACS (its UIDs and Orthanc's identifiers), or None
    for an upload. Admins only: pages and API show it to no one else."""
    return PacsInstance.objects.filter(study=study).first()


def study_reviews(study: Study):
    return study.reviews.select_related("reviewer").order_by("-created_at", "-id")


@dataclass(frozen=True)
class ReviewLine:
    """A review beside the model's call it answered: the newest finished prediction made
    before it (None: the model had not called the study yet)."""

    review: Review
    model_label: str
    model_name: str
    verdict: str  # "agrees", "overrides the model", "no model call yet", "image unusable"


def study_review_history(study: Study, predictions: Sequence[Prediction]) -> list[ReviewLine]:
    """study_reviews(), newest first, each with what the model had said when it was made."""
    done = sorted(
        (p for p in predictions if p.status == Prediction.Status.DONE and p.finished_at),
        key=lambda p: p.finished_at,
    )
    lines = []
    for review in study_reviews(study):
        before = [p for p in done if p.finished_at <= review.created_at]
        call = before[-1] if before else None
        if not review.label:
            verdict = "image unusable"
        elif call is None:
            verdict = "no model call yet"
        else:
            verdict = "agrees" if call.label == review.label else "overrides the model"
        lines.append(
            ReviewLine(
                review=review,
                model_label=call.label if call else "",
                model_name=call.model_version.name if call and call.model_version else "",
                verdict=verdict,
            )
        )
    return lines


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
    # Most likely bacterial first (they need antibiotics soonest); studies the model gave no
    # subtype (a binary version) last.
    "bacterial": [F("predicted_p_bacterial").desc(nulls_last=True)],
}


def worklist(*, order: str = "triage", subtype: str = "", now=None) -> QuerySet[Study]:
    """Studies awaiting review, in `order`; whatever has waited longer than
    WORKLIST_MAX_WAIT_SECONDS comes first, oldest first, so nothing starves. `subtype`
    keeps the studies whose latest prediction calls that subtype."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.WORKLIST_MAX_WAIT_SECONDS)
    overdue_since = Case(When(created_at__lt=cutoff, then=F("created_at")), default=None)
    qs = studies_annotated(Study.objects.filter(reviewed_at__isnull=True)).annotate(
        overdue_since=overdue_since
    )
    if subtype:
        qs = qs.filter(predicted_subtype=subtype)
    qs = qs.select_related("uploaded_by", "site").prefetch_related(
        Prefetch(
            "predictions",
            queryset=Prediction.objects.select_related("model_version", "site_threshold__site"),
        )
    )
    return qs.order_by(
        F("overdue_since").asc(nulls_last=True), *WORKLIST_ORDERS[order], "created_at", "id"
    )


PENDING_FRESH_SECONDS = 10.0


def predictions_busy(*, now=None) -> bool:
    """Whether a prediction is running, or waits and was enqueued in the last 10 s: a live
    worker takes a new one within milliseconds, or is busy with others (running), so one
    waiting longer has no worker or no model, and must not hold training back."""
    recent = (now or timezone.now()) - timedelta(seconds=PENDING_FRESH_SECONDS)
    waiting = Q(status=Prediction.Status.PENDING, enqueued_at__gte=recent)
    return Prediction.objects.filter(Q(status=Prediction.Status.RUNNING) | waiting).exists()


def worklist_summary(*, subtype: str = "", now=None) -> dict:
    """What waits for review: how many studies, since when the oldest, how many overdue."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WORKLIST_MAX_WAIT_SECONDS)
    facts = worklist(order="oldest", subtype=subtype, now=now).aggregate(
        n=Count("id"),
        oldest=Min("created_at"),
        overdue=Count("id", filter=Q(created_at__lt=cutoff)),
    )
    facts["max_wait_hours"] = round(settings.WORKLIST_MAX_WAIT_SECONDS / 3600, 1)
    return facts


def worklist_next(*, order: str, after: int | None = None, subtype: str = "") -> Study | None:
    """The first study of the worklist other than `after` (the one just reviewed)."""
    qs = worklist(order=order, subtype=subtype)
    return (qs.exclude(pk=after) if after else qs).first()


# ---------------------------------------------------------------------------- agreement


def agreement_by_version() -> list[dict]:
    """Per model version, its finished predictions on reviewed studies against the
    radiologists' current label: confusion matrix, sensitivity, specificity; and, for a
    version that answers it, the subtype (subtype_agreement)."""
    rows = (
        Prediction.objects.filter(status=Prediction.Status.DONE, model_version__isnull=False)
        .exclude(study__current_label="")
        .values("model_version__name", "label", "study__current_label")
        .annotate(n=Count("id"))
    )
    subtypes = subtype_agreement()
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
                "agreement": wilson_rate(c["tp"] + c["tn"], positives + negatives),
                "sensitivity": wilson_rate(c["tp"], positives),
                "specificity": wilson_rate(c["tn"], negatives),
                "subtype": subtypes.get(name),
            }
        )
    return summary


Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True)
class Rate:
    """k of n with its 95% Wilson score interval; too_few below AGREEMENT_MIN_CASES."""

    k: int
    n: int
    value: float
    low: float
    high: float
    too_few: bool


def wilson_rate(k: int, n: int) -> Rate | None:
    """k successes of n as a Rate (None when n is 0). The Wilson interval keeps to [0, 1]
    and stays honest at 0/n and n/n, where the normal approximation gives a zero width."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * (p * (1 - p) / n + Z95**2 / (4 * n * n)) ** 0.5 / (1 + Z95**2 / n)
    return Rate(
        k=k, n=n, value=p, low=max(0.0, centre - half), high=min(1.0, centre + half),
        too_few=n < settings.AGREEMENT_MIN_CASES,
    )  # fmt: skip


SUBTYPE_CALLS = ("bacterial", "viral")  # what a model calls
SUBTYPE_ANSWERS = ("bacterial", "viral", "undetermined")  # what a radiologist may answer


def subtype_agreement() -> dict[str, dict]:
    """Per version that predicted subtypes: its calls on studies the radiologists reviewed as
    pneumonia with a subtype. confusion[reviewed][called]; agreement, sensitivity (bacterial
    called bacterial) and specificity (viral called viral) count only bacterial and viral
    answers: undetermined is a valid answer, shown, and never an error."""
    rows = (
        Prediction.objects.filter(status=Prediction.Status.DONE, model_version__isnull=False)
        .exclude(subtype="")
        .filter(study__current_label="PNEUMONIA")
        .exclude(study__current_subtype="")
        .values("model_version__name", "subtype", "study__current_subtype")
        .annotate(n=Count("id"))
    )
    cells: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        matrix = cells.setdefault(
            row["model_version__name"],
            {answer: dict.fromkeys(SUBTYPE_CALLS, 0) for answer in SUBTYPE_ANSWERS},
        )
        matrix[row["study__current_subtype"]][row["subtype"]] += row["n"]
    summary = {}
    for name, m in cells.items():
        bacterial, viral = sum(m["bacterial"].values()), sum(m["viral"].values())
        decided = bacterial + viral
        agree = m["bacterial"]["bacterial"] + m["viral"]["viral"]
        summary[name] = {
            "n": decided + sum(m["undetermined"].values()),
            "n_undetermined": sum(m["undetermined"].values()),
            "confusion": m,
            "agreement": wilson_rate(agree, decided),
            "sensitivity": wilson_rate(m["bacterial"]["bacterial"], bacterial),
            "specificity": wilson_rate(m["viral"]["viral"], viral),
        }
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
