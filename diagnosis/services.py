"""Writes: every change to studies, predictions, reviews and model versions goes through here.

Views, API views, admin actions, Celery tasks and management commands parse input, call one
function of this module and format the answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from diagnosis import inference, roles, selectors
from diagnosis.models import (
    CleaningCandidate,
    CleaningDecision,
    CleaningRun,
    Evaluation,
    Label,
    ModelActivation,
    ModelVersion,
    Prediction,
    Review,
    Study,
    Unusable,
)
from diagnosis.validation import UploadRejected, inspect_upload

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- studies


def study_create(*, uploaded_by, image: UploadedFile) -> Study:
    return study_create_many(uploaded_by=uploaded_by, images=[image])[0]


def study_create_many(*, uploaded_by, images: Sequence[UploadedFile]) -> list[Study]:
    """Store the images, each as a Study with a pending Prediction, all or nothing.

    Every file is checked before anything is written. The rows are created in one
    transaction, and the files written during it are deleted if it fails, so a refused or
    failed upload leaves neither a row nor a file. Jobs are enqueued only after commit.
    """
    if not roles.can_upload(uploaded_by):
        raise PermissionDenied("Only uploaders, radiologists and admins may upload studies.")
    if not images:
        raise UploadRejected("upload", "no file was sent.")
    if len(images) > settings.UPLOAD_MAX_FILES:
        raise UploadRejected("upload", f"at most {settings.UPLOAD_MAX_FILES} files at once.")
    infos = [inspect_upload(f, filename=f.name or "upload", size=f.size or 0) for f in images]

    written: list[str] = []
    try:
        with transaction.atomic():
            studies = []
            for upload, info in zip(images, infos, strict=True):
                # A server-generated name: the client's file name is only ever displayed.
                name = default_storage.save(f"studies/{uuid.uuid4().hex}{info.extension}", upload)
                written.append(name)
                study = Study.objects.create(
                    image=name,
                    original_filename=Path(upload.name or "upload").name[:255],
                    content_type=info.content_type,
                    sha256=info.sha256,
                    width=info.width,
                    height=info.height,
                    uploaded_by=uploaded_by,
                )
                prediction = Prediction.objects.create(study=study)
                transaction.on_commit(lambda pk=prediction.pk: prediction_enqueue(pk))
                studies.append(study)
    except BaseException:
        for name in written:
            default_storage.delete(name)
        raise
    return studies


# ---------------------------------------------------------------------------- reviews


def review_create(
    *, study: Study, reviewer, label: str = "", note: str = "", unusable_reason: str = ""
) -> Review:
    """Record a radiologist's verdict: a label, or that the image is unusable for training
    (with the reason), or both. The study's current label and usability become these."""
    if not roles.can_review(reviewer):
        raise PermissionDenied("Only radiologists and admins may review studies.")
    if label and label not in Label.values:
        raise ValueError(f"label must be one of {', '.join(Label.values)}, got {label!r}")
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
            unusable_reason=unusable_reason,
            note=note.strip(),
        )
        locked.current_label = label
        locked.unusable_reason = unusable_reason
        locked.reviewed_at = review.created_at
        locked.save(update_fields=["current_label", "unusable_reason", "reviewed_at"])
    study.current_label, study.unusable_reason = label, unusable_reason
    study.reviewed_at = review.created_at
    return review


def studies_relabel(*, studies, reviewer, label: str, note: str = "") -> int:
    """Bulk relabel (the admin action): one review per study, through review_create."""
    count = 0
    for study in studies:
        review_create(study=study, reviewer=reviewer, label=label, note=note)
        count += 1
    return count


# ---------------------------------------------------------------------------- predictions


def prediction_enqueue(prediction_id: int) -> bool:
    """Send the job to the broker. If the broker is down the prediction stays pending and
    the sweeper sends it later: an accepted upload is never lost."""
    from diagnosis.tasks import predict  # The task module imports this one.

    try:
        predict.apply_async((prediction_id,), retry=False)
    except Exception:
        logger.warning(
            "Broker unavailable; prediction %s stays pending for the sweeper.",
            prediction_id,
            exc_info=True,
        )
        return False
    Prediction.objects.filter(pk=prediction_id).update(enqueued_at=timezone.now())
    return True


def predictions_sweep() -> int:
    """Enqueue again what should be queued but may not be. Returns how many were sent."""
    if selectors.model_version_active() is None:
        return 0  # Nothing can run; activation enqueues everything pending.
    now = timezone.now()
    stale = selectors.predictions_to_requeue(
        pending_before=now - timedelta(seconds=settings.PREDICTION_REQUEUE_AFTER),
        running_before=now - timedelta(seconds=settings.PREDICTION_LEASE_SECONDS),
    )
    sent = 0
    for pk in stale.values_list("pk", flat=True):
        sent += prediction_enqueue(pk)
    return sent


def _claim(prediction_id: int) -> Prediction | None:
    """Take the prediction for this worker with one conditional UPDATE: a duplicate
    delivery, or a second worker, finds nothing to claim and does nothing. A running
    prediction whose lease is over (its worker died) can be claimed again."""
    now = timezone.now()
    lease_over = now - timedelta(seconds=settings.PREDICTION_LEASE_SECONDS)
    claimed = Prediction.objects.filter(
        Q(status=Prediction.Status.PENDING)
        | Q(status=Prediction.Status.RUNNING, started_at__lt=lease_over),
        pk=prediction_id,
    ).update(status=Prediction.Status.RUNNING, started_at=now, attempts=F("attempts") + 1)
    if not claimed:
        return None
    return Prediction.objects.select_related("study").get(pk=prediction_id)


def prediction_run(prediction_id: int) -> Prediction | None:
    """Run the active model on the prediction's study. Returns the finished prediction, or
    None when there was nothing to do (already taken, or no active model yet)."""
    version = selectors.model_version_active()
    if version is None:
        logger.info("No active model; prediction %s stays pending.", prediction_id)
        return None
    prediction = _claim(prediction_id)
    if prediction is None:
        return None
    # Only the holder of this claim may write the result: if its lease ran out and another
    # worker took over, the later writer finds no row to update.
    ours = Prediction.objects.filter(
        pk=prediction.pk, status=Prediction.Status.RUNNING, started_at=prediction.started_at
    )
    heatmap = ""
    try:
        predictor = inference.predictor_for(version)
        with default_storage.open(prediction.study.image.name, "rb") as fh:
            if settings.PREDICTION_HEATMAPS:
                result, overlay = predictor.explain(fh)
                heatmap = _save_png(overlay, "heatmaps")
            else:
                result = predictor.predict(fh)
    except Exception as exc:
        logger.exception("Prediction %s failed", prediction.pk)
        ours.update(
            status=Prediction.Status.FAILED,
            model_version=version,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
    else:
        written = ours.update(
            status=Prediction.Status.DONE,
            model_version=version,
            label=result.label,
            probability=result.probability,
            threshold=result.threshold,
            elapsed_ms=result.elapsed_ms,
            heatmap=heatmap,
            error="",
            finished_at=timezone.now(),
        )
        if not written and heatmap:
            default_storage.delete(heatmap)  # another worker's result stands
    prediction.refresh_from_db()
    return prediction


def _save_png(image, folder: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return default_storage.save(f"{folder}/{uuid.uuid4().hex}.png", ContentFile(buffer.getvalue()))


# ---------------------------------------------------------------------------- model versions


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_version_register(
    *, path: Path, name: str = "", activate: bool = False, user=None
) -> ModelVersion:
    """Record a checkpoint made by the `ml` package as a ModelVersion.

    The checkpoint describes itself (architecture, classes, preprocessing, threshold,
    metrics); it is loaded once here so that a broken file is refused now rather than
    in the worker. The file is copied under MEDIA_ROOT, so the registry owns its copy.
    """
    meta = inference.validate_checkpoint(path)
    sha256 = _file_sha256(path)
    existing = ModelVersion.objects.filter(sha256=sha256).first()
    if existing is not None:
        raise ValueError(f"This checkpoint is already registered as {existing.name!r}.")
    name = name or f"{meta.arch}-{sha256[:12]}"
    if ModelVersion.objects.filter(name=name).exists():
        raise ValueError(f"A model version named {name!r} already exists.")

    written: list[str] = []
    try:
        with transaction.atomic(), open(path, "rb") as fh:
            written.append(default_storage.save(f"models/{name}.pt", fh))
            plots = {}
            # ml.train records its LR finder plot; keep a copy beside the model.
            lr_plot = Path(path).parent / Path(meta.train_args.get("lr_find_plot") or "-").name
            if meta.train_args.get("lr_find_plot") and lr_plot.is_file():
                with lr_plot.open("rb") as plot:
                    written.append(default_storage.save(f"models/plots/{name}-lr_find.png", plot))
                plots["lr_find"] = written[-1]
            version = ModelVersion.objects.create(
                name=name,
                architecture=meta.arch,
                file=written[0],
                plots=plots,
                sha256=sha256,
                class_names=list(meta.class_names),
                positive_class=meta.positive_class,
                preprocessing=meta.preprocessing.to_dict(),
                threshold=meta.threshold,
                metrics=meta.metrics,
                train_args=meta.train_args,
                data_hash=meta.data_hash or "",
                registered_by=user,
            )
            if activate:
                model_version_activate(version=version, user=user)
    except BaseException:
        for stored in written:
            default_storage.delete(stored)
        raise
    return version


def model_version_activate(
    *, version: ModelVersion, user=None, reason: str = "", action: str = "promote"
) -> ModelVersion:
    """Make `version` the one the workers use, record who did it and why, and send every
    waiting prediction to it. Workers load it on their next task, without a restart."""
    with transaction.atomic():
        previous = ModelVersion.objects.select_for_update().filter(is_active=True).first()
        ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.activated_at = timezone.now()
        version.activated_by = user
        version.save(update_fields=["is_active", "activated_at", "activated_by"])
        ModelActivation.objects.create(
            version=version, previous=previous, action=action, user=user, reason=reason
        )
        pending = list(
            Prediction.objects.filter(status=Prediction.Status.PENDING).values_list("pk", flat=True)
        )
        transaction.on_commit(lambda: [prediction_enqueue(pk) for pk in pending])
    return version


def model_version_rollback(*, user=None, reason: str = "") -> ModelVersion:
    """Re-activate the version that was active before the latest activation."""
    latest = ModelActivation.objects.first()
    if latest is None or latest.previous is None:
        raise ValueError("There is no earlier active model version to roll back to.")
    return model_version_activate(
        version=latest.previous, user=user, reason=reason, action=ModelActivation.Action.ROLLBACK
    )


# ---------------------------------------------------------------------------- evaluations


def evaluation_create(*, version: ModelVersion, data: Path, user=None) -> Evaluation:
    """Evaluate `version` on a labeled folder (Kaggle layout) or CSV manifest with
    `ml.evaluate`, and keep its figures and plots with the version."""
    from ml import evaluate as ml_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--checkpoint", inference.model_path(version), "--json", f"{tmp}/eval.json"]
        argv += [
            "--plots",
            tmp,
            "--data-manifest" if data.suffix == ".csv" else "--data",
            str(data),
        ]
        ml_evaluate.main(ml_evaluate.get_args_parser().parse_args(argv))
        metrics = json.loads(Path(tmp, "eval.json").read_text())
        written: list[str] = []
        try:
            with transaction.atomic():
                evaluation = Evaluation.objects.create(
                    model_version=version,
                    created_by=user,
                    data_source=str(data),
                    data_hash=metrics.get("data", {}).get("manifest_hash", ""),
                    metrics=metrics,
                )
                for png in sorted(Path(tmp).glob("*.png")):
                    with png.open("rb") as fh:
                        name = f"evaluations/{evaluation.pk}/{png.name}"
                        written.append(default_storage.save(name, File(fh)))
                evaluation.plots = {Path(name).stem: name for name in written}
                evaluation.save(update_fields=["plots"])
        except BaseException:
            for name in written:
                default_storage.delete(name)
            raise
    return evaluation


# ---------------------------------------------------------------------------- training pool


def training_pool(*, base_data: Path | None = None) -> list:
    """What the next training run sees: the base data set folder (its training images only)
    plus every reviewed study, minus unusable images, with cleaning decisions applied (the
    latest per image: exclude drops it, relabel changes its label, keep leaves it).
    Each item's `source` is its key: "base:<path under base_data>" or "study:<id>"."""
    from ml.data import Item, scan_folder

    candidates: list[Item] = []
    if base_data is not None:
        for path, label in scan_folder(base_data):
            key = f"base:{Path(path).resolve().relative_to(Path(base_data).resolve())}"
            candidates.append(Item(Path(path), label, source=key))
    reviewed = Study.objects.exclude(current_label="").filter(unusable_reason="")
    for study in reviewed.order_by("pk"):
        path = Path(default_storage.path(study.image.name))
        candidates.append(Item(path, study.current_label, source=f"study:{study.pk}"))

    decisions = selectors.cleaning_decisions(item.source for item in candidates)
    pool = []
    for item in candidates:
        decision = decisions.get(item.source)
        if decision is not None and decision.decision == CleaningDecision.Decision.EXCLUDE:
            continue
        if decision is not None and decision.decision == CleaningDecision.Decision.RELABEL:
            item = Item(item.path, decision.label, source=item.source)
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
