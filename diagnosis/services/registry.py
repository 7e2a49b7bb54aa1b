"""Model versions: registration, audited activation and rollback, evaluations."""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from diagnosis import files, model_loader, roles
from diagnosis.models import INTENDED_USE, Evaluation, ModelActivation, ModelVersion, Prediction
from diagnosis.services.predictions import prediction_enqueue
from diagnosis.services.storage import atomic_files

# ---------------------------------------------------------------------------- model versions


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_version_register(
    *,
    path: Path,
    name: str = "",
    activate: bool = False,
    user=None,
    note: str = "",
    demo: bool = False,
    intended_use: str = "",
) -> ModelVersion:
    """Record a checkpoint made by the `ml` package as a ModelVersion; with `activate`, make
    it active too (an admin, or roles.SYSTEM).

    The checkpoint describes itself (architecture, classes, preprocessing, threshold,
    metrics); it is loaded once here so that a broken file is refused now rather than
    in the worker. The file is copied under MEDIA_ROOT, so the registry owns its copy.
    """
    if activate:
        roles.require(user, roles.can_promote, "Only admins may activate a model version.")
    meta = model_loader.validate_checkpoint(path)
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
            subtype=None if meta.subtype is None else meta.subtype.to_dict(),
            metrics=meta.metrics,
            train_args=meta.train_args,
            data_hash=meta.data_hash or "",
            registered_by=roles.recorded_user(user),
            note=note.strip(),
            is_demo=demo,
            intended_use=intended_use.strip() or INTENDED_USE,
        )
        if activate:
            model_version_activate(version=version, user=user)
    return version


def model_version_activate(
    *, version: ModelVersion, user=None, reason: str = "", action: str = "promote"
) -> ModelVersion:
    """Make `version` the one the workers use, record who did it and why, and send every
    waiting prediction to it. Workers load it on their next task, without a restart. Admins
    only (or roles.SYSTEM)."""
    roles.require(user, roles.can_promote, "Only admins may promote a model version.")
    with transaction.atomic():
        previous = ModelVersion.objects.select_for_update().filter(is_active=True).first()
        ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.activated_at = timezone.now()
        version.activated_by = roles.recorded_user(user)
        version.save(update_fields=["is_active", "activated_at", "activated_by"])
        ModelActivation.objects.create(
            version=version,
            previous=previous,
            action=action,
            user=roles.recorded_user(user),
            reason=roles.recorded_reason(user, reason),
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


RECORD = "_record"  # train_args keys that name a manifest kept in the storage


def model_version_records(version: ModelVersion, manifests: dict[str, Path], folder: str) -> None:
    """Keep the manifests a version was trained and tuned on in the storage under `folder`
    (their sources name each image wherever it is stored) and note each stored name in its
    train_args as KEY_record; the local paths its checkpoint recorded were in a scratch
    folder. Discarding the version deletes them."""
    with atomic_files() as written, transaction.atomic():
        for key, path in manifests.items():
            written.append(files.keep(path, f"{folder}/{key}.csv"))
            version.train_args = version.train_args | {f"{key}{RECORD}": written[-1]}
        version.save(update_fields=["train_args"])


def model_version_discard(version: ModelVersion) -> None:
    """Delete a candidate that the workflow which registered it could not finish (a retrain
    whose evaluation or gate failed, an adaptation whose audit could not be stored): its rows
    (evaluations, site thresholds and runtime artifacts go with it) and its files, so no
    half-made version can be promoted. A version that was ever active is never discarded."""
    if version.is_active or ModelActivation.objects.filter(version=version).exists():
        raise ValueError(f"model version {version.name} has been active; it is kept")
    names = [version.file, *version.plots.values()]
    for evaluation in version.evaluations.all():
        names += list(evaluation.plots.values())
    names += [a.file for a in version.runtimes.all() if a.file]
    names += [v for k, v in version.train_args.items() if k.endswith(RECORD) and v]
    version.delete()
    for name in names:
        default_storage.delete(name)


def model_version_rollback(*, user=None, reason: str = "") -> ModelVersion:
    """Re-activate the version that was active before the latest activation."""
    roles.require(user, roles.can_promote, "Only admins may roll back the model.")
    latest = ModelActivation.objects.first()
    if latest is None or latest.previous is None:
        raise ValueError("There is no earlier active model version to roll back to.")
    return model_version_activate(
        version=latest.previous, user=user, reason=reason, action=ModelActivation.Action.ROLLBACK
    )


def model_train(*, config, name: str = "", activate: bool = False, user=None):
    """`manage.py train`'s workflow: ml.train with `config` (an ml.train.TrainConfig), the
    checkpoint registered (and activated: admins or roles.SYSTEM, refused before training),
    then evaluated on the validation and held-out test splits ml.train wrote beside it.
    Returns (version, {split: evaluation}). ValueError when the pretrained weights asked for
    are not on this machine."""
    from ml.models import PretrainedWeightsUnavailable
    from ml.train import main

    if activate:
        roles.require(user, roles.can_promote, "Only admins may activate a model version.")
    try:
        checkpoint = Path(main(config))
    except PretrainedWeightsUnavailable as exc:
        raise ValueError(str(exc)) from None
    version = model_version_register(path=checkpoint, name=name, activate=activate, user=user)
    evaluations = {}
    for split in ("val", "test"):
        manifest = checkpoint.with_suffix(f".{split}.csv")
        if manifest.is_file():
            evaluations[split] = evaluation_create(
                version=version, data=manifest, user=roles.recorded_user(user)
            )
    return version, evaluations


# ---------------------------------------------------------------------------- evaluations


@files.with_scratch("evaluation")
def evaluation_create(
    *, version: ModelVersion, data: Path, user=None, source: str = ""
) -> Evaluation:
    """Evaluate `version` with ml.evaluate on a labeled folder (Kaggle layout) or a CSV
    manifest, and keep its figures and plots with the version. `source`: what the row records
    as its data when `data` is a scratch copy (the stored manifest it came from)."""
    from ml.evaluate import evaluate_checkpoint
    from ml.plots import save_plots

    items = _labeled_items(data)
    evaluation = evaluate_checkpoint(model_loader.model_path(version), items, source=data)
    metrics = evaluation.to_dict()
    # What ml read were local copies (the model cache, a scratch manifest): record the names
    # every process can find instead.
    metrics["model"]["checkpoint"] = version.file
    metrics["data"]["source"] = source or str(data)
    with (
        tempfile.TemporaryDirectory() as tmp,
        atomic_files() as written,
        transaction.atomic(),
    ):
        row = Evaluation.objects.create(
            model_version=version,
            created_by=user,
            data_source=metrics["data"]["source"],
            data_hash=metrics["data"]["manifest_hash"],
            metrics=metrics,
        )
        for png in save_plots(evaluation, tmp):
            with png.open("rb") as fh:
                # The storage may rename the file (a name already taken); the plot keeps its
                # own name as the key either way.
                stored = default_storage.save(f"evaluations/{row.pk}/{png.name}", File(fh))
            written.append(stored)
            row.plots[png.stem] = stored
        row.save(update_fields=["plots"])
    return row


# ---------------------------------------------------------------------------- runtimes


class RuntimeRejected(ValueError):
    """The optimized artifact failed the accuracy gate; `comparison` says by how much."""

    def __init__(self, comparison: dict) -> None:
        super().__init__(comparison["reason"])
        self.comparison = comparison


def _validation_items(version: ModelVersion, data: Path | None) -> list:
    from diagnosis import selectors

    if data is None:
        split = selectors.validation_split_current()
        if split is not None:
            data = files.stored_manifest(split.manifest)
        elif version.train_args.get("val_manifest"):
            data = Path(version.train_args["val_manifest"])
        else:
            raise ValueError("no validation data: pass a manifest or folder")
    return _labeled_items(data)


def _labeled_items(data: Path) -> list:
    """The images of a CSV manifest or of a labeled folder (Kaggle layout)."""
    from ml.data import read_manifest
    from ml.evaluate import scan_eval_folder

    return read_manifest(data) if data.suffix == ".csv" else scan_eval_folder(data)


def _predictions(predictor, paths: list, batch: int = 16) -> list:
    predictions = []
    for i in range(0, len(paths), batch):
        predictions += predictor.predict_batch(paths[i : i + batch])
    return predictions


def _subtype_scores(version: ModelVersion, items: list, reference: list, candidate: list):
    """Both runtimes' P(bacterial | pneumonia) on the pneumonia images of known subtype, for
    ml.runtimes.accuracy_gate; None for a version without the subtype question."""
    from ml.data import subtype_of
    from ml.runtimes import SubtypeScores

    question = version.subtype_question
    if question is None:
        return None
    known = [i for i, item in enumerate(items) if subtype_of(item)]
    return SubtypeScores(
        [int(subtype_of(items[i]) == "bacterial") for i in known],
        [reference[i].p_bacterial for i in known],
        [candidate[i].p_bacterial for i in known],
        question.threshold,
    )


@files.with_scratch("runtime")
def runtime_artifact_create(
    *,
    version: ModelVersion,
    runtime: str,
    data: Path | None = None,
    calibration: list | None = None,
    user=None,
    build=None,
):
    """Build `runtime`'s artifact from the version's checkpoint, compare it with fp32 on the
    validation images (the frozen split, else the version's own), and keep it only if
    ml.runtimes.accuracy_gate accepts it; otherwise raise RuntimeRejected and keep nothing.
    Calibration images (int8) default to 128 of the training pool taken at random (seeded),
    never validation images."""
    from diagnosis.models import RuntimeArtifact
    from ml.core import Preprocessing
    from ml.inference import Predictor
    from ml.runtimes import OnnxPredictor, accuracy_gate, build_artifact

    build = build or build_artifact
    items = _validation_items(version, data)
    paths = [item.path for item in items]
    y_true = [int(item.label == version.positive_class) for item in items]
    checkpoint = model_loader.model_path(version)
    reference = _predictions(Predictor.from_checkpoint(checkpoint), paths)
    if calibration is None and runtime == "onnx-int8":
        from diagnosis.services.cleaning import training_pool

        base = settings.TRAINING_BASE_DATA
        pool = training_pool(base_data=Path(base) if base else None)
        held = {str(p) for p in paths}
        candidates = [item.path for item in pool if str(item.path) not in held]
        calibration = random.Random(0).sample(candidates, min(128, len(candidates)))
    with tempfile.TemporaryDirectory() as tmp:
        out = build(
            checkpoint, runtime, Path(tmp) / f"{runtime}.onnx", calibration=calibration or []
        )
        if out is None:  # torch-bf16: the checkpoint itself, under autocast
            candidate = Predictor.from_checkpoint(checkpoint, precision="bf16")
        else:
            candidate = OnnxPredictor(
                out, Preprocessing.from_dict(version.preprocessing), version.threshold,
                version.class_names, version.positive_class,
                subtype=version.subtype_question,
            )  # fmt: skip
        try:
            answers = _predictions(candidate, paths)
        except ValueError as exc:  # outputs that do not fit the version's questions
            raise RuntimeRejected(
                {"runtime": runtime, "accepted": False, "reason": f"the artifact: {exc}"}
            ) from exc
        comparison = accuracy_gate(
            y_true, [p.probability for p in reference], [p.probability for p in answers],
            version.threshold, subtype=_subtype_scores(version, items, reference, answers),
        )  # fmt: skip
        comparison |= {"runtime": runtime, "n_calibration": len(calibration or [])}
        if not comparison["accepted"]:
            raise RuntimeRejected(comparison)
        with atomic_files() as written, transaction.atomic():
            RuntimeArtifact.objects.filter(version=version, runtime=runtime).delete()
            name, sha256 = "", ""
            if out is not None:
                with open(out, "rb") as fh:
                    name = default_storage.save(
                        f"models/runtimes/{version.name}.{runtime}.onnx", fh
                    )
                written.append(name)
                sha256 = _file_sha256(out)
            return RuntimeArtifact.objects.create(
                version=version, runtime=runtime, file=name, sha256=sha256,
                comparison=comparison, created_by=user,
            )  # fmt: skip
