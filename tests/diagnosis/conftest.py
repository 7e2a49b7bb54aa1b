"""Fixtures of the retraining and site tests: a synthetic base data set, a model that knows
nothing and one that has learned it."""

from __future__ import annotations

from pathlib import Path

import pytest

from diagnosis import services
from diagnosis.roles import SYSTEM
from tests.conftest import make_checkpoint
from tests.synthetic import write_dataset

# Quick runs on two cores: 64 px ResNet34, a few seconds an epoch. From random weights a
# fixed rate and no frozen phase learn the synthetic classes (as in tests/ml/test_train.py)
# with the fastai recipe's mild augmentations; the robust recipe needs more epochs than that.
QUICK = {
    "recipe": "fastai", "batch_size": 8, "lr": 1e-3, "freeze_epochs": 0, "epochs": 8,
    "threads": 2,
}  # fmt: skip


@pytest.fixture(scope="session")
def base_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base") / "train"
    write_dataset(root, 40, size=64, seed=5)
    return root


@pytest.fixture
def base(base_folder, settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path / "var"
    settings.TRAINING_BASE_DATA = str(base_folder)
    settings.RETRAIN_GATE_MARGIN = 0.005
    settings.RETRAIN_MIN_SENSITIVITY = 0.9
    return base_folder


@pytest.fixture
def random_active(db, tmp_path):
    """An active model that knows nothing: seeded random weights, 64 px input."""
    path = make_checkpoint(tmp_path / "random.pt", seed=1, input_size=64)
    return services.model_version_register(path=path, name="random-v1", activate=True, user=SYSTEM)


def train_synthetic(data: Path, out: Path) -> Path:
    """ml.train from scratch on a synthetic folder, the quick schedule that learns it (the one
    definition the tests' trained models share)."""
    from ml.train import main, parse_config

    args = parse_config(
        ["--recipe", "fastai", "--data", str(data), "--img-size", "64", "--epochs", "8",
         "--lr", "1e-3", "--batch-size", "8", "--test-fraction", "0", "--threads", "2",
         "--print-freq", "0", "--out", str(out)]
    )  # fmt: skip
    return main(args)


@pytest.fixture(scope="session")
def trained_checkpoint(base_folder, tmp_path_factory) -> Path:
    """A model that has learned the synthetic classes (ml.train from scratch), trained once
    for the whole run; its validation manifest lies beside it."""
    return train_synthetic(base_folder, tmp_path_factory.mktemp("good") / "good.pt")
