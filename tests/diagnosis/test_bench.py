"""`manage.py bench` runs and prints its table (figures are measured, never asserted)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from diagnosis import services
from diagnosis.models import Prediction, Study
from diagnosis.roles import SYSTEM
from tests.synthetic import write_dataset

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


def test_the_bench_prints_one_table_for_each_runtime_and_preprocessing(
    db, tmp_path, checkpoint_path, capsys
):
    services.model_version_register(
        path=checkpoint_path, name="bench-v1", activate=True, user=SYSTEM
    )
    write_dataset(tmp_path / "train", 8, size=64, seed=1)
    write_dataset(tmp_path / "full", 2, size=400, seed=2)
    call_command(
        "bench", "--runtimes", "torch,onnx-fp32", "--images", str(tmp_path / "train"),
        "--full-resolution", str(tmp_path / "full"), "--no-platform",
    )  # fmt: skip
    out = capsys.readouterr().out
    torch_row = next(line for line in out.splitlines() if "| model only, torch " in line)
    assert "b1 " in torch_row and "b16 " in torch_row and "(1.00x)" in torch_row
    assert "model only, onnx-fp32 (not gated)" in out
    # Whether decoding pays to overlap with the forward pass, on the images it would upload.
    assert "decode + model, torch, b16 (16 of --images)" in out and "decoded on a second" in out
    assert "full-resolution JPEG (4 images)" in out and "16-bit DICOM" in out
    assert "platform" not in out and "burst" not in out  # --no-platform: nothing started


def test_the_bench_refuses_a_database_with_predictions_waiting(db, checkpoint_path, alice):
    services.model_version_register(
        path=checkpoint_path, name="bench-v1", activate=True, user=SYSTEM
    )
    study = Study.objects.create(
        image="studies/x.jpeg", sha256="0" * 64, width=8, height=8, uploaded_by=alice
    )
    Prediction.objects.create(study=study)  # pending: a worker's batch would take it

    with pytest.raises(CommandError, match="1 predictions are pending or running"):
        call_command("bench", "--runtimes", "torch")
