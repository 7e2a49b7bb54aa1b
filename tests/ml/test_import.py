from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_it_imports_ml_without_loading_django_or_celery():
    # A fresh interpreter: this test process has Django loaded by pytest-django already.
    code = (
        "import sys, ml, ml.preprocessing, ml.models, ml.checkpoint, ml.data, ml.metrics, "
        "ml.inference, ml.train, ml.lr_find, ml.evaluate, ml.gradcam, ml.plots, ml.bench\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'celery', 'rest_framework'))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
