"""Optimized runtimes: built from a registered checkpoint, kept only past the accuracy gate,
switched by INFERENCE_RUNTIME, and (ONNX) run without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from diagnosis import services
from diagnosis.models import RuntimeArtifact
from diagnosis.roles import SYSTEM
from tests.conftest import make_checkpoint
from tests.diagnosis.conftest import train_synthetic
from tests.e2e.conftest import ROOT, child_env
from tests.synthetic import write_dataset

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A ResNet34 that has learned the synthetic classes and subtypes, with its validation
    manifest. Its own data set: the int8 gate's figures are measured on its validation images,
    and this seed's leave the gate a margin the retraining tests' data set does not. The
    subtypes look different (a subtype the images do not show gives the gate nothing stable
    to compare: near-equal scores that int8 reorders at random)."""
    root = tmp_path_factory.mktemp("runtime-data")
    write_dataset(root / "train", 40, size=64, seed=8, subtypes=True)
    return train_synthetic(root / "train", root / "m.pt")


@pytest.fixture
def version(db, trained):
    return services.model_version_register(path=trained, name="good", activate=True, user=SYSTEM)


def test_an_onnx_artifact_that_matches_fp32_is_kept(version, capsys):
    call_command("optimize_model", "good", "--runtime", "onnx-fp32")
    out = capsys.readouterr().out
    artifact = RuntimeArtifact.objects.get(version=version, runtime="onnx-fp32")
    assert artifact.comparison["accepted"] and artifact.comparison["n"] > 0
    assert abs(artifact.comparison["auc_drop"]) <= 0.005
    # ml.train's default answers the subtype too (the names carry it): the gate checks both.
    assert version.subtype is not None and artifact.comparison["subtype"]["n"] > 0
    assert abs(artifact.comparison["subtype"]["auc_drop"]) <= 0.005
    assert artifact.file.endswith(".onnx") and len(artifact.sha256) == 64
    assert "AUC" in out and "onnx-fp32 accepted" in out


def test_an_int8_artifact_is_calibrated_on_training_images_and_gated(version, settings, trained):
    settings.TRAINING_BASE_DATA = str(Path(trained).parent / "train")
    artifact = services.runtime_artifact_create(version=version, runtime="onnx-int8")
    # Training images only (80 in the folder, of which the validation split holds 13).
    assert artifact.comparison["n_calibration"] == 80 - artifact.comparison["n"]
    assert artifact.comparison["auc_drop"] <= 0.005


def test_the_gate_refuses_a_broken_artifact_and_keeps_nothing(version, tmp_path, capsys, settings):
    from ml.runtimes import export_onnx

    # Random weights, with the version's own questions: the gate must see the scores drop.
    broken = make_checkpoint(tmp_path / "random.pt", seed=3, input_size=64, subtype=version.subtype)

    def build(checkpoint, runtime, out, calibration):
        return export_onnx(broken, out)  # not the model it claims to be

    before = set(Path(settings.MEDIA_ROOT).rglob("*.onnx"))
    with pytest.raises(services.RuntimeRejected, match="AUC drops"):
        services.runtime_artifact_create(version=version, runtime="onnx-fp32", build=build)
    assert not RuntimeArtifact.objects.exists()
    assert set(Path(settings.MEDIA_ROOT).rglob("*.onnx")) == before


def test_the_runtime_setting_switches_what_predictions_use(version, alice, xray_upload, settings):
    from ml.inference import Predictor

    services.runtime_artifact_create(version=version, runtime="onnx-fp32")
    study = services.study_create(uploaded_by=alice, image=xray_upload("a.jpg", label="PNEUMONIA"))
    settings.INFERENCE_RUNTIME = "onnx-fp32"
    onnx = services.prediction_run(study.predictions.get().pk)
    assert (onnx.status, onnx.runtime, onnx.heatmap) == ("done", "onnx-fp32", "")
    alone = Predictor.from_checkpoint(Path(settings.MEDIA_ROOT, version.file)).predict(
        study.image.path
    )
    assert onnx.probability == pytest.approx(alone.probability, abs=0.02)

    # No accepted artifact for the runtime asked for: torch, and the log says so.
    settings.INFERENCE_RUNTIME = "onnx-int8"
    again = services.study_create(uploaded_by=alice, image=xray_upload("b.jpg"))
    result = services.prediction_run(again.predictions.get().pk)
    assert (result.status, result.runtime, result.heatmap_due) == ("done", "torch", True)


def test_bf16_is_gated_like_any_runtime(version):
    artifact = services.runtime_artifact_create(version=version, runtime="torch-bf16")
    assert artifact.file == "" and artifact.comparison["runtime"] == "torch-bf16"


def test_a_worker_on_onnx_never_imports_torch(transactional_db, trained, alice, tmp_path):
    version = services.model_version_register(path=trained, name="good", activate=True, user=SYSTEM)
    services.runtime_artifact_create(version=version, runtime="onnx-fp32")
    image = tmp_path / "x.jpg"
    from tests.conftest import jpeg_bytes

    image.write_bytes(jpeg_bytes("PNEUMONIA", seed=4))
    script = (
        "import sys\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.core.files.uploadedfile import SimpleUploadedFile\n"
        "from diagnosis import services, tasks\n"
        "user = get_user_model().objects.get(username='alice')\n"
        f"data = open({str(image)!r}, 'rb').read()\n"
        "study = services.study_create(uploaded_by=user, image=SimpleUploadedFile('x.jpg', data))\n"
        "p = services.prediction_run(study.predictions.get().pk)\n"
        "print('RESULT', p.status, p.runtime, 'torch' in sys.modules)\n"
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT,
        env=child_env(INFERENCE_RUNTIME="onnx-fp32", CELERY_BROKER_URL="redis://127.0.0.1:1/0"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "RESULT done onnx-fp32 False" in result.stdout, result.stdout + result.stderr


def test_the_device_is_the_gpu_only_when_there_is_one(settings, monkeypatch):
    import torch

    from diagnosis.model_loader import torch_device

    settings.INFERENCE_DEVICE = "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device() == "cpu"
    settings.INFERENCE_DEVICE = "cuda"
    assert torch_device() == "cpu"  # asked for, not there: the CPU, with a warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device() == "cuda"
    settings.INFERENCE_DEVICE = "cpu"
    assert torch_device() == "cpu"


def test_fp16_the_gpu_precision_predicts_as_fp32_does_and_explains_in_fp32(checkpoint_path):
    from ml.inference import Predictor
    from tests.conftest import jpeg_bytes

    with pytest.raises(ValueError, match="precision"):
        Predictor.from_checkpoint(checkpoint_path, precision="int4")
    # The GPU's autocast, run on the CPU (torch has fp16 autocast there too).
    half = Predictor.from_checkpoint(checkpoint_path, precision="fp16")
    full = Predictor.from_checkpoint(checkpoint_path)
    images = [jpeg_bytes(label, seed=i) for i, label in enumerate(["NORMAL", "PNEUMONIA"] * 2)]
    for a, b in zip(half.predict_batch(images), full.predict_batch(images), strict=True):
        assert a.probability == pytest.approx(b.probability, abs=0.02)
    (prediction, heatmap), *_ = half.explain_batch(images)
    assert heatmap.mode == "RGB" and prediction.label in ("NORMAL", "PNEUMONIA")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(
    not _cuda(), reason="no CUDA device here: the GPU path runs where a card is (a device machine)"
)
def test_on_a_gpu_the_worker_predicts_in_half_precision_and_draws_heatmaps(
    alice, xray_upload, active_model, settings
):
    from diagnosis import model_loader
    from ml.inference import Predictor

    settings.INFERENCE_DEVICE, settings.PREDICTION_HEATMAPS = "auto", "inline"
    study = services.study_create(uploaded_by=alice, image=xray_upload(label="PNEUMONIA"))
    prediction = services.prediction_run(study.predictions.get().pk)

    assert prediction.status == "done", prediction.error
    predictor = model_loader.predictor_for(active_model)
    assert predictor.device.type == "cuda" and predictor.precision in ("bf16", "fp16")
    assert prediction.heatmap  # Grad-CAM in fp32 on the card
    on_cpu = Predictor.from_checkpoint(Path(settings.MEDIA_ROOT, active_model.file))
    assert prediction.probability == pytest.approx(
        on_cpu.predict(study.image.path).probability, abs=0.02
    )


def test_an_artifact_whose_outputs_do_not_fit_the_questions_is_refused(version, tmp_path):
    from ml.runtimes import export_onnx

    binary = make_checkpoint(tmp_path / "binary.pt", seed=3, input_size=64)  # 2 outputs

    def build(checkpoint, runtime, out, calibration):
        return export_onnx(binary, out)

    assert version.subtype is not None  # the default answers the subtype: 3 outputs
    with pytest.raises(services.RuntimeRejected, match=r"gives 2 outputs per image; the \w+ head"):
        services.runtime_artifact_create(version=version, runtime="onnx-fp32", build=build)
    assert not RuntimeArtifact.objects.exists()


def test_auto_times_the_accepted_runtimes_once_and_keeps_heatmaps(
    version, alice, xray_upload, settings, monkeypatch, caplog
):
    from diagnosis import model_loader

    services.runtime_artifact_create(version=version, runtime="onnx-fp32")
    # A real timing first: a forward pass of each runtime on synthetic images.
    real = model_loader.batch_rate(model_loader.build_predictor(version, "onnx-fp32"), 64)
    assert real > 0
    timed = []

    def rate(predictor, size):
        timed.append(predictor.runtime if hasattr(predictor, "runtime") else type(predictor))
        return {"Predictor": 30.0, "OnnxPredictor": 90.0}[type(predictor).__name__]

    monkeypatch.setattr(model_loader, "batch_rate", rate)
    settings.INFERENCE_RUNTIME = "auto"
    settings.PREDICTION_HEATMAPS = "deferred"
    caplog.set_level("INFO", logger="diagnosis.model_loader")
    assert model_loader.runtime_for(version) == "torch"  # ONNX is faster but draws none
    assert "onnx-fp32 90.0 img/s, torch 30.0 img/s -> torch (onnx-fp32 draws no heatmaps)" in (
        caplog.text
    )
    assert model_loader.runtime_for(version) == "torch" and len(timed) == 2  # timed once
    settings.PREDICTION_HEATMAPS = "off"
    assert model_loader.runtime_for(version) == "onnx-fp32"
    study = services.study_create(uploaded_by=alice, image=xray_upload("auto.jpg"))
    assert services.prediction_run(study.predictions.get().pk).runtime == "onnx-fp32"
