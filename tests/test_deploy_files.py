"""The deployment files stay consistent with the settings (no Docker engine runs here, so
docker-compose.yml is checked by reading it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def settings_variables() -> set[str]:
    source = (ROOT / "pneumo_site" / "settings.py").read_text()
    return set(
        re.findall(
            r'(?:getenv|envbool|envint|envfloat|envlist|envchoice|envrate)\(\s*"([A-Z_]+)"', source
        )
    )


def example_variables() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z_]+=", line)}


def test_it_documents_every_setting_in_env_example():
    assert settings_variables() - example_variables() == set()
    assert example_variables() - settings_variables() == set()


def test_it_describes_web_workers_beat_redis_and_postgres_in_compose():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"web", "worker", "training-worker", "beat", "redis", "postgres"}
    for name in ("web", "worker", "training-worker", "beat"):
        env = services[name]["environment"]
        assert set(env) <= settings_variables(), name
        assert env["DEBUG"] == "false"
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert set(services[name]["depends_on"]) == {"redis", "postgres"}
    # A crashed worker (or any service) comes back by itself.
    assert {services[name].get("restart") for name in services} == {"unless-stopped"}
    assert "celery -A pneumo_site worker -Q pneumo " in services["worker"]["command"]
    assert "worker -Q pneumo-training " in services["training-worker"]["command"]
    assert "celery -A pneumo_site beat" in services["beat"]["command"]
    assert "migrate" in services["web"]["command"]
