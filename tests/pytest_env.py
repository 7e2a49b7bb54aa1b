"""A pytest plugin loaded with `-p tests.pytest_env`, before Django reads its settings.

It gives each test run its own broker queue and media folder, so that a development
worker on the same Redis never takes a test's jobs, and the worker processes started by
the end-to-end tests (which inherit this environment) see the same files as the tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", f"pneumo-test-{os.getpid()}")
if "MEDIA_ROOT" not in os.environ:
    _media = tempfile.mkdtemp(prefix="pneumo-test-media-")
    os.environ["MEDIA_ROOT"] = _media
    atexit.register(shutil.rmtree, _media, ignore_errors=True)
