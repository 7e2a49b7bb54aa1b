"""Predictions: enqueued after commit, claimed once, swept when the broker lost them."""

from __future__ import annotations

import io
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F, Q
from django.utils import timezone

from diagnosis import inference, selectors
from diagnosis.models import Prediction

logger = logging.getLogger(__name__)

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
        from ml.checkpoint import CheckpointError

        model_error = isinstance(exc, inference.ModelFileError | CheckpointError)
        logger.exception("Prediction %s failed", prediction.pk)
        reason = f"{type(exc).__name__}: {exc}"
        if model_error:
            reason = f"The active model cannot be used ({reason}); retried when one is."
        ours.update(
            status=Prediction.Status.FAILED,
            model_version=version,
            error=reason[:2000],
            model_error=model_error,
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
