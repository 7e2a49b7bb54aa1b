"""The bridge from model versions in the database to `ml` predictors in a worker process.

A worker keeps one loaded model: the first task after fork loads it, later tasks reuse it,
and a task that finds another version active loads that one instead (no restart needed).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from django.core.files.storage import default_storage

if TYPE_CHECKING:
    from diagnosis.models import ModelVersion
    from ml.checkpoint import CheckpointMeta
    from ml.inference import Predictor

logger = logging.getLogger(__name__)

# ((model version id, file sha256, runtime), predictor) of this process; never shared across a fork
# because it is filled lazily by the first task, which runs in the child. The sha256 is part
# of the key because SQLite can hand a deleted row's id to a new row.
_loaded: tuple[tuple[int, str, str], Predictor] | None = None


class ModelFileError(RuntimeError):
    """The registered model file is missing or is not the file that was registered."""


def validate_checkpoint(path: Path) -> CheckpointMeta:
    """Load the checkpoint fully (the same code path as the worker) and return its metadata."""
    from ml.checkpoint import load_checkpoint

    _, meta = load_checkpoint(path)
    return meta


def model_path(version: ModelVersion) -> str:
    return default_storage.path(version.file)


def _verified_path(version: ModelVersion) -> str:
    return _file_checked(version.file, version.sha256, f"model file of {version.name}")


def _file_checked(name: str, sha256: str, what: str) -> str:
    path = default_storage.path(name)
    if not Path(path).is_file():
        raise ModelFileError(f"{what} is missing: {name}")
    with open(path, "rb") as fh:
        if hashlib.file_digest(fh, "sha256").hexdigest() != sha256:
            raise ModelFileError(f"{what} does not match its registered sha256")
    return path


def _build(version: ModelVersion, runtime: str):
    from django.conf import settings

    if runtime in ("torch", "torch-bf16"):
        from ml.inference import Predictor

        device = torch_device()
        # On a GPU the forward pass runs under half-precision autocast: bf16 where the card
        # has it, else fp16 (the heatmap's Grad-CAM pass stays in fp32).
        precision = "bf16" if runtime == "torch-bf16" else "fp32"
        if device == "cuda":
            precision = "bf16" if _cuda_bf16() else "fp16"
        return Predictor.from_checkpoint(
            _verified_path(version), device=device, precision=precision
        )
    from ml.core import Preprocessing
    from ml.runtimes import OnnxPredictor

    artifact = version.runtimes.get(runtime=runtime)
    path = _file_checked(artifact.file, artifact.sha256, f"{runtime} artifact of {version.name}")
    return OnnxPredictor(
        path, Preprocessing.from_dict(version.preprocessing), version.threshold,
        version.class_names, version.positive_class, threads=settings.INFERENCE_THREADS,
        subtype=version.subtype_question,
    )  # fmt: skip


def torch_device() -> str:
    """cuda when INFERENCE_DEVICE is auto (the default) or cuda and a GPU is there, else cpu.
    Run a GPU worker with --concurrency 1: one process owns the card."""
    from django.conf import settings

    if settings.INFERENCE_DEVICE == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if settings.INFERENCE_DEVICE == "cuda":
        logger.warning("INFERENCE_DEVICE=cuda but no GPU is available; using the CPU")
    return "cpu"


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def runtime_for(version: ModelVersion) -> str:
    """INFERENCE_RUNTIME if this version has an accepted artifact for it, else torch."""
    from django.conf import settings

    wanted = settings.INFERENCE_RUNTIME
    if wanted == "torch" or version.runtimes.filter(runtime=wanted).exists():
        return wanted
    logger.warning(
        "%s has no accepted %s artifact (manage.py optimize_model); using torch", version, wanted
    )
    return "torch"


def predictor_for(version: ModelVersion):
    """The loaded predictor of `version` for this process's runtime; `.runtime` names it."""
    global _loaded
    runtime = runtime_for(version)
    key = (version.pk, version.sha256, runtime)
    if _loaded is not None and _loaded[0] == key:
        return _loaded[1]
    _loaded = None  # Free the previous model before loading the next.
    predictor = _build(version, runtime)
    predictor.runtime = runtime
    _loaded = (key, predictor)
    logger.info("Loaded model %s (%s) in process %s", version.name, runtime, os.getpid())
    return predictor


def unload() -> None:
    global _loaded
    _loaded = None
