"""Stored files where a process needs a local path, and what a storage outage looks like.

Every file the platform keeps lives in Django's default storage: a local MEDIA_ROOT, or an
S3 bucket shared by processes on different machines (README, "Scaling out"). Predictions
read bytes through the storage API and need no path. Training, evaluations, site audits and
cleaning hand `ml` local paths: they run inside `scratch_folder()`, and `local_path()` gives
them the storage's own path when it is a local disk, else a copy downloaded into that
folder, which is removed when the work ends, whether it succeeded or failed.
"""

from __future__ import annotations

import contextvars
import csv
import dataclasses
import functools
import io
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

# The scratch folder of the work running in this thread (or task), if any.
_scratch: contextvars.ContextVar[Path | None] = contextvars.ContextVar("scratch", default=None)


class StorageUnavailable(RuntimeError):
    """The object storage did not answer: nothing was written, try again later."""


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the storage server could not be reached or failed on its side (a
    passing outage worth retrying), rather than a missing or refused file."""
    if isinstance(exc, StorageUnavailable):
        return True
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:  # the local storage only
        return False
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500
    return False


def read_many(names: list[str], *, threads: int = 8, storage=None) -> list[bytes | Exception]:
    """The bytes of each stored file, in order, or the exception reading it raised. From S3
    each is one GET (django-storages' file object asks for the object's size first and runs
    a transfer manager: 7.9 ms per small image against 1.7 ms, bench/storage.py), `threads`
    at a time: a remote server's round trips overlap while a worker reads a whole batch."""
    storage = storage or default_storage
    bucket = getattr(storage, "bucket_name", None)
    # One client for every thread (boto3's clients are thread-safe; django-storages makes a
    # connection per thread, which costs more than the reads).
    client = storage.connection.meta.client if bucket is not None else None

    def read(name: str) -> bytes | Exception:
        try:
            if bucket is None:
                with storage.open(name, "rb") as fh:
                    return fh.read()
            key = f"{storage.location.strip('/')}/{name}".lstrip("/")
            answer = client.get_object(Bucket=bucket, Key=key)
            return answer["Body"].read()
        except Exception as exc:
            return exc

    if len(names) < 2 or bucket is None:
        return [read(name) for name in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(names)), thread_name_prefix="read") as pool:
        return list(pool.map(read, names))


@contextmanager
def scratch_folder(label: str) -> Iterator[Path]:
    """A private folder for one piece of work (`label` names it), removed when the block
    ends, however it ends. Work nested in another's shares the outer folder."""
    outer = _scratch.get()
    if outer is not None:
        yield outer
        return
    root = Path(settings.SCRATCH_DIR)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    token = _scratch.set(folder)
    try:
        yield folder
    finally:
        _scratch.reset(token)
        shutil.rmtree(folder, ignore_errors=True)


def with_scratch(label: str):
    """Run the decorated function inside scratch_folder(label)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with scratch_folder(label):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def scratch() -> Path:
    """The scratch folder of the work in progress (RuntimeError outside scratch_folder())."""
    folder = _scratch.get()
    if folder is None:
        raise RuntimeError("stored files are materialised only inside scratch_folder()")
    return folder


def local_path(name: str) -> Path:
    """A local path of the stored file `name`: the storage's own on a local disk, else a
    copy in the current scratch folder (downloaded once per folder)."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        pass
    target = scratch() / "stored" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        with default_storage.open(name, "rb") as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        partial.replace(target)
    return target


def keep(path: Path, name: str) -> str:
    """Store the local file `path` as `name` (a record of the work, such as the manifest a
    job trained on) and return the name it was stored under."""
    from django.core.files.base import ContentFile

    return default_storage.save(name, ContentFile(Path(path).read_bytes()))


def study_paths(study_ids: Iterable[int]) -> dict[int, Path]:
    """study id -> a local path of its image (local_path)."""
    from diagnosis.models import Study

    names = Study.objects.filter(pk__in=set(study_ids)).values_list("pk", "image")
    return {pk: local_path(name) for pk, name in names}


def stored_manifest(name: str, *, base_data: Path | None = None) -> Path:
    """A local CSV manifest of the stored manifest `name` whose images are local paths:
    reviewed studies ("study:<id>" sources) are read through the storage, base images
    ("base:<path>") under `base_data` when given, else where the manifest says. The paths a
    stored manifest holds are those of the machine that wrote it; its sources are not."""
    from ml.data import manifest_rows, write_manifest

    with default_storage.open(name, "rb") as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        items = manifest_rows(csv.DictReader(text), where=name)
    studies = study_paths(
        int(item.source.split(":", 1)[1]) for item in items if item.source.startswith("study:")
    )
    local = []
    for item in items:
        kind, _, key = item.source.partition(":")
        if kind == "study":
            if int(key) not in studies:
                raise FileNotFoundError(f"{name}: study {key} no longer exists")
            item = dataclasses.replace(item, path=studies[int(key)])
        elif kind == "base" and base_data is not None:
            item = dataclasses.replace(item, path=Path(base_data) / key)
        local.append(item)
    return write_manifest(scratch() / "manifests" / Path(name).name, local)
