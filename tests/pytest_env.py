"""A pytest plugin loaded with `-p tests.pytest_env`, before Django reads its settings.

It gives each test run its own broker queue and media folder, so that a development
worker on the same Redis never takes a test's jobs, and the worker processes started by
the end-to-end tests (which inherit this environment) see the same files as the tests.

Under pytest-xdist (`make test-unit` runs `-n 2`) every xdist worker gets its own queue,
media folder and VAR_DIR too (pytest-django gives it its own database), so two workers never
share a file, a job folder or a queue. What the caller set itself is kept.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

NAMES = ("CELERY_TASK_DEFAULT_QUEUE", "MEDIA_ROOT", "VAR_DIR")
GIVEN = "PNEUMO_TEST_GIVEN"  # which of NAMES the caller set, noted by the run's first process

if GIVEN not in os.environ:
    os.environ[GIVEN] = ",".join(name for name in NAMES if name in os.environ)
given = set(os.environ[GIVEN].split(","))
worker = os.environ.get("PYTEST_XDIST_WORKER", "")

if worker:
    # One thread per worker: two workers that each use every core run slower than one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
if "CELERY_TASK_DEFAULT_QUEUE" not in given:
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"pneumo-test-{os.getpid()}"
for name, kind in (("MEDIA_ROOT", "media"), ("VAR_DIR", "var")):
    if name in given or (name == "VAR_DIR" and not worker):
        continue  # a plain run keeps the project's var/ (its SQLite test database lives there)
    folder = tempfile.mkdtemp(prefix=f"pneumo-test-{kind}-{worker + '-' if worker else ''}")
    os.environ[name] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
