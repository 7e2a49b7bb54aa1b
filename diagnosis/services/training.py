"""Retraining: training jobs, from the request to the gate's verdict (the gate and the frozen
validation split are in gate.py).

A job runs, in order: a cleaning ranking of the pool (unless skipped), the export of the
training pool as a manifest (the frozen validation images left out), ml.train (LR finder,
frozen head, then unfrozen with discriminative rates, one-cycle) from the active model or
from ImageNet weights, the evaluation of the candidate AND the active model on the same
frozen validation split, the registration of the candidate (parent, data hash, log, plots),
and the gate, which promotes it only if it is not worse than the active model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import traceback
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from diagnosis import files, model_loader, roles, selectors
from diagnosis.models import ModelVersion, TrainingJob
from diagnosis.pseudonyms import key_counts, key_counts_text
from diagnosis.services.cleaning import cleaning_run_create, training_pool
from diagnosis.services.gate import (
    gate_judge,
    validation_split_get_or_create,
    validation_split_parts,
)
from diagnosis.services.registry import (
    model_version_activate,
    model_version_discard,
    model_version_records,
    model_version_register,
)
from diagnosis.yielding import yielding_training
from pneumo_site.celery import app

logger = logging.getLogger(__name__)


# The ml.train settings a retrain may be given (a test checks each is a TrainConfig field and
# a flag of `manage.py retrain`); the rest (data, manifests, output) the service decides.
TRAIN_FLAGS = (
    "recipe", "arch", "img_size", "freeze_epochs", "epochs", "batch_size", "lr", "lr_mult",
    "lr_find_iters", "weight_decay", "label_smoothing", "min_sensitivity", "seed", "threads",
    "device", "subtype_loss_weight",
)  # fmt: skip
# Continuing from the active model needs less than a fresh fit: one frozen epoch re-fits the
# head to the new pool (the fastai order), three unfrozen ones adapt the body.
RETRAIN_DEFAULTS = {"freeze_epochs": 1, "epochs": 3}

# ---------------------------------------------------------------------------- jobs


def training_job_create(
    *, user=None, init: str = TrainingJob.Init.ACTIVE, parameters: dict | None = None,
    enqueue: bool = True,
) -> TrainingJob:  # fmt: skip
    """Record a retraining request and send it to the training queue after commit. Only
    admins may retrain (the gate may promote the result)."""
    roles.require(user, roles.can_promote, "Only admins may retrain and promote models.")
    if init not in TrainingJob.Init.values:
        raise ValueError(f"init must be one of {', '.join(TrainingJob.Init.values)}")
    parameters = dict(parameters or {})
    unknown = set(parameters) - set(TRAIN_FLAGS) - {"base_data", "limit_per_class", "clean"}
    if unknown:
        raise ValueError(f"unknown training parameters: {', '.join(sorted(unknown))}")
    if init == TrainingJob.Init.ACTIVE and selectors.model_version_active() is None:
        raise ValueError("there is no active model to continue from; start from ImageNet")
    with transaction.atomic():
        job = TrainingJob.objects.create(
            created_by=roles.recorded_user(user), init=init, parameters=parameters
        )
        if enqueue:
            transaction.on_commit(lambda: training_job_enqueue(job.pk))
    return job


def training_job_enqueue(job_id: int) -> bool:
    """Send the job to the training queue; if the broker is down the sweeper sends it later."""
    try:
        app.send_task("diagnosis.tasks.retrain", (job_id,), retry=False)
    except Exception:
        logger.warning("Broker unavailable; training job %s waits for the sweeper.", job_id)
        return False
    TrainingJob.objects.filter(pk=job_id).update(enqueued_at=timezone.now())
    return True


def training_jobs_sweep() -> int:
    """Re-send queued jobs the broker may have lost, take back running jobs whose worker
    went silent (up to TRAINING_MAX_ATTEMPTS), fail the rest. Returns how many were sent."""
    now = timezone.now()
    lease_over = now - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
    stale_running = Q(status=TrainingJob.Status.RUNNING, heartbeat_at__lt=lease_over)
    TrainingJob.objects.filter(stale_running, attempts__gte=settings.TRAINING_MAX_ATTEMPTS).update(
        status=TrainingJob.Status.FAILED,
        finished_at=now,
        error=f"the worker stopped answering {settings.TRAINING_MAX_ATTEMPTS} times",
    )
    requeue_before = now - timedelta(seconds=settings.PREDICTION_REQUEUE_AFTER)
    stale = TrainingJob.objects.filter(
        Q(status=TrainingJob.Status.QUEUED)
        & (Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=requeue_before))
        | stale_running
    )
    return sum(training_job_enqueue(pk) for pk in stale.values_list("pk", flat=True))


def _claim(job_id: int) -> TrainingJob | None:
    now = timezone.now()
    lease_over = now - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
    claimed = TrainingJob.objects.filter(
        Q(status=TrainingJob.Status.QUEUED)
        | Q(status=TrainingJob.Status.RUNNING, heartbeat_at__lt=lease_over),
        pk=job_id,
    ).update(
        status=TrainingJob.Status.RUNNING, started_at=now, heartbeat_at=now,
        attempts=F("attempts") + 1, log="", error="",
    )  # fmt: skip
    return TrainingJob.objects.get(pk=job_id) if claimed else None


class _JobLog(io.TextIOBase):
    """stdout of the training run, saved on the job every few seconds (the UI polls it),
    and echoed to `echo` (the command's terminal) as it comes."""

    def __init__(self, job: TrainingJob, echo=None, every: float = 2.0) -> None:
        self.job, self.echo, self.every = job, echo, every
        self.parts: list[str] = []
        self.saved_at = 0.0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.append(text)
        if self.echo is not None:
            self.echo.write(text)
            self.echo.flush()
        if time.monotonic() - self.saved_at >= self.every:
            self.save()
        return len(text)

    def save(self) -> None:
        self.saved_at = time.monotonic()
        TrainingJob.objects.filter(pk=self.job.pk).update(
            log="".join(self.parts), heartbeat_at=timezone.now()
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)


def training_job_run(job_id: int, *, echo=None) -> TrainingJob | None:
    """Run a queued job (claimed once: a second delivery does nothing). Returns the finished
    job, or None when another worker has it. A failure is recorded on the job, not raised."""
    job = _claim(job_id)
    if job is None:
        return None
    log = _JobLog(job, echo=echo)
    try:
        # Every local file of the job (manifests, copies of stored images, checkpoints) is
        # in its scratch folder, removed when the job ends however it ends.
        with contextlib.redirect_stdout(log), files.scratch_folder(f"job-{job.pk}"):
            candidate, verdict = _retrain(job, log)
    except Exception as exc:
        print(traceback.format_exc(), file=log)
        log.save()
        TrainingJob.objects.filter(pk=job.pk).update(
            status=TrainingJob.Status.FAILED, finished_at=timezone.now(), error=str(exc)
        )
        logger.exception("Training job %s failed", job.pk)
    else:
        log.save()
        TrainingJob.objects.filter(pk=job.pk).update(
            status=TrainingJob.Status.SUCCEEDED, finished_at=timezone.now(),
            candidate=candidate, promoted=verdict["passed"],
        )  # fmt: skip
    job.refresh_from_db()
    return job


def _retrain(job: TrainingJob, log: _JobLog) -> tuple[ModelVersion, dict]:
    from ml.checkpoint import read_meta
    from ml.data import manifest_hash, patient_of, write_manifest
    from ml.models import PretrainedWeightsUnavailable
    from ml.train import TrainConfig, main

    params = job.parameters
    base = params.get("base_data", settings.TRAINING_BASE_DATA) or None
    base_data = Path(base) if base else None
    if base_data is not None and not base_data.is_dir():
        raise ValueError(f"the base data folder {base_data} does not exist")
    active = selectors.model_version_active()
    if job.init == TrainingJob.Init.ACTIVE and active is None:
        raise ValueError("there is no active model to continue from")

    if params.get("clean", True):
        print("== 1. Cleaning: ranking the training pool by likely label errors", flush=True)
        run = cleaning_run_create(base_data=base_data, user=job.created_by)
        print(f"cleaning run {run.pk}: {run.n_issues} of {run.n_items} flagged", flush=True)

    split = validation_split_get_or_create(base_data=base_data, user=job.created_by)
    pool = training_pool(base_data=base_data)
    pool = limit_base_images(pool, params.get("limit_per_class"), seed=params.get("seed", 0))
    workdir = files.scratch() / "job"
    train_csv = write_manifest(workdir / "train.csv", pool)
    selection_csv, gate_csv = validation_split_parts(split, base_data=base_data)
    data_hash = manifest_hash(pool)
    keys = key_counts(patient_of(item) for item in pool)
    print(
        f"== 2. Training pool: {len(pool)} images (hash {data_hash[:12]}); validation split "
        f"{split.pk}: {len(split.item_keys)} images, {split.origin}, frozen "
        f"{split.created_at:%Y-%m-%d %H:%M}; training chooses on its selection part "
        f"({split.n_selection}), the gate judges on its gate part ({split.n_gate}); "
        f"{key_counts_text(keys)}; validation split: {key_counts_text(split.key_counts)}",
        flush=True,
    )

    chosen = RETRAIN_DEFAULTS | {k: params[k] for k in TRAIN_FLAGS if k in params}
    if job.init == TrainingJob.Init.ACTIVE:
        chosen["init_checkpoint"] = model_loader.model_path(active)
    else:
        chosen["pretrained"] = job.init
    config = TrainConfig(
        manifest=train_csv, val_manifest=selection_csv, out=workdir / "candidate.pt", **chosen
    )
    print(f"== 3. Fine-tuning from {job.get_init_display().lower()}", flush=True)
    try:
        with yielding_training():
            checkpoint = Path(main(config))
    except PretrainedWeightsUnavailable as exc:
        raise ValueError(str(exc)) from None

    print("== 4. Evaluating the candidate and the active model on the gate part")
    arch = read_meta(checkpoint).arch  # the active model's when continuing from it
    name = f"{arch.replace('_', '-')}-job{job.pk}-{timezone.now():%Y%m%d-%H%M%S}"
    candidate = model_version_register(path=checkpoint, name=name, user=job.created_by)
    checkpoint.unlink()  # the registry keeps its own copy
    try:
        model_version_records(candidate, {"manifest": train_csv}, f"training/job-{job.pk}")
        _rules_chose_on(candidate, split)
        verdict = _judge_and_gate(job, candidate, active, split, gate_csv, log, data_hash)
    except BaseException:
        model_version_discard(candidate)  # no promotable candidate without its verdict
        raise
    candidate.refresh_from_db()
    return candidate, verdict


def _rules_chose_on(candidate: ModelVersion, split) -> None:
    """Name the stored selection manifest as the images each threshold rule of the candidate
    (pneumonia, subtype) chose on: ml.train recorded the scratch copy it read, gone once the
    job ends. The rules' manifest hashes say the two hold the same images."""
    metrics = candidate.metrics
    for rule in (
        metrics.get("threshold_rule"),
        (metrics.get("subtype") or {}).get("threshold_rule"),
    ):
        if rule and rule.get("manifest_hash") == split.selection_hash:
            rule["images"] = split.selection_manifest
    candidate.save(update_fields=["metrics"])


def _judge_and_gate(job, candidate, active, split, gate_csv, log, data_hash) -> dict:
    """Evaluate the registered candidate and the active model on the gate part, record the
    verdict on the candidate and promote it if it passed. Returns the verdict."""
    candidate_eval, active_eval, verdict = gate_judge(
        candidate, active, split, gate_csv, user=job.created_by
    )
    print(f"candidate {candidate.name}: {candidate_eval.summary}", flush=True)
    if active_eval is not None:
        print(f"active {active.name}: {active_eval.summary}", flush=True)
    verdict |= {"job": job.pk}
    word = "PROMOTED" if verdict["passed"] else "kept as a candidate"
    print(f"== 5. Gate: {word}: {verdict['reason']}", flush=True)
    with transaction.atomic():
        ModelVersion.objects.filter(pk=candidate.pk).update(
            parent=active, gate=verdict, training_log=log.text, data_hash=data_hash
        )
        candidate.refresh_from_db()
        if verdict["passed"]:
            model_version_activate(  # as the admin who asked for the job, or the system
                version=candidate,
                user=job.created_by or roles.SYSTEM,
                reason=f"retrain job {job.pk}: gate passed",
            )
    return verdict


def limit_base_images(pool: list, n: int | None, *, seed: int) -> list:
    """At most `n` base images per class (ml.data.limit_per_class: seeded, whole patients);
    reviewed studies are always all kept."""
    from ml.data import limit_per_class

    if not n:
        return pool
    kept = set(limit_per_class([i for i in pool if i.source.startswith("base:")], n, seed=seed))
    return [item for item in pool if not item.source.startswith("base:") or item in kept]


def model_version_promote(*, version: ModelVersion, user, reason: str = "") -> ModelVersion:
    """A manual promotion (models page, API): admins only, audited like every activation."""
    return model_version_activate(version=version, user=user, reason=reason)
