"""Every choice-valued setting is checked when settings load: a bad value stops the process
at start with ImproperlyConfigured naming the allowed values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)

ROOT = Path(__file__).resolve().parents[1]


def load_settings(**env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh process (they are read once per process)."""
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.LOGGING['root']['level'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "pneumo_site.settings", **env}, timeout=120,
    )  # fmt: skip


def test_the_defaults_load():
    result = load_settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "INFO"


def _allowed(stderr: str) -> list[str]:
    line = stderr.strip().splitlines()[-1]  # django.core.exceptions.ImproperlyConfigured: ...
    return line.split("must be one of ", 1)[1].split(", got ")[0].split(", ")


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("INFERENCE_RUNTIME", ("ml.runtimes.RUNTIMES", ["auto"])),  # auto: the fastest of them
        ("RETRAIN_GATE_METRIC", "diagnosis.services.gate.GATE_METRICS"),
        ("INFERENCE_DEVICE", ["auto", "cpu", "cuda"]),
        ("PREDICTION_HEATMAPS", ["deferred", "inline", "off", "true", "false"]),
        ("LOG_LEVEL", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    ],
)
def test_a_bad_choice_stops_the_load_naming_the_allowed_values(name, allowed):
    result = load_settings(**{name: "bogus"})
    assert result.returncode != 0
    assert f"{name} must be one of" in result.stderr and "got 'bogus'" in result.stderr
    extra = []
    if isinstance(allowed, tuple):
        allowed, extra = allowed
    if isinstance(allowed, str):  # the settings' list is the code's list
        module, attribute = allowed.rsplit(".", 1)
        allowed = list(getattr(__import__(module, fromlist=[attribute]), attribute)) + extra
    assert _allowed(result.stderr) == allowed


@pytest.mark.parametrize("name", ["API_ANON_RATE", "API_USER_RATE", "UPLOAD_RATE"])
def test_a_bad_throttle_rate_stops_the_load(name):
    result = load_settings(**{name: "lots"})
    assert result.returncode != 0 and f"{name} must be a rate like 60/min" in result.stderr
    assert load_settings(**{name: "5/s"}).returncode == 0


def test_production_needs_the_pseudonym_key_like_the_secret_key():
    production = {"DEBUG": "false", "SECRET_KEY": "s" * 50, "PSEUDONYM_KEY": ""}
    result = load_settings(**production)
    assert result.returncode != 0 and "PSEUDONYM_KEY must be set" in result.stderr
    assert load_settings(**production | {"PSEUDONYM_KEY": "p" * 50}).returncode == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORTHANC_URL": "127.0.0.1:8042"}, "ORTHANC_URL must be an http(s) URL"),
        ({"ORTHANC_URL": "http://127.0.0.1:8042"}, "ORTHANC_USERNAME and ORTHANC_PASSWORD must"),
        ({"ORTHANC_URL": "http://h:1", "ORTHANC_USERNAME": "u"}, "ORTHANC_PASSWORD must be set"),
        ({"PACS_POLL_SECONDS": "0"}, "PACS_POLL_SECONDS must be positive"),
    ],
)
def test_a_pacs_setting_that_cannot_work_stops_the_load(env, message):
    result = load_settings(**env)
    assert result.returncode != 0 and message in result.stderr
    fixed = {"ORTHANC_URL": "http://127.0.0.1:8042", "ORTHANC_USERNAME": "u",
             "ORTHANC_PASSWORD": "p"}  # fmt: skip
    assert load_settings(**fixed).returncode == 0
