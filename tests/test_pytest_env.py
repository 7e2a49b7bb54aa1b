"""tests/pytest_env.py: every xdist worker gets its own folders and queue; what the caller
set is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("CELERY_TASK_DEFAULT_QUEUE", "MEDIA_ROOT", "VAR_DIR")


def _env_after_plugin(env: dict[str, str]) -> dict[str, str]:
    code = (
        "import json, os, tests.pytest_env\n"
        f"print(json.dumps({{n: os.environ.get(n) for n in {NAMES!r}}}))"
    )
    base = {k: v for k, v in os.environ.items() if k not in (*NAMES, "PNEUMO_TEST_GIVEN")}
    base.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base | env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_each_xdist_worker_gets_its_own_folders_and_queue():
    controller = _env_after_plugin({})
    assert controller["MEDIA_ROOT"] and controller["VAR_DIR"] is None  # plain run: var/
    # The workers inherit the controller's environment, as pytest-xdist starts them.
    inherited = {k: v for k, v in controller.items() if v} | {"PNEUMO_TEST_GIVEN": ""}
    gw0 = _env_after_plugin(inherited | {"PYTEST_XDIST_WORKER": "gw0"})
    gw1 = _env_after_plugin(inherited | {"PYTEST_XDIST_WORKER": "gw1"})
    for name in NAMES:
        assert len({controller[name], gw0[name], gw1[name]}) == 3, name
    assert "gw0" in gw0["MEDIA_ROOT"] and "gw1" in gw1["VAR_DIR"]


def test_what_the_caller_set_is_kept_in_every_worker(tmp_path):
    given = {"MEDIA_ROOT": str(tmp_path / "m"), "CELERY_TASK_DEFAULT_QUEUE": "mine"}
    controller = _env_after_plugin(given)
    assert controller["MEDIA_ROOT"] == given["MEDIA_ROOT"]
    inherited = given | {"PNEUMO_TEST_GIVEN": "CELERY_TASK_DEFAULT_QUEUE,MEDIA_ROOT"}
    worker = _env_after_plugin(inherited | {"PYTEST_XDIST_WORKER": "gw0"})
    assert worker["MEDIA_ROOT"] == given["MEDIA_ROOT"]
    assert worker["CELERY_TASK_DEFAULT_QUEUE"] == "mine"
    assert worker["VAR_DIR"] != controller["VAR_DIR"]
