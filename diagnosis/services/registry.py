"""Model versions: registration, audited activation and rollback, evaluations."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from diagnosis import inference
from diagnosis.models import Evaluation, ModelActivation, ModelVersion, Prediction
from diagnosis.services.predictions import prediction_enqueue

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
