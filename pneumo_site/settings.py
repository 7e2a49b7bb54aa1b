"""Settings for the pneumonia review platform.

Every setting comes from the environment and has a default that runs on a fresh checkout:
SQLite in ./var, a local Redis broker, DEBUG on. `.env.example` lists every variable; the
production ones are described in README.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pneumo_site.storages import s3_storage

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envfloat(name: str, default: str) -> float:
    value = os.getenv(name, default)
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A setting with a fixed set of values, checked when settings load: a typo stops the
    process at start with the allowed values, not a task hours later."""
    value = os.getenv(name, default).strip()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def envrate(name: str, default: str) -> str:
    """A DRF throttle rate, "<requests>/<s|m|h|d...>", checked here rather than on the first
    request it would fail (a 500)."""
    value = os.getenv(name, default).strip()
    if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name} must be a rate like 60/min or 5/s, got {value!r}")
    return value


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


# ---------------------------------------------------------------------------- core

DEBUG = envbool("DEBUG", "true")
SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # A fixed key is acceptable only for local development, where DEBUG is on.
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"

# The installation secret of the pseudonymous patient keys (diagnosis.pseudonyms): a keyed
# hash of each DICOM's PatientID groups a patient's images in every split, and cannot be
# reversed or matched across installations without this secret. Keep it as safe as
# SECRET_KEY, and never change it: the keys already stored would no longer match new ones.
PSEUDONYM_KEY = os.getenv("PSEUDONYM_KEY", "")
if not PSEUDONYM_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("PSEUDONYM_KEY must be set when DEBUG is off")
    PSEUDONYM_KEY = "dev-only-pseudonym-key-do-not-use-in-production"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "diagnosis",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "diagnosis.middleware.StorageOutageMiddleware",
]

ROOT_URLCONF = "pneumo_site.urls"
WSGI_APPLICATION = "pneumo_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "diagnosis.context_processors.platform",
            ],
        },
    },
]

# ---------------------------------------------------------------------------- database

VAR_DIR = Path(os.getenv("VAR_DIR", str(BASE_DIR / "var")))
# The SQLite file, the embedded broker and uploads default to this folder; SQLite cannot
# create the folder itself, so a fresh checkout would fail on its first `migrate`.
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DB_CONN_MAX_AGE", "0"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The end-to-end tests share the test database with a worker process, which an
    # in-memory SQLite database cannot do, so tests get a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    # SQLite raises "database is locked" at once unless told to wait for the other process;
    # and a transaction that reads before it writes (an upload) cannot wait for the lock it
    # upgrades to, so transactions take the write lock when they begin.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------- auth

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
# Sign-in throttling: after this many failures for one user name from one address within
# the window, that pair is refused until the window has passed.
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", "5")
LOGIN_FAILURE_WINDOW_SECONDS = envint("LOGIN_FAILURE_WINDOW_SECONDS", "900")
# Throttle counters live in this cache: per process by default; set CACHE_URL to a Redis
# URL (redis://host:6379/1) so that every web process shares them.
CACHE_URL = os.getenv("CACHE_URL", "locmem://")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL.startswith(("redis://", "rediss://"))
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
LOGIN_REDIRECT_URL = "study-list"
LOGOUT_REDIRECT_URL = "login"

# ---------------------------------------------------------------------------- i18n, static, media

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves static files from the app folders too, so the platform runs without a
# `collectstatic` step; the Docker image still collects them once at build time.
WHITENOISE_USE_FINDERS = True

# Uploaded studies and registered model files. They are never served from a public URL:
# views check the user's right to see a study before streaming its file.
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", str(VAR_DIR / "media")))
# Where a worker keeps the model files it downloaded from a storage without local paths
# (object storage), each named by its sha256: downloaded once per machine, not per task.
MODEL_CACHE_DIR = Path(os.getenv("MODEL_CACHE_DIR", str(VAR_DIR / "model-cache")))
MEDIA_URL = "/media-not-served/"
# Where every file the platform keeps goes (uploads, heatmaps, model files, manifests, plots):
# empty, MEDIA_ROOT on this machine; s3://BUCKET[/PREFIX], an S3 bucket that processes on
# several machines share (README, "Scaling out"), reached at AWS_S3_ENDPOINT_URL (empty:
# Amazon's) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Objects stay private: the pages
# stream them after checking the user's rights, never from a public or presigned URL.
STORAGE_URL = os.getenv("STORAGE_URL", "").strip()
# Work that needs local copies of stored files (training, evaluations, audits, cleaning)
# makes a folder here and removes it when done (diagnosis.files).
SCRATCH_DIR = Path(os.getenv("SCRATCH_DIR", str(VAR_DIR / "scratch")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if STORAGE_URL:
    # A storage that does not answer fails the request in seconds (an upload gets a 503
    # and writes nothing) rather than holding a web or worker process for minutes.
    STORAGES["default"] = s3_storage(
        STORAGE_URL,
        endpoint_url=os.getenv("AWS_S3_ENDPOINT_URL", "").strip(),
        access_key=os.getenv("AWS_ACCESS_KEY_ID", ""),
        secret_key=os.getenv("AWS_SECRET_ACCESS_KEY", ""),
        region=os.getenv("AWS_S3_REGION_NAME", "us-east-1"),
        timeout=envfloat("STORAGE_TIMEOUT_SECONDS", "5"),
    )

# ---------------------------------------------------------------------------- security

SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "false")
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "false")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "false")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
if envbool("BEHIND_TLS_PROXY", "false"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# ---------------------------------------------------------------------------- uploads

# Upper bounds on what one upload may be; larger files are refused before decoding.
UPLOAD_MAX_BYTES = envint("UPLOAD_MAX_BYTES", str(50 * 1024 * 1024))
UPLOAD_MAX_PIXELS = envint("UPLOAD_MAX_PIXELS", str(64 * 1024 * 1024))
UPLOAD_MAX_FILES = envint("UPLOAD_MAX_FILES", "100")
DATA_UPLOAD_MAX_NUMBER_FILES = UPLOAD_MAX_FILES
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# ---------------------------------------------------------------------------- review

# A study waiting longer than this for review goes to the top of the worklist, whatever
# order the radiologist chose, so that nothing starves.
WORKLIST_MAX_WAIT_SECONDS = envint("WORKLIST_MAX_WAIT_SECONDS", str(24 * 3600))
# A call whose probability lies within this of its threshold is shown as borderline
# (diagnosis.wording): read with extra care.
BORDERLINE_MARGIN = envfloat("BORDERLINE_MARGIN", "0.1")
if not 0.0 <= BORDERLINE_MARGIN < 0.5:
    raise ImproperlyConfigured(f"BORDERLINE_MARGIN must be in [0, 0.5), got {BORDERLINE_MARGIN}")
# Below this many reviewed cases, the agreement page says "too few cases" beside each rate.
AGREEMENT_MIN_CASES = envint("AGREEMENT_MIN_CASES", "30")

# ---------------------------------------------------------------------------- REST API

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "diagnosis.api.pagination.Pagination",
    "PAGE_SIZE": envint("API_PAGE_SIZE", "50"),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Per user (or per address when anonymous); uploads have a budget of their own.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "diagnosis.api.throttles.UploadRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": envrate("API_ANON_RATE", "60/min"),
        "user": envrate("API_USER_RATE", "1200/min"),
        "uploads": envrate("UPLOAD_RATE", "300/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Pneumonia review platform API",
    "DESCRIPTION": "Upload chest X-rays, read model predictions, record radiologist reviews.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI's files come from a pip package, not a CDN: the platform runs offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "LabelEnum": "diagnosis.models.Label",
        "UnusableReasonEnum": "diagnosis.models.Unusable",
        "SubtypeEnum": "diagnosis.models.Subtype",
        "PredictedSubtypeEnum": "diagnosis.models.PredictedSubtype",
    },
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# ---------------------------------------------------------------------------- Celery

CELERY_BROKER_URL = os.getenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# kombu's filesystem transport is the embedded broker for machines without Redis; its
# folders live under VAR_DIR unless the URL's options say otherwise.
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 3600}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "broker"
    (_queue_dir / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=str(_queue_dir),
        data_folder_out=str(_queue_dir),
        # Without this kombu keeps its fanout exchanges in ./control, wherever it runs.
        control_folder=str(_queue_dir / "control"),
    )
else:
    # Fail fast when Redis is down at upload time: the outbox sweeper enqueues later.
    CELERY_BROKER_TRANSPORT_OPTIONS.update(socket_connect_timeout=2, socket_timeout=5)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.getenv("CELERY_TASK_DEFAULT_QUEUE", "pneumo")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SOFT_TIME_LIMIT = envint("CELERY_TASK_SOFT_TIME_LIMIT", "120")
CELERY_TASK_TIME_LIMIT = envint("CELERY_TASK_TIME_LIMIT", "180")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Any prediction still pending after this many seconds is enqueued again by the sweeper,
# and a running one whose worker has not finished within the lease is taken back.
PREDICTION_REQUEUE_AFTER = envint("PREDICTION_REQUEUE_AFTER", "60")
PREDICTION_LEASE_SECONDS = envint("PREDICTION_LEASE_SECONDS", str(CELERY_TASK_TIME_LIMIT + 30))
CELERY_BEAT_SCHEDULE = {
    "sweep-predictions": {
        "task": "diagnosis.tasks.sweep_predictions",
        "schedule": envfloat("SWEEP_INTERVAL_SECONDS", "30"),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# ---------------------------------------------------------------------------- retraining

# Retraining runs on its own queue, so that a long training never delays predictions; a
# worker started with `-Q <this queue> --concurrency 1` takes it (scripts/up.sh starts one).
TRAINING_QUEUE = os.getenv("TRAINING_QUEUE", f"{CELERY_TASK_DEFAULT_QUEUE}-training")
CELERY_TASK_ROUTES = {"diagnosis.tasks.retrain": {"queue": TRAINING_QUEUE}}
# The base data set folder (Kaggle layout) that the training pool starts from; empty: the
# pool is the reviewed studies alone.
TRAINING_BASE_DATA = os.getenv("TRAINING_BASE_DATA", "")
# A training pauses between batches while a prediction waits or runs (diagnosis.yielding).
TRAINING_YIELDS = envbool("TRAINING_YIELDS", "true")
# A training task may run this long; a running job whose log has not moved for the lease
# is taken back by the sweeper (its worker died), at most TRAINING_MAX_ATTEMPTS times.
TRAINING_TIME_LIMIT = envint("TRAINING_TIME_LIMIT", str(6 * 3600))
TRAINING_LEASE_SECONDS = envint("TRAINING_LEASE_SECONDS", "1800")
TRAINING_MAX_ATTEMPTS = envint("TRAINING_MAX_ATTEMPTS", "3")
# The promotion gate: a candidate is promoted only if, on the frozen validation split, its
# gate metric is at least the active model's minus the margin, and its sensitivity at its
# own threshold is at least the floor.
# (the names are diagnosis.services.gate.GATE_METRICS; a test keeps the two lists equal)
RETRAIN_GATE_METRIC = envchoice(
    "RETRAIN_GATE_METRIC", "auc", ("auc", "sensitivity", "specificity", "accuracy")
)
RETRAIN_GATE_MARGIN = envfloat("RETRAIN_GATE_MARGIN", "0.005")
RETRAIN_MIN_SENSITIVITY = envfloat("RETRAIN_MIN_SENSITIVITY", "0.9")

# Micro-batching: a prediction task claims its own prediction plus up to this many minus one
# other pending ones (oldest first) and runs them as one batch. It never waits for a batch
# to fill: an isolated upload runs alone at once; under load, batches form by themselves.
PREDICTION_BATCH_SIZE = envint("PREDICTION_BATCH_SIZE", "16")
# Once its batch is recorded, a task claims the next batch of the oldest pending predictions,
# in the same transaction, for up to this many seconds (well under the soft time limit): a
# backlog drains without a broker round trip per batch. 0: one batch per task.
PREDICTION_DRAIN_SECONDS = envfloat("PREDICTION_DRAIN_SECONDS", "30")
# The size of those next batches (0: PREDICTION_BATCH_SIZE; inline heatmaps keep that): the
# per-batch claim and record (~20 ms) spread over more images, for more memory (README,
# "Micro-batching").
PREDICTION_DRAIN_BATCH_SIZE = envint("PREDICTION_DRAIN_BATCH_SIZE", "32")
# While a drain's batch runs, a helper thread (a second database connection per worker
# process) does the next steps: claims: records the batch before it and claims the next, so
# the forward pass no longer waits for the database; reads: also reads the next batch's
# images (for object storage far away: with the S3 server on the same cores it was slower,
# README "Micro-batching"); off: every step in turn.
PREDICTION_DRAIN_AHEAD = envchoice("PREDICTION_DRAIN_AHEAD", "claims", ("off", "claims", "reads"))

# Each prediction also gets a Grad-CAM overlay of what drove the call (a forward and a
# backward pass more per image, torch runtimes only). deferred: the result is recorded first
# and the worker draws the heatmaps when no prediction is waiting, so a burst drains at the
# model's pace and the heatmap follows; inline: drawn in the same batch, before the result is
# recorded; off: none. true/false are taken for deferred/off.
_heatmaps = envchoice(
    "PREDICTION_HEATMAPS", "deferred", ("deferred", "inline", "off", "true", "false")
)
PREDICTION_HEATMAPS = {"true": "deferred", "false": "off"}.get(_heatmaps, _heatmaps)
# Deferred heatmaps are drawn once no prediction has waited, run or finished for this long:
# uploads that come one after another are not held up by the previous one's heatmap.
PREDICTION_HEATMAP_QUIET_SECONDS = envfloat("PREDICTION_HEATMAP_QUIET_SECONDS", "1.0")

# Which runtime the worker predicts with: torch (PyTorch eager fp32), torch-bf16, onnx-fp32 or
# onnx-int8. The non-torch ones need an artifact made by `manage.py optimize_model`, accepted
# by its accuracy gate; without one the worker falls back to torch and says so in its log.
# (the names are ml.runtimes.RUNTIMES; a test keeps the two lists equal)
INFERENCE_RUNTIME = envchoice(
    "INFERENCE_RUNTIME", "torch", ("torch", "torch-bf16", "onnx-fp32", "onnx-int8", "auto")
)
# auto: the torch runtimes use a CUDA GPU when there is one (half-precision autocast); cpu
# never does; cuda asks for it and falls back to the CPU, with a warning, when none is there.
INFERENCE_DEVICE = envchoice("INFERENCE_DEVICE", "auto", ("auto", "cpu", "cuda"))

# Intra-op threads of the inference process. Worker concurrency x threads should not
# exceed the cores, or the processes fight over them.
INFERENCE_THREADS = envint("INFERENCE_THREADS", "0")  # 0: torch's default (all cores)

# ---------------------------------------------------------------------------- PACS (Orthanc)

# The PACS the platform is a DICOM node of (README, "PACS"): empty, none. Studies stored in
# that Orthanc become platform studies of ORTHANC_SITE once stable (`manage.py pacs_listen`),
# and every result goes back to it as a structured report and a secondary capture, then to
# each of ORTHANC_FORWARD_TO (modalities Orthanc knows by name) when given.
ORTHANC_URL = os.getenv("ORTHANC_URL", "").strip()
ORTHANC_USERNAME = os.getenv("ORTHANC_USERNAME", "")
ORTHANC_PASSWORD = os.getenv("ORTHANC_PASSWORD", "")
ORTHANC_SITE = os.getenv("ORTHANC_SITE", "").strip()  # a site's name; empty: the default site
ORTHANC_FORWARD_TO = envlist("ORTHANC_FORWARD_TO", "")
PACS_POLL_SECONDS = envfloat("PACS_POLL_SECONDS", "0.2")  # how often the feed and outbox are read
PACS_RETRY_MAX_SECONDS = envint("PACS_RETRY_MAX_SECONDS", "300")  # backoff cap of the outbox
PACS_USER = os.getenv("PACS_USER", "pacs")  # the account PACS studies are recorded as uploaded by
if ORTHANC_URL:
    if urlsplit(ORTHANC_URL).scheme not in ("http", "https") or not urlsplit(ORTHANC_URL).netloc:
        raise ImproperlyConfigured(f"ORTHANC_URL must be an http(s) URL, got {ORTHANC_URL!r}")
    if not ORTHANC_USERNAME or not ORTHANC_PASSWORD:
        raise ImproperlyConfigured(
            "ORTHANC_USERNAME and ORTHANC_PASSWORD must be set with ORTHANC_URL: the platform "
            "talks only to an Orthanc with authentication on."
        )
if PACS_POLL_SECONDS <= 0:
    raise ImproperlyConfigured(f"PACS_POLL_SECONDS must be positive, got {PACS_POLL_SECONDS}")

# ---------------------------------------------------------------------------- logging

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # highdicom logs the UIDs of the images it copies from at INFO: not in our logs.
    "loggers": {"highdicom": {"level": "WARNING"}},
    "root": {
        "handlers": ["console"],
        "level": envchoice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    },
}
