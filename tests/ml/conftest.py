"""Shared fixtures for the ml tests: a small seeded model and its checkpoint, synthetic images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ml.checkpoint import CheckpointMeta, save_checkpoint
from ml.models import build_model
from ml.preprocessing import Preprocessing, image_to_tensor
from tests.synthetic import make_xray

SIZE = 64  # small input keeps ResNet34 forward passes in the milliseconds on CPU


def _calibrated_model(pre: Preprocessing) -> nn.Module:
    """Seeded random ResNet34 whose outputs are not saturated.

    Freshly initialised BatchNorm running statistics (mean 0, var 1) make the logits differ
    by ~15, so every probability would be 0.0 or 1.0 and threshold tests could not tell
    labels apart. One train-mode pass sets realistic statistics; a shrunk head does the rest.
    """
    torch.manual_seed(0)
    model = build_model("resnet34", pretrained="none")
    batch = torch.stack(
        [
            image_to_tensor(make_xray(c, seed=s, size=SIZE), pre)
            for c in ("NORMAL", "PNEUMONIA")
            for s in range(8)
        ]
    )  # (16, 3, S, S)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the statistics outright
    model.train()
    with torch.no_grad():
        model(batch)
        model.fc.weight.mul_(0.5)
    return model.eval()


@pytest.fixture(scope="session")
def preprocessing() -> Preprocessing:
    return Preprocessing(input_size=SIZE)


@pytest.fixture(scope="session")
def meta(preprocessing: Preprocessing) -> CheckpointMeta:
    return CheckpointMeta(
        arch="resnet34",
        class_names=("NORMAL", "PNEUMONIA"),
        positive_class="PNEUMONIA",
        preprocessing=preprocessing,
        threshold=0.5,
        metrics={"val_auc": 0.9, "n_train": 10, "n_val": 4},
        train_args={"epochs": 1, "data": "/tmp/x"},
        data_hash="0" * 64,
        created_at="2024-01-01T00:00:00+00:00",
    )


@pytest.fixture(scope="session")
def model(preprocessing: Preprocessing) -> nn.Module:
    return _calibrated_model(preprocessing)


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory, model: nn.Module, meta: CheckpointMeta) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture()
def xray_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "person1_bacteria_1.jpeg"
    make_xray("PNEUMONIA", seed=1, size=SIZE).save(path, quality=90)
    return path
