"""Retraining: the frozen validation split, training jobs, and the promotion gate.

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
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from diagnosis import model_loader, roles, selectors
from diagnosis.models import Evaluation, ModelVersion, TrainingJob, ValidationSplit
from diagnosis.pseudonyms import keyed_count
from diagnosis.services.cleaning import cleaning_run_create, training_pool
from diagnosis.services.registry import (
    evaluation_create,
    model_version_activate,
    model_version_discard,
    model_version_register,
)
from diagnosis.services.storage import atomic_files
from pneumo_site.celery import app

logger = logging.getLogger(__name__)

GATE_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
# ml.train flags a job may set; the rest are the retraining defaults below or ml.train's.
TRAIN_FLAGS = (
    "recipe", "arch", "img_size", "freeze_epochs", "epochs", "batch_size", "lr", "lr_mult",
    "lr_find_iters", "weight_decay", "label_smoothing", "min_sensitivity", "seed", "threads",
    "device",
)  # fmt: skip
# Continuing from the active model needs less than a fresh fit: one frozen epoch re-fits the
# head to the new pool (the fastai order), three unfrozen ones adapt the body.
RETRAIN_DEFAULTS = {"freeze_epochs": 1, "epochs": 3}

# ---------------------------------------------------------------------------- the gate


def gate_decide(candidate: dict, active: dict | None) -> dict:
    """The promotion verdict from two ml.evaluate results on the same validation split.

    Passed when the candidate's sensitivity (at its own threshold) reaches
    RETRAIN_MIN_SENSITIVITY and its RETRAIN_GATE_METRIC is at least the active model's minus
    RETRAIN_GATE_MARGIN. With no active model, only the floor applies."""
    metric, margin = settings.RETRAIN_GATE_METRIC, settings.RETRAIN_GATE_MARGIN
    floor = settings.RETRAIN_MIN_SENSITIVITY
    if metric not in GATE_METRICS:
        raise ValueError(f"RETRAIN_GATE_METRIC must be one of {', '.join(GATE_METRICS)}")
    if active is not None and active.get("data", {}).get("manifest_hash") != candidate.get(
        "data", {}
    ).get("manifest_hash"):
        raise ValueError("the two evaluations are not on the same validation split")
    keys = (*GATE_METRICS, "threshold")
    verdict = {
        "metric": metric,
        "margin": margin,
        "min_sensitivity": floor,
        "candidate": {k: candidate.get(k) for k in keys},
        "active": None if active is None else {k: active.get(k) for k in keys},
    }
    ours, sensitivity = candidate.get(metric), candidate.get("sensitivity")
    reasons = []
    if sensitivity is None or sensitivity < floor:
        reasons.append(f"sensitivity {_fmt(sensitivity)} is below the floor {floor:.3f}")
    if active is not None:
        theirs = active.get(metric)
        if ours is None or (theirs is not None and ours < theirs - margin):
            reasons.append(
                f"{metric} {_fmt(ours)} is worse than the active model's {_fmt(theirs)} "
                f"by more than the margin {margin:.3f}"
            )
    if reasons:
        return verdict | {"passed": False, "reason": "; ".join(reasons)}
    if active is None:
        reason = f"no active model; sensitivity {_fmt(sensitivity)} >= {floor:.3f}"
    else:
        reason = (
            f"{metric} {_fmt(ours)} vs active {_fmt(active.get(metric))} (margin {margin:.3f}); "
            f"sensitivity {_fmt(sensitivity)} >= {floor:.3f}"
        )
    return verdict | {"passed": True, "reason": reason}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------- validation split


# A frozen validation split takes VALIDATION_FRACTION of the training pool, by patient, and
# is cut in two: GATE_FRACTION of it is the gate part, which the gate judges on, the rest the
# selection part, on which ml.train chooses the epoch and the threshold. Each part is then as
# large as ml.train's own validation split (15%).
VALIDATION_FRACTION = 0.3
GATE_FRACTION = 0.5


def validation_split_get_or_create(*, base_data: Path | None, seed: int = 0, user=None):
    """The validation split in force, frozen now if there is none yet.

    The first time, the active model's own validation images are adopted when ml.train's
    manifest of them is still on disk and they are in the pool: the active model never
    trained on them, so comparing it with a candidate there is fair (its own epoch and
    threshold were chosen on them, which can only favour it). Otherwise VALIDATION_FRACTION
    of the pool, whole patients at a time. Either way the split is cut once more, by patient,
    into the selection part and the gate part (GATE_FRACTION); a split frozen before the
    parts existed is cut the first time it is asked for."""
    from ml.data import read_manifest, split_by_patient

    current = selectors.validation_split_current()
    if current is not None:
        return current if current.gate_manifest else _validation_split_cut(current, seed=seed)
    pool = training_pool(base_data=base_data, exclude_held_out=False)
    if len(pool) < 4:
        raise ValueError(f"the training pool has {len(pool)} images; retraining needs more")
    val, origin = [], ""
    active = selectors.model_version_active()
    manifest = Path(str((active.train_args if active else {}).get("val_manifest") or ""))
    if manifest.name and manifest.is_file():
        held = {item.path.resolve() for item in read_manifest(manifest)}
        val = [item for item in pool if Path(item.path).resolve() in held]
        origin = f"the validation images of {active.name} ({manifest.name})"
    if len({item.label for item in val}) < 2 or len(val) < 10:
        _, val = split_by_patient(pool, val_fraction=VALIDATION_FRACTION, seed=seed)
        origin = f"a patient split of the training pool ({VALIDATION_FRACTION:.0%})"
    with atomic_files() as written, transaction.atomic():
        manifest, manifest_hash = _manifest_save("training/validation.csv", val, written)
        return ValidationSplit.objects.create(
            created_by=user,
            manifest=manifest,
            manifest_hash=manifest_hash,
            item_keys=[item.source for item in val],
            origin=origin,
            **_parts(val, seed, written),
        )


def _validation_split_cut(split: ValidationSplit, *, seed: int) -> ValidationSplit:
    from ml.data import read_manifest

    val = read_manifest(default_storage.path(split.manifest))
    with atomic_files() as written, transaction.atomic():
        ValidationSplit.objects.filter(pk=split.pk).update(**_parts(val, seed, written))
    split.refresh_from_db()
    logger.info("Validation split %s cut into selection and gate parts.", split.pk)
    return split


def _parts(val: list, seed: int, written: list) -> dict:
    """The ValidationSplit fields of `val` cut by patient into selection and gate parts, their
    manifests saved (and recorded in `written`, deleted if the transaction fails)."""
    from ml.data import split_by_patient

    selection, gate = split_by_patient(val, val_fraction=GATE_FRACTION, seed=seed)
    selection_manifest, selection_hash = _manifest_save(
        "training/validation-selection.csv", selection, written
    )
    gate_manifest, gate_hash = _manifest_save("training/validation-gate.csv", gate, written)
    return {
        "selection_manifest": selection_manifest,
        "selection_hash": selection_hash,
        "gate_manifest": gate_manifest,
        "gate_hash": gate_hash,
        "gate_item_keys": [item.source for item in gate],
    }


def _manifest_save(name: str, items: list, written: list) -> tuple[str, str]:
    """(stored name, manifest hash) of `items` written as a CSV manifest to the storage."""
    from ml.data import manifest_hash, write_manifest

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_manifest(Path(tmp) / Path(name).name, items)
        stored = default_storage.save(name, ContentFile(csv_path.read_bytes()))
    written.append(stored)
    return stored, manifest_hash(items)


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
        with contextlib.redirect_stdout(log):
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
    workdir = Path(settings.VAR_DIR) / "training" / f"job-{job.pk}"
    train_csv = write_manifest(workdir / "train.csv", pool)
    selection_csv, gate_csv = validation_split_parts(split)
    data_hash = manifest_hash(pool)
    patients = {patient_of(item) for item in pool}
    print(
        f"== 2. Training pool: {len(pool)} images (hash {data_hash[:12]}); validation split "
        f"{split.pk}: {len(split.item_keys)} images, {split.origin}, frozen "
        f"{split.created_at:%Y-%m-%d %H:%M}; training chooses on its selection part "
        f"({split.n_selection}), the gate judges on its gate part ({split.n_gate}); "
        f"{len(patients)} patients, {keyed_count(patients)} of them known by a patient key "
        "(the others by their Kermany file name, or each image alone)",
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
        checkpoint = Path(main(config))
    except PretrainedWeightsUnavailable as exc:
        raise ValueError(str(exc)) from None

    print("== 4. Evaluating the candidate and the active model on the gate part")
    arch = read_meta(checkpoint).arch  # the active model's when continuing from it
    name = f"{arch.replace('_', '-')}-job{job.pk}-{timezone.now():%Y%m%d-%H%M%S}"
    candidate = model_version_register(path=checkpoint, name=name, user=job.created_by)
    checkpoint.unlink()  # the registry keeps its own copy; the manifests stay as the record
    try:
        verdict = _judge_and_gate(job, candidate, active, split, gate_csv, log, data_hash)
    except BaseException:
        model_version_discard(candidate)  # no promotable candidate without its verdict
        raise
    candidate.refresh_from_db()
    return candidate, verdict


def _judge_and_gate(job, candidate, active, split, gate_csv, log, data_hash) -> dict:
    """Evaluate the registered candidate and the active model on the gate part, record the
    verdict on the candidate and promote it if it passed. Returns the verdict."""
    candidate_eval = evaluation_create(version=candidate, data=gate_csv, user=job.created_by)
    print(f"candidate {candidate.name}: {candidate_eval.summary}", flush=True)
    active_eval = None
    if active is not None:
        active_eval = evaluation_on_split(active, split) or evaluation_create(
            version=active, data=gate_csv, user=job.created_by
        )
        print(f"active {active.name}: {active_eval.summary}", flush=True)

    verdict = gate_decide(candidate_eval.metrics, active_eval.metrics if active_eval else None)
    verdict |= {"job": job.pk} | gate_images(split)
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


def validation_split_parts(split: ValidationSplit) -> tuple[Path, Path]:
    """(selection part, gate part) of the split as CSV manifest paths."""
    return Path(default_storage.path(split.selection_manifest)), Path(
        default_storage.path(split.gate_manifest)
    )


def gate_images(split: ValidationSplit) -> dict:
    """What a verdict records about its images: which chose, which judged."""
    return {
        "validation_split": split.pk,
        "chosen_on": {"part": "selection", "n": split.n_selection, "hash": split.selection_hash},
        "judged_on": {"part": "gate", "n": split.n_gate, "hash": split.gate_hash},
    }


def evaluation_on_split(version: ModelVersion, split: ValidationSplit) -> Evaluation | None:
    """An evaluation of `version` on exactly this split's gate part, if one was stored."""
    return version.evaluations.filter(data_hash=split.gate_hash).order_by("-created_at").first()


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
