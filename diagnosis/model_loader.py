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
    """A local path of the version's checkpoint, checked (_file_checked): what ml reads."""
    return _verified_path(version)


def _verified_path(version: ModelVersion) -> str:
    return _file_checked(version.file, version.sha256, f"model file of {version.name}")


def artifact_path(artifact) -> str:
    """A local path of a runtime artifact's file (a RuntimeArtifact with one), checked like
    the checkpoint: in place from a local MEDIA_ROOT, else through the model cache."""
    what = f"{artifact.runtime} artifact of {artifact.version.name}"
    return _file_checked(artifact.file, artifact.sha256, what)


def _file_checked(name: str, sha256: str, what: str) -> str:
    """A local path of the stored file `name`, checked to be the content `sha256`: the
    storage's own path when it has one (a local MEDIA_ROOT), else a copy in MODEL_CACHE_DIR
    named by the hash, downloaded once per machine (object storage: no path). ModelFileError
    when the file is missing or is not the file that was registered."""
    try:
        path = default_storage.path(name)
    except NotImplementedError:
        return _cached(name, sha256, what)
    if not Path(path).is_file():
        raise ModelFileError(f"{what} is missing: {name}")
    if _sha256_of(path) != sha256:
        raise ModelFileError(f"{what} does not match its registered sha256")
    return path


def _sha256_of(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _cached(name: str, sha256: str, what: str) -> str:
    from django.conf import settings

    cache = Path(settings.MODEL_CACHE_DIR)
    target = cache / f"{sha256}{Path(name).suffix}"
    if target.is_file() and _sha256_of(target) == sha256:
        return str(target)  # a hit: nothing read from storage
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{sha256}.{os.getpid()}.part"
    digest = hashlib.sha256()
    try:
        with default_storage.open(name, "rb") as source, partial.open("wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelFileError(f"{what} does not match its registered sha256")
        os.replace(partial, target)  # whole or not at all: another process sees either
    except (FileNotFoundError, OSError) as exc:
        raise ModelFileError(f"{what} is missing: {name} ({exc})") from exc
    finally:
        partial.unlink(missing_ok=True)
    logger.info("Downloaded %s (%s) into the model cache %s", what, name, target)
    return str(target)


def build_predictor(version: ModelVersion, runtime: str):
    """A new predictor of `version` on `runtime` (its file checked against its sha256)."""
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

    path = artifact_path(version.runtimes.get(runtime=runtime))
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


HEATMAP_RUNTIMES = ("torch", "torch-bf16")  # Grad-CAM needs gradients: torch only
AUTO_BATCH = 16  # images per timed batch, the worker's PREDICTION_BATCH_SIZE default
# (version id, sha256, heatmaps wanted) -> the runtime auto chose in this process.
_auto_choice: dict[tuple[int, str, bool], str] = {}


def accepted_runtimes(version: ModelVersion) -> list[str]:
    """torch, and every runtime with an artifact accepted for `version` (optimize_model)."""
    return ["torch", *sorted(version.runtimes.values_list("runtime", flat=True))]


def batch_rate(predictor, size: int, *, batches: int = 3) -> float:
    """Images per second of predict_batch() on AUTO_BATCH synthetic grey images at the
    model's input size (decode included, as in the worker), the best of `batches` after
    one warm-up batch."""
    import io
    import time

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(AUTO_BATCH):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    predictor.predict_batch(images)  # warm-up: allocations, oneDNN / ORT kernel choice
    best = float("inf")
    for _ in range(batches):
        start = time.perf_counter()
        predictor.predict_batch(images)
        best = min(best, time.perf_counter() - start)
    return AUTO_BATCH / best


def auto_runtime(version: ModelVersion) -> str:
    """INFERENCE_RUNTIME=auto: time every accepted runtime of `version` on this machine
    (once per process and version, a few seconds, logged) and take the fastest among those
    that keep what PREDICTION_HEATMAPS asks for: with heatmaps on, the torch runtimes only
    (ONNX has no gradients); with heatmaps off, any."""
    from django.conf import settings

    heatmaps = settings.PREDICTION_HEATMAPS != "off"
    key = (version.pk, version.sha256, heatmaps)
    if key in _auto_choice:
        return _auto_choice[key]
    rates: dict[str, float] = {}
    for runtime in accepted_runtimes(version):
        try:
            predictor = build_predictor(version, runtime)
            size = int(version.preprocessing.get("input_size", 224))
            rates[runtime] = batch_rate(predictor, size)
        except Exception:  # an artifact that no longer loads here: not a candidate
            logger.exception("auto: %s of %s could not be timed", runtime, version.name)
        finally:
            predictor = None
    allowed = {r: v for r, v in rates.items() if not heatmaps or r in HEATMAP_RUNTIMES}
    chosen = max(allowed, key=allowed.get) if allowed else "torch"
    table = ", ".join(f"{r} {v:.1f} img/s" for r, v in sorted(rates.items(), key=lambda x: -x[1]))
    fastest = max(rates, key=rates.get) if rates else chosen
    why = "" if fastest == chosen else f" ({fastest} draws no heatmaps)"
    logger.info(
        "INFERENCE_RUNTIME=auto for %s on this machine, batch %d: %s -> %s%s",
        version.name, AUTO_BATCH, table or "nothing timed", chosen, why,
    )  # fmt: skip
    _auto_choice[key] = chosen
    return chosen


def runtime_for(version: ModelVersion) -> str:
    """INFERENCE_RUNTIME if this version has an accepted artifact for it, else torch; auto:
    the fastest accepted one on this machine (auto_runtime)."""
    from django.conf import settings

    wanted = settings.INFERENCE_RUNTIME
    if wanted == "auto":
        return auto_runtime(version)
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
    predictor = build_predictor(version, runtime)
    predictor.runtime = runtime
    _loaded = (key, predictor)
    logger.info("Loaded model %s (%s) in process %s", version.name, runtime, os.getpid())
    return predictor


def unload() -> None:
    global _loaded
    _loaded = None
    _auto_choice.clear()
