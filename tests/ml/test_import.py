from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALL_MODULES = ", ".join(
    sorted(
        f"ml.{path.stem}" if path.stem != "__init__" else "ml"
        for path in (ROOT / "ml").glob("*.py")
    )
)

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


def loaded_after(imports: str, roots: tuple[str, ...]) -> list[str]:
    """Top-level packages among `roots` that importing `imports` loads in a fresh
    interpreter (this test process has Django loaded by pytest-django already)."""
    code = (
        f"import sys, {imports}\n"
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({roots!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [name for name in result.stdout.strip().split(",") if name]


def test_it_imports_ml_without_loading_django_or_celery():
    assert loaded_after(ALL_MODULES, ("django", "celery", "rest_framework")) == []


@pytest.mark.parametrize("module", ["ml.inference", "ml.gradcam", "ml.evaluate", "ml.bench"])
def test_it_keeps_matplotlib_off_the_inference_path(module):
    # Plots are drawn only when asked for; a worker never pays for matplotlib.
    assert loaded_after(module, ("matplotlib",)) == []


def test_it_calibrates_a_site_without_loading_torch():
    # Choosing a site's threshold from stored scores is numpy only, like ml.metrics.
    assert loaded_after("ml.calibration", ("torch", "torchvision", "PIL")) == []


def test_it_lists_every_ml_module():
    # The list is built from the folder, so a new module cannot be left out of the checks.
    for module in ("ml.core", "ml.dicom", "ml.runtimes", "ml.scores", "ml.engine", "ml.augment"):
        assert module in ALL_MODULES.split(", ")


def test_it_computes_figures_from_stored_scores_without_loading_torch():
    # A gate or a site audit that already has the probabilities needs no torch (~800 MB).
    assert loaded_after("ml.scores, ml.metrics", ("torch", "torchvision", "PIL")) == []


def test_it_finds_label_issues_from_features_without_loading_torch():
    # Ranking stored features (e.g. several seeds of one extraction) needs only numpy.
    assert loaded_after("ml.label_issues", ("torch", "torchvision", "PIL")) == []


def test_it_reads_manifests_and_splits_by_patient_without_loading_torch():
    # The platform's services read manifests and split by patient; only training needs torch.
    assert loaded_after("ml.data", ("torch", "torchvision")) == []
