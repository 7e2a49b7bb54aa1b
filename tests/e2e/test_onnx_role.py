"""The ONNX prediction worker in a venv of its own role (requirements-onnx.txt: the web role
plus ONNX Runtime, no torch), its files in S3: it predicts an upload with the version's
accepted onnx-fp32 artifact, read from the bucket into its own model cache. A venv without
torch is the proof that the worker never needs it: any import of torch on its path fails."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.core.files.storage import default_storage
from rest_framework.authtoken.models import Token

from bench.launch import platform
from diagnosis import services
from diagnosis.roles import SYSTEM
from tests.conftest import jpeg_bytes, make_checkpoint, s3_environment
from tests.e2e.conftest import ROOT, child_env, wait_until
from tests.synthetic import write_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROLE_REQUIREMENTS = ("requirements-web.txt", "requirements-onnx.txt")


@pytest.fixture(scope="session")
def onnx_role_python() -> str:
    """The interpreter of a venv that holds requirements-onnx.txt and nothing else, built once
    per content of the role's requirements (under ROLE_VENV_DIR, else the temporary folder)
    and reused by later runs; a skip saying why when pip cannot build it (a failure in CI)."""
    digest = hashlib.sha256()
    for name in ROLE_REQUIREMENTS:
        digest.update((ROOT / name).read_bytes())
    base = Path(os.getenv("ROLE_VENV_DIR") or tempfile.gettempdir())
    venv = (
        base
        / f"pneumo-role-onnx-{sys.version_info[0]}{sys.version_info[1]}-{digest.hexdigest()[:12]}"
    )
    python = venv / "bin" / "python"
    if (venv / ".installed").is_file():
        return str(python)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-onnx.txt")],
    ]
    for step in steps:
        done = subprocess.run(step, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            why = f"could not build the ONNX role's venv ({step[2]}): {done.stderr[-2000:]}"
            if os.getenv("REQUIRE_SERVICES"):
                pytest.fail(why)
            pytest.skip(why)
    (venv / ".installed").touch()
    return str(python)


def test_the_onnx_worker_predicts_from_its_own_venv_with_the_files_in_s3(
    transactional_db, broker, s3_storage, ada, tmp_path, onnx_role_python
):
    torch_there = subprocess.run(
        [onnx_role_python, "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert torch_there.stdout.strip() == "None", torch_there.stdout + torch_there.stderr

    # Registered and optimized by an admin's process (torch), into the bucket.
    version = services.model_version_register(
        path=make_checkpoint(tmp_path / "m.pt", input_size=64), name="v1", activate=True,
        user=SYSTEM,
    )  # fmt: skip
    write_dataset(tmp_path / "gate", 8, size=64, seed=3)
    artifact = services.runtime_artifact_create(
        version=version, runtime="onnx-fp32", data=tmp_path / "gate"
    )
    assert default_storage.exists(artifact.file)

    worker_dir = tmp_path / "worker"
    env = {**child_env(), **s3_environment(s3_storage, default_storage.location)}
    worker_env = {
        "VAR_DIR": str(worker_dir), "MEDIA_ROOT": str(worker_dir / "media"),
        "INFERENCE_RUNTIME": "onnx-fp32", "PREDICTION_HEATMAPS": "off",
    }  # fmt: skip
    with platform(
        {**env, "VAR_DIR": str(tmp_path / "web")}, queue=settings.CELERY_TASK_DEFAULT_QUEUE,
        log_dir=tmp_path / "logs", worker_env=worker_env, worker_python=onnx_role_python,
    ) as running:  # fmt: skip
        api = requests.Session()
        api.headers["Authorization"] = f"Token {Token.objects.create(user=ada).key}"
        image = ("chest.jpg", jpeg_bytes("PNEUMONIA", seed=1, size=128), "image/jpeg")
        answer = api.post(f"{running.url}/api/studies/", files={"image": image})
        assert answer.status_code == 202, answer.text

        def done() -> bool:
            body = api.get(f"{running.url}/api/studies/{answer.json()['id']}/").json()
            done.last = body["predictions"][0]
            return done.last["status"] in ("done", "failed")

        wait_until(done, timeout=180, what="the upload predicted by the ONNX worker")
        assert done.last["status"] == "done", (done.last, running.worker.tail())
        assert (done.last["runtime"], done.last["model_version"]) == ("onnx-fp32", "v1")
    # The worker read the artifact from the bucket into its own cache, and nothing else.
    files = sorted(str(p.relative_to(worker_dir)) for p in worker_dir.rglob("*") if p.is_file())
    assert files == [f"model-cache/{artifact.sha256}.onnx"], files
