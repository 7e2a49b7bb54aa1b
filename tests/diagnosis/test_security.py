"""Sign-in and upload throttling, production settings, CSRF."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from diagnosis.api.throttles import UploadRateThrottle
from tests.conftest import api_client_for, jpeg_bytes
from tests.e2e.conftest import ROOT

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "PSEUDONYM_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "pneumo.example.org",
    "BEHIND_TLS_PROXY": "true",
    "SECURE_SSL_REDIRECT": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_HSTS_SECONDS": "31536000",
}


def sign_in(client: Client, username: str, password: str, url: str = "/accounts/login/"):
    return client.post(url, {"username": username, "password": password})


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_repeated_failed_sign_ins_are_refused_for_a_while(rita, ada, settings, url):
    settings.LOGIN_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        assert sign_in(client, "rita", "wrong", url).status_code == 200  # the form again
    # Now even the right password is refused for rita from this address...
    refused = sign_in(client, "rita", "pw-rita", url)
    assert refused.status_code == 429 and b"Too many failed sign-ins" in refused.content
    # ...but not for another user name.
    assert sign_in(client, "ada", "pw-ada", url).status_code == 302


def test_a_successful_sign_in_resets_the_count(rita, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(2):
        sign_in(client, "rita", "wrong")
    assert sign_in(client, "rita", "pw-rita").status_code == 302
    for _ in range(2):
        assert sign_in(Client(), "rita", "wrong").status_code == 200


def test_uploads_are_throttled_per_user(alice, bob, monkeypatch):
    monkeypatch.setattr(UploadRateThrottle, "THROTTLE_RATES", {"uploads": "2/min"})

    def post(user, seed):
        image = SimpleUploadedFile("x.jpg", jpeg_bytes(seed=seed))
        return api_client_for(user).post(reverse("api:study-list"), {"image": image})

    assert [post(alice, i).status_code for i in range(3)] == [202, 202, 429]
    assert "throttled" in post(alice, 9).json()["detail"].lower()
    assert api_client_for(alice).get(reverse("api:study-list")).status_code == 200
    assert post(bob, 5).status_code == 202


def test_forms_need_a_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(
        reverse("study-upload"), {"images": SimpleUploadedFile("x.jpg", jpeg_bytes())}
    )
    assert response.status_code == 403


def _check_deploy(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_the_documented_production_settings_pass_check_deploy():
    result = _check_deploy(PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
def test_production_refuses_to_start_without_a_secret_key():
    result = _check_deploy(PRODUCTION | {"SECRET_KEY": ""})
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
