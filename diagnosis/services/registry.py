"""Model versions: registration, audited activation and rollback, evaluations."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from diagnosis import inference
from diagnosis.models import Evaluation, ModelActivation, ModelVersion, Prediction
from diagnosis.services.predictions import prediction_enqueue
from diagnosis.services.storage import atomic_files

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

    with atomic_files() as written, transaction.atomic():
        with open(path, "rb") as fh:
            stored = default_storage.save(f"models/{name}.pt", fh)
        written.append(stored)
        plots = {}
        # ml.train writes its LR finder plot next to the checkpoint; keep a copy.
        lr_plot = Path(meta.train_args.get("lr_find_plot") or "")
        if lr_plot.name and (Path(path).parent / lr_plot.name).is_file():
            with (Path(path).parent / lr_plot.name).open("rb") as fh:
                plots["lr_find"] = default_storage.save(f"models/plots/{name}-lr_find.png", fh)
            written.append(plots["lr_find"])
        version = ModelVersion.objects.create(
            name=name,
            architecture=meta.arch,
            file=stored,
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
        # Predictions that failed because of the previous model go round again.
        Prediction.objects.filter(status=Prediction.Status.FAILED, model_error=True).update(
            status=Prediction.Status.PENDING, model_error=False, error="", enqueued_at=None
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
    """Evaluate `version` with ml.evaluate on a labeled folder (Kaggle layout) or a CSV
    manifest, and keep its figures and plots with the version."""
    from ml.data import read_manifest
    from ml.evaluate import evaluate_checkpoint, scan_eval_folder
    from ml.plots import save_plots

    items = read_manifest(data) if data.suffix == ".csv" else scan_eval_folder(data)
    evaluation = evaluate_checkpoint(inference.model_path(version), items, source=data)
    metrics = evaluation.to_dict()
    with (
        tempfile.TemporaryDirectory() as tmp,
        atomic_files() as written,
        transaction.atomic(),
    ):
        row = Evaluation.objects.create(
            model_version=version,
            created_by=user,
            data_source=str(data),
            data_hash=metrics["data"]["manifest_hash"],
            metrics=metrics,
        )
        for png in save_plots(evaluation, tmp):
            with png.open("rb") as fh:
                written.append(default_storage.save(f"evaluations/{row.pk}/{png.name}", File(fh)))
        row.plots = {Path(name).stem: name for name in written}
        row.save(update_fields=["plots"])
    return row
