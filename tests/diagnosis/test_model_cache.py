"""A worker reads model files through Django's storage: from a local MEDIA_ROOT in place, and
from a storage without local paths (object storage) through a cache named by the file's
sha256, downloaded once and checked. Django's own InMemoryStorage stands for such a storage
here, its path() refused as S3Storage refuses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import InMemoryStorage, default_storage
from django.utils._os import safe_join

from diagnosis import model_loader
from diagnosis.roles import SYSTEM
from diagnosis.services import model_version_register
from tests.conftest import jpeg_bytes


class CountingStorage(InMemoryStorage):
    """InMemoryStorage without local paths (as django-storages' S3Storage has none), counting
    the files it opens for reading."""

    opened: list[str] = []

    def path(self, name):
        raise NotImplementedError("This backend doesn't support absolute paths.")

    def _relative_path(self, name):  # what InMemoryStorage itself resolves names with
        return os.path.relpath(safe_join(self.location, name), self.location)

    def _open(self, name, mode="rb"):
        if "r" in mode:
            CountingStorage.opened.append(name)
        return super()._open(name, mode)


@pytest.fixture
def no_paths(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "tests.diagnosis.test_model_cache.CountingStorage"},
    }
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    CountingStorage.opened = []
    yield settings.MODEL_CACHE_DIR
    model_loader.unload()


def test_a_local_media_root_is_read_in_place(db, checkpoint_path, settings):
    version = model_version_register(path=checkpoint_path, name="v1", user=SYSTEM)
    assert model_loader.model_path(version) == str(Path(settings.MEDIA_ROOT, version.file))
    assert not Path(settings.MODEL_CACHE_DIR).exists() or not any(
        Path(settings.MODEL_CACHE_DIR).iterdir()
    )


def test_without_local_paths_a_model_is_downloaded_once_and_predicts(db, no_paths, checkpoint_path):
    version = model_version_register(path=checkpoint_path, name="v1", activate=True, user=SYSTEM)
    with pytest.raises(NotImplementedError):
        default_storage.path(version.file)  # the storage has no local files
    predictor = model_loader.predictor_for(version)
    cached = no_paths / f"{version.sha256}.pt"
    assert cached.is_file() and CountingStorage.opened == [version.file]
    p = predictor.predict(jpeg_bytes("PNEUMONIA", seed=3)).probability
    assert 0.0 < p < 1.0
    model_loader.unload()  # a later load in the same worker: a cache hit, storage untouched
    model_loader.predictor_for(version)
    assert model_loader.model_path(version) == str(cached)
    assert CountingStorage.opened == [version.file]
    assert [f.name for f in no_paths.iterdir()] == [cached.name]  # no partial file left


def test_a_stored_file_that_is_not_the_registered_one_is_refused(db, no_paths, checkpoint_path):
    version = model_version_register(path=checkpoint_path, name="v1", user=SYSTEM)
    default_storage.delete(version.file)
    default_storage.save(version.file, ContentFile(b"not the checkpoint"))
    with pytest.raises(model_loader.ModelFileError, match="does not match its registered sha256"):
        model_loader.model_path(version)
    assert not no_paths.exists() or list(no_paths.iterdir()) == []  # nothing half-written kept
    default_storage.delete(version.file)
    with pytest.raises(model_loader.ModelFileError, match="is missing"):
        model_loader.model_path(version)


def test_a_damaged_cache_copy_is_downloaded_again(db, no_paths, checkpoint_path):
    version = model_version_register(path=checkpoint_path, name="v1", user=SYSTEM)
    cached = Path(model_loader.model_path(version))
    cached.write_bytes(b"bit rot")
    assert model_loader.model_path(version) == str(cached)
    assert len(CountingStorage.opened) == 2 and cached.stat().st_size > 1000
