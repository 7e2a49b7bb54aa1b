"""Schemathesis against the running app: requests generated from the OpenAPI schema, sent
over HTTP to a live server with an admin's token (the role that may call everything); no
answer may be a server error."""

from __future__ import annotations

import json

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _schema() -> dict:
    # The schema /api/schema/ serves, generated here so that the tests can be collected.
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document))


schema = schemathesis.openapi.from_dict(_schema())


@pytest.fixture
def admin_token(transactional_db) -> str:
    user = get_user_model().objects.create_superuser("fuzz-admin", password="pw-fuzz-admin")
    return Token.objects.create(user=user).key


@pytest.fixture(autouse=True)
def _generous_throttles(monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    rates = {"anon": "100000/min", "user": "100000/min", "uploads": "100000/min"}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_from_the_schema_gets_a_server_error(case, live_server, admin_token):
    case.call_and_validate(
        base_url=live_server.url,
        headers={"Authorization": f"Token {admin_token}"},
        checks=[not_a_server_error],
    )
