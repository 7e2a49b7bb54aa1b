"""Celery tasks: an id in, one service call, nothing returned through the broker."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_init, worker_ready
from django.conf import settings

from diagnosis import services

logger = logging.getLogger(__name__)


@worker_process_init.connect
def _set_threads(**_) -> None:
    # Worker concurrency x intra-op threads should not exceed the cores (README, "Workers").
    # An ONNX runtime takes its threads from the setting itself and must not import torch.
    if settings.INFERENCE_THREADS > 0 and not settings.INFERENCE_RUNTIME.startswith("onnx"):
        import torch

        torch.set_num_threads(settings.INFERENCE_THREADS)


@worker_ready.connect
def _load_model_early(sender, **_) -> None:
    # A worker on the prediction queue asks itself, through that queue, to load the active
    # model now rather than on its first upload. Tasks already queued go first; with
    # --concurrency 1 (README, "Workers") the one pool process is the one that loads it.
    if settings.CELERY_TASK_DEFAULT_QUEUE not in sender.app.amqp.queues.consume_from:
        return  # the training worker
    try:
        load_model.apply_async(retry=False)
    except Exception:
        logger.warning("Broker unavailable; the model loads with the first prediction.")


@shared_task
def load_model() -> None:
    name = services.prediction_model_load()
    if name is not None:
        logger.info("Model %s loaded before the first upload", name)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def predict(prediction_id: int) -> None:
    prediction = services.prediction_run(prediction_id)
    if prediction is not None:
        logger.info("Prediction %s: %s", prediction.pk, prediction.status)


@shared_task
def draw_heatmaps() -> None:
    drawn = services.heatmaps_draw(wait=True)
    if drawn:
        logger.info("%d heatmaps drawn", drawn)


@shared_task
def sweep_predictions() -> int:
    # Training jobs lost by the broker, or by a dead worker, are swept on the same beat, and
    # heatmaps left owed by a worker killed while drawing them are drawn.
    sent = services.predictions_sweep() + services.training_jobs_sweep()
    if settings.PREDICTION_HEATMAPS == "deferred":
        services.heatmaps_draw()
    return sent


# Routed to settings.TRAINING_QUEUE (CELERY_TASK_ROUTES): a worker of its own, so a long
# training never delays predictions. The global time limits are for predictions.
@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.TRAINING_TIME_LIMIT,
    time_limit=settings.TRAINING_TIME_LIMIT + 60,
)
def retrain(job_id: int) -> None:
    job = services.training_job_run(job_id)
    if job is not None:
        logger.info("Training job %s: %s", job.pk, job.status)
