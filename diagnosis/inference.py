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

# ((model version id, file sha256), predictor) of this process; never shared across a fork
# because it is filled lazily by the first task, which runs in the child. The sha256 is part
# of the key because SQLite can hand a deleted row's id to a new row.
_loaded: tuple[tuple[int, str], Predictor] | None = None


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
    path = model_path(version)
    if not Path(path).is_file():
        raise ModelFileError(f"model file of {version.name} is missing: {version.file}")
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != version.sha256:
        raise ModelFileError(f"model file of {version.name} does not match its registered sha256")
    return path


def predictor_for(version: ModelVersion) -> Predictor:
    global _loaded
    key = (version.pk, version.sha256)
    if _loaded is not None and _loaded[0] == key:
        return _loaded[1]
    from ml.inference import Predictor

    _loaded = None  # Free the previous model before loading the next.
    predictor = Predictor.from_checkpoint(_verified_path(version))
    _loaded = (key, predictor)
    logger.info("Loaded model %s in process %s", version.name, os.getpid())
    return predictor


def unload() -> None:
    global _loaded
    _loaded = None
