"""HTML pages. Each view parses input, calls a service or selector, and renders."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from diagnosis import roles, selectors, services
from diagnosis.downloads import file_response
from diagnosis.forms import RetrainForm, ReviewForm, UploadForm
from diagnosis.models import SUBTYPE_CAVEAT, Label, PredictedSubtype, Prediction
from diagnosis.roles import role_required
from diagnosis.thumbnails import thumbnail_bytes
from diagnosis.validation import UploadRejected

logger = logging.getLogger(__name__)


def _render_list(request, form: UploadForm, *, status: int = 200):
    status_filter = request.GET.get("status", "")
    label_filter = request.GET.get("reviewed_label", "")
    predicted_label_filter = request.GET.get("predicted_label", "")
    subtype_filter = request.GET.get("subtype", "")
    studies = selectors.study_list_for(
        request.user,
        status=status_filter if status_filter in Prediction.Status.values else "",
        label=label_filter if label_filter in Label.values else "",
        predicted_label=predicted_label_filter if predicted_label_filter in Label.values else "",
        predicted_subtype=subtype_filter if subtype_filter in PredictedSubtype.values else "",
    )
    page = Paginator(studies, 25).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "form": form,
        "upload_results": request.session.pop(UPLOAD_RESULTS, None),
        "statuses": Prediction.Status.choices,
        "labels": Label.choices,
        "subtypes": PredictedSubtype.choices,
        "status_filter": status_filter,
        "label_filter": label_filter,
        "predicted_label_filter": predicted_label_filter,
        "subtype_filter": subtype_filter,
    }
    return render(request, "diagnosis/study_list.html", context, status=status)


@role_required(roles.has_any_role)
@require_GET
def study_list(request):
    return _render_list(request, UploadForm())


UPLOAD_RESULTS = "upload_results"  # session key: the last upload's per-file outcomes


def _outcome_row(outcome) -> dict:
    if outcome.study is None:
        return {"file": outcome.filename, "result": "refused", "reason": outcome.reason}
    return {
        "file": outcome.filename,
        "result": "duplicate" if outcome.duplicate else "accepted",
        "study": outcome.study.pk,
        "url": reverse("study-detail", args=[outcome.study.pk]),
        "reason": (
            f"already uploaded as study #{outcome.study.pk}; not run again"
            if outcome.duplicate
            else "; ".join(outcome.study.warnings)
        ),
    }


def _upload_summary(rows: list[dict]) -> str:
    counts = {
        kind: sum(r["result"] == kind for r in rows)
        for kind in ("accepted", "duplicate", "refused")
    }
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    if counts["refused"] and (counts["accepted"] or counts["duplicate"]):
        text += ": the acceptable files were kept; a refused file changed nothing"
    elif counts["refused"]:
        text += ": nothing was stored"
    return text + "."


@role_required(roles.can_upload)
@require_POST
def study_upload(request):
    """Each file of the batch is judged on its own: the acceptable ones are stored, each
    refused one is listed with its reason. A browser that sent the form with fetch
    (Accept: application/json, the progress bar) gets the same outcome as JSON."""
    wants_json = "application/json" in request.headers.get("Accept", "")
    form = UploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            outcomes = services.study_create_batch(
                uploaded_by=request.user,
                images=form.cleaned_data["images"],
                site=form.cleaned_data["site"],
            )
        except UploadRejected as exc:
            form.add_error("images", str(exc))
        else:
            rows = [_outcome_row(o) for o in outcomes]
            summary = _upload_summary(rows)
            request.session[UPLOAD_RESULTS] = {"summary": summary, "rows": rows}
            stored = any(r["result"] != "refused" for r in rows)
            if wants_json:
                body = {"summary": summary, "files": rows, "redirect": reverse("study-list")}
                return JsonResponse(body, status=200 if stored else 400)
            if stored:
                return redirect("study-list")
            return _render_list(request, UploadForm(), status=400)
    if wants_json:
        errors = [str(e) for errors in form.errors.values() for e in errors]
        return JsonResponse({"summary": " ".join(errors), "files": []}, status=400)
    return _render_list(request, form, status=400)


def _order(request) -> str:
    order = request.GET.get("order") or request.POST.get("order") or ""
    return order if order in selectors.WORKLIST_ORDERS else ""


def _subtype(request) -> str:
    """The worklist's subtype filter (the predicted subtype), "" for none."""
    subtype = request.GET.get("subtype") or request.POST.get("subtype_filter") or ""
    return subtype if subtype in PredictedSubtype.values else ""


def _worklist_query(order: str, subtype: str) -> str:
    return f"order={order}" + (f"&subtype={subtype}" if subtype else "")


@role_required(roles.has_any_role)
@require_GET
def study_detail(request, pk: int):
    study = selectors.study_or_404(request.user, pk)
    initial = {
        "label": study.current_label or None,
        "subtype": study.current_subtype,
        "unusable_reason": study.unusable_reason,
    }
    order, subtype = _order(request), _subtype(request)
    predictions = list(selectors.study_predictions(study))
    context = {
        "study": study,
        "predictions": predictions,
        "deliveries": [d for p in predictions for d in p.deliveries.all()],
        "pacs_instance": (
            selectors.study_pacs_instance(study) if roles.is_admin(request.user) else None
        ),
        "reviews": selectors.study_review_history(study, predictions),
        "review_form": ReviewForm(initial=initial),
        "order": order,
        "subtype_filter": subtype,
        "worklist_query": _worklist_query(order, subtype),
        "subtype_caveat": SUBTYPE_CAVEAT,
    }
    return render(request, "diagnosis/study_detail.html", context)


@role_required(roles.can_review)
@require_GET
def worklist(request):
    order, subtype = _order(request) or "triage", _subtype(request)
    studies = selectors.worklist(order=order, subtype=subtype)
    page = Paginator(studies, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "summary": selectors.worklist_summary(subtype=subtype),
        "order": order,
        "orders": list(selectors.WORKLIST_ORDERS),
        "subtype_filter": subtype,
        "subtypes": PredictedSubtype.choices,
        "worklist_query": _worklist_query(order, subtype),
    }
    return render(request, "diagnosis/worklist.html", context)


@role_required(roles.can_review)
@require_GET
def worklist_next(request):
    order, subtype = _order(request) or "triage", _subtype(request)
    after = request.GET.get("after", "")
    study = selectors.worklist_next(
        order=order, after=int(after) if after.isdigit() else None, subtype=subtype
    )
    query = _worklist_query(order, subtype)
    if study is None:
        messages.success(request, "The worklist is empty.")
        return redirect(f"{reverse('worklist')}?{query}")
    return redirect(f"{reverse('study-detail', args=[study.pk])}?{query}")


@role_required(roles.has_any_role)
@require_GET
def agreement(request):
    context = {
        "rows": selectors.agreement_by_version(),
        "min_cases": settings.AGREEMENT_MIN_CASES,
    }
    return render(request, "diagnosis/agreement.html", context)


@role_required(roles.has_any_role)
@require_GET
def study_image(request, pk: int):
    study = selectors.study_or_404(request.user, pk)
    return file_response(
        lambda: study.image.open("rb"), content_type=study.content_type,
        what=f"the image of study {study.pk}", name=study.image.name,
    )  # fmt: skip


@role_required(roles.has_any_role)
@require_GET
def study_thumbnail(request, pk: int):
    study = selectors.study_or_404(request.user, pk)
    try:
        data = thumbnail_bytes(study)
    except OSError:
        logger.error("The image of study %s is missing from storage (%s)", pk, study.image.name)
        raise Http404("The image of this study is missing from storage.") from None
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response


@role_required(roles.has_any_role)
@require_GET
def prediction_heatmap(request, pk: int, prediction_pk: int):
    question = request.GET.get("question", "pneumonia")
    heatmap = selectors.prediction_heatmap_for(request.user, pk, prediction_pk, question)
    if heatmap is None:
        raise Http404("No heatmap for this prediction.")
    return file_response(
        lambda: heatmap.open("rb"), content_type="image/png",
        what=f"the heatmap of prediction {prediction_pk}", name=heatmap.name,
    )  # fmt: skip


@role_required(roles.can_review)
@require_POST
def review_create(request, pk: int):
    study = selectors.study_or_404(request.user, pk)
    form = ReviewForm(request.POST)
    order, subtype = _order(request), _subtype(request)
    query = _worklist_query(order, subtype)
    if not form.is_valid():
        messages.error(request, " ".join(form.non_field_errors()) or "Invalid review.")
        return redirect(f"{reverse('study-detail', args=[study.pk])}?{query}")
    services.review_create(study=study, reviewer=request.user, **form.cleaned_data)
    verdict = form.cleaned_data["label"] or "unusable"
    if form.cleaned_data["subtype"]:
        verdict += f" ({form.cleaned_data['subtype']})"
    messages.success(request, f"Review recorded for study #{study.pk}: {verdict}.")
    if order:  # reviewing from the worklist: on to the next case in the same order
        return redirect(f"{reverse('worklist-next')}?{query}&after={study.pk}")
    return redirect("study-detail", pk=study.pk)


@role_required(roles.has_any_role)
@require_GET
def plot(request, owner: str, pk: int, plot: str):
    name = selectors.plot_file(owner, pk, plot)
    if name is None:
        raise Http404("No such plot.")
    return file_response(
        lambda: default_storage.open(name, "rb"), content_type="image/png",
        what=f"the {plot} plot", name=name,
    )  # fmt: skip


@role_required(roles.has_any_role)
@require_GET
def model_list(request):
    context = {
        "versions": selectors.model_version_list(),
        "activations": selectors.model_activations(),
        "jobs": selectors.training_jobs(),
        "split": selectors.validation_split_current(),
        "can_promote": roles.can_promote(request.user),
        "retrain_form": RetrainForm(),
    }
    return render(request, "diagnosis/model_list.html", context)


@role_required(roles.can_promote)
@require_POST
def model_promote(request, pk: int):
    version = selectors.model_version(pk)
    if version is None:
        raise Http404("No such model version.")
    services.model_version_promote(
        version=version, user=request.user, reason=request.POST.get("reason", "")[:500]
    )
    messages.success(request, f"{version.name} is now the active model.")
    return redirect("model-list")


@role_required(roles.can_promote)
@require_POST
def training_job_create(request):
    form = RetrainForm(request.POST)
    if form.is_valid():
        try:
            job = services.training_job_create(user=request.user, **form.job_arguments())
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("training-job", pk=job.pk)
    for error in form.errors.values():
        messages.error(request, " ".join(error))
    return redirect("model-list")


@role_required(roles.has_any_role)
@require_GET
def training_job(request, pk: int):
    job = selectors.training_job(pk)
    if job is None:
        raise Http404("No such training job.")
    return render(request, "diagnosis/training_job.html", {"job": job})


@role_required(roles.can_review)
@require_GET
def cleaning(request):
    run_pk = request.GET.get("run", "")
    run = selectors.cleaning_run(int(run_pk) if run_pk.isdigit() else None)
    label = request.GET.get("label") if request.GET.get("label") in Label.values else "NORMAL"
    flagged_only = request.GET.get("show", "flagged") != "all"
    context = {"run": run, "label": label, "labels": Label.values, "flagged_only": flagged_only}
    if run is not None:
        qs = selectors.cleaning_candidates(run, label=label, flagged_only=flagged_only)
        page = Paginator(qs, 24).get_page(request.GET.get("page"))
        decisions = selectors.cleaning_decisions(c.item_key for c in page)
        context |= {"page": page, "cards": [(c, decisions.get(c.item_key)) for c in page]}
    return render(request, "diagnosis/cleaning.html", context)


@role_required(roles.can_review)
@require_POST
def cleaning_decide(request):
    decision = request.POST.get("decision", "")
    label = request.POST.get("label", "") if decision == "relabel" else ""
    try:
        services.cleaning_decide(
            item_key=request.POST.get("item_key", ""), decision=decision, label=label,
            user=request.user,
        )  # fmt: skip
    except ValueError as exc:
        messages.error(request, str(exc))
    back = request.POST.get("back", "")
    return redirect(back if back.startswith("/cleaning/") else reverse("cleaning"))


@role_required(roles.can_review)
@require_GET
def cleaning_image(request, pk: int):
    candidate = selectors.cleaning_candidate(pk)
    if candidate is None:
        raise Http404("No such cleaning candidate.")
    # A reviewed study's image comes from the storage (the run may have read a copy on
    # another machine); a base image from the folder the run read it in.
    kind, _, key = candidate.item_key.partition(":")
    study = selectors.study_get_for(request.user, int(key)) if kind == "study" else None
    if study is not None:
        opener, name = (lambda: study.image.open("rb")), study.image.name
    else:
        opener, name = (lambda: open(candidate.path, "rb")), candidate.path  # noqa: SIM115
    return file_response(
        opener, content_type="image/jpeg", name=name,
        what=f"the image of cleaning candidate {candidate.pk} (moved since the cleaning run?)",
    )  # fmt: skip


# ---------------------------------------------------------------------------- sites


@role_required(roles.has_any_role)
@require_GET
def site_list(request):
    return render(request, "diagnosis/site_list.html", {"sites": selectors.site_list()})


@role_required(roles.has_any_role)
@require_GET
def site_detail(request, name: str):
    site = selectors.site(name)
    if site is None:
        raise Http404("No such site.")
    active = selectors.model_version_active()
    context = {
        "site": site,
        "active": active,
        "in_force": selectors.site_threshold_in_force(active, site) if active else None,
        "audits": selectors.site_audits(site),
        "history": selectors.site_threshold_history(site),
        "can_promote": roles.can_promote(request.user),
        "subtype_caveat": SUBTYPE_CAVEAT,
    }
    return render(request, "diagnosis/site_detail.html", context)


@role_required(roles.can_promote)
@require_POST
def site_threshold_activate(request, name: str):
    """Activate an audit's calibrated threshold, or restore the version's own (admins)."""
    audit = selectors.site_audit(_int(request.POST.get("audit")))
    if audit is None or audit.site.name != name:
        raise Http404("No such audit at this site.")
    try:
        row = services.site_threshold_from_audit(
            audit=audit,
            user=request.user,
            reason=request.POST.get("reason", "")[:500],
            restore=bool(request.POST.get("restore")),
        )
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        decides = "the version's own" if row.threshold is None else f"{row.threshold:.4f}"
        subtype = (
            ""
            if row.subtype_threshold is None
            else f" (subtype threshold {row.subtype_threshold:.4f})"
        )
        messages.success(
            request, f"{decides} threshold{subtype} decides at {name} for {audit.model_version}."
        )
    return redirect("site-detail", name=name)


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
