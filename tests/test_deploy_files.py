"""The deployment files stay consistent with the settings (no Docker engine runs here, so
docker-compose.yml is checked by reading it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def settings_variables() -> set[str]:
    source = (ROOT / "pneumo_site" / "settings.py").read_text()
    readers = "getenv|envbool|envint|envfloat|envlist|envchoice|envrate"
    return set(re.findall(rf'(?:{readers})\(\s*"([A-Z][A-Z0-9_]*)"', source))


def example_variables() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line)}


def test_it_documents_every_setting_in_env_example():
    assert settings_variables() - example_variables() == set()
    assert example_variables() - settings_variables() == set()


def test_it_describes_web_workers_beat_redis_and_postgres_in_compose():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"web", "worker", "training-worker", "beat", "redis", "postgres",
                             "pacs-listener", "orthanc", "seaweedfs"}  # fmt: skip
    for name in ("web", "worker", "training-worker", "beat", "pacs-listener"):
        env = services[name]["environment"]
        assert set(env) <= settings_variables(), name
        assert env["DEBUG"] == "false"
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert {"redis", "postgres"} <= set(services[name]["depends_on"])
    # A crashed worker (or any service) comes back by itself.
    assert {services[name].get("restart") for name in services} == {"unless-stopped"}
    assert "celery -A pneumo_site worker -Q pneumo " in services["worker"]["command"]
    assert "worker -Q pneumo-training " in services["training-worker"]["command"]
    assert "celery -A pneumo_site beat" in services["beat"]["command"]
    assert "migrate" in services["web"]["command"]
    assert services["pacs-listener"]["command"] == "python manage.py pacs_listen"
    assert services["pacs-listener"]["environment"]["ORTHANC_URL"] == "http://orthanc:8042"
    assert services["orthanc"]["build"]["target"] == "orthanc"
    assert "orthanc" in services["pacs-listener"]["depends_on"]


def test_compose_keeps_files_in_the_bucket_and_shares_no_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    platform = ("web", "worker", "training-worker", "beat", "pacs-listener")
    for name in platform:
        env = services[name]["environment"]
        assert env["STORAGE_URL"].startswith("s3://"), name
        assert env["AWS_S3_ENDPOINT_URL"] == "http://seaweedfs:8333", name
        assert "MEDIA_ROOT" not in env, name
        assert services[name]["depends_on"]["seaweedfs"] == {"condition": "service_healthy"}
    mounted = [
        (name, volume.split(":")[0])
        for name, service in services.items()
        for volume in service.get("volumes", [])
    ]
    volumes = [volume for _, volume in mounted]
    assert len(volumes) == len(set(volumes)), f"a volume shared by two services: {mounted}"
    assert services["seaweedfs"]["build"]["target"] == "seaweedfs"
    assert "AS seaweedfs" in (ROOT / "Dockerfile").read_text()
    # Healthy once an object round-trips (scripts/seaweed.py --check, tested against a real
    # server in tests/diagnosis/test_storage_s3.py), where the Dockerfile copies the script.
    check = services["seaweedfs"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "/usr/local/bin/seaweed.py"] and "--check" in check
    assert "COPY scripts/seaweed.py /usr/local/bin/seaweed.py" in (ROOT / "Dockerfile").read_text()


def test_the_compose_orthanc_config_keeps_authentication_and_known_modalities():
    import json

    config = json.loads((ROOT / "deploy" / "orthanc.json").read_text())
    assert config["AuthenticationEnabled"] is True and not config["DicomAlwaysAllowStore"]
    assert config["RegisteredUsers"] == {"${ORTHANC_USERNAME}": "${ORTHANC_PASSWORD}"}
    assert config["OverwriteInstances"] is False and config["StableAge"] <= 2
    assert "FROM debian:bookworm-slim AS orthanc" in (ROOT / "Dockerfile").read_text()


def requirement_names(name: str) -> set[str]:
    """The packages a requirements file installs, following its -r includes."""
    found: set[str] = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= requirement_names(line[3:].strip())
        elif line:
            found.add(line.split("==")[0].split("[")[0].lower())
    return found


def test_each_role_installs_only_what_it_runs():
    web, onnx, torch = (
        requirement_names(f"requirements-{r}.txt") for r in ("web", "onnx", "torch")
    )
    heavy = {"torch", "torchvision", "timm", "onnxruntime", "onnx", "matplotlib"}
    assert not web & heavy
    assert onnx - web == {"onnxruntime"}
    assert {"torch", "torchvision", "timm", "onnx", "matplotlib"} <= torch - onnx
    assert requirement_names("requirements.txt") == torch  # make up installs every role


def test_compose_builds_each_service_from_its_roles_stage():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert {"web", "onnx-worker", "torch-worker", "orthanc"} <= stages
    target = {name: s["build"]["target"] for name, s in compose.items() if "build" in s}
    assert target == {"web": "web", "beat": "web", "pacs-listener": "web", "orthanc": "orthanc",
                      "worker": "torch-worker", "training-worker": "torch-worker",
                      "seaweedfs": "seaweedfs"}  # fmt: skip
    dockerfile = (ROOT / "Dockerfile").read_text()
    web_stage = dockerfile.split("AS web\n")[1].split("\nFROM ")[0]
    assert "requirements-web.txt" in web_stage and "requirements-torch" not in web_stage
