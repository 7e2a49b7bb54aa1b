"""Retraining: the frozen validation split, what the run trains on, the gate, permissions."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from diagnosis import files, services
from diagnosis.models import (
    CleaningRun,
    ModelActivation,
    ModelVersion,
    TrainingJob,
    ValidationSplit,
)
from diagnosis.roles import SYSTEM
from diagnosis.wording import evaluation_split
from ml.data import manifest_hash, patient_id, read_manifest
from tests.conftest import make_checkpoint
from tests.diagnosis.conftest import QUICK
from tests.synthetic import make_xray

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


def manifest_rows(name: str) -> dict[str, str]:
    """source -> label of a manifest kept in the storage."""
    with default_storage.open(name, "r") as f:
        return {row["source"]: row["label"] for row in csv.DictReader(f)}


def test_a_candidate_better_than_the_active_model_is_registered_and_promoted(
    base, random_active, ada, rita, alice, xray_upload, settings
):
    # Its threshold is chosen on a selection part of ~6 pneumonias and judged on other ones:
    # the floor is lowered so that this test is about promotion, not about that noise (the
    # floor itself is tested below, on a candidate built to miss it).
    settings.RETRAIN_MIN_SENSITIVITY = 0.5
    study = services.study_create(uploaded_by=alice, image=xray_upload("r.jpg", label="PNEUMONIA"))
    services.review_create(study=study, reviewer=rita, label="PNEUMONIA")
    pool = {item.source: item.label for item in services.training_pool(base_data=base)}
    excluded, relabeled = sorted(k for k in pool if k.startswith("base:NORMAL/"))[:2]
    services.cleaning_decide(item_key=excluded, decision="exclude", user=rita)
    services.cleaning_decide(item_key=relabeled, decision="relabel", label="PNEUMONIA", user=rita)

    job = services.training_job_create(user=ada, parameters=QUICK | {"clean": False}, enqueue=False)
    job = services.training_job_run(job.pk)

    assert job.status == TrainingJob.Status.SUCCEEDED, job.log + job.error
    candidate = job.candidate
    assert job.promoted is True and candidate.is_active, job.log
    assert candidate.gate["passed"] and candidate.gate["active"]["auc"] is not None
    assert candidate.gate["candidate"]["auc"] >= candidate.gate["active"]["auc"] - 0.005
    assert candidate.parent == random_active
    assert "== 5. Gate: PROMOTED" in job.log and "epoch 8" in candidate.training_log
    activation = ModelActivation.objects.first()
    assert (activation.version, activation.previous, activation.user) == (
        candidate, random_active, ada
    )  # fmt: skip
    # Both were evaluated on the same images: the gate part of the frozen validation split.
    split = ValidationSplit.objects.get()
    hashes = {e.data_hash for e in candidate.evaluations.all()} | {
        e.data_hash for e in random_active.evaluations.all()
    }
    assert hashes == {split.gate_hash}
    # Each records the stored manifest of those images, not the scratch copy it read.
    sources = {
        e.data_source for e in [*candidate.evaluations.all(), *random_active.evaluations.all()]
    }
    assert sources == {f"gate part of validation split #{split.pk} ({split.gate_manifest})"}
    assert default_storage.exists(split.gate_manifest)
    for e in [*candidate.evaluations.all(), *random_active.evaluations.all()]:
        assert e.metrics["model"]["checkpoint"] == e.model_version.file
        assert e.metrics["data"]["source"] == e.data_source
    assert evaluation_split(candidate.evaluations.get()).endswith(": no training choice saw it")
    assert candidate.gate["judged_on"] == {
        "part": "gate",
        "n": split.n_gate,
        "hash": split.gate_hash,
    }
    assert candidate.gate["chosen_on"]["n"] == split.n_selection
    # ml.train chose the epoch and the threshold on the selection part only.
    assert candidate.metrics["threshold_rule"]["manifest_hash"] == split.selection_hash
    assert candidate.metrics["threshold_rule"]["images"] == split.selection_manifest
    # The run trained on the pool with the decisions applied, without the validation images.
    train = manifest_rows(candidate.train_args["manifest_record"])
    assert excluded not in train
    reviewed = f"study:{study.pk}"
    assert (reviewed in train) != (reviewed in split.item_keys)
    if relabeled not in split.item_keys:
        assert train[relabeled] == "PNEUMONIA"
    assert not set(train) & set(split.item_keys)
    assert candidate.data_hash and candidate.data_hash != random_active.data_hash


def test_a_worse_candidate_is_kept_with_the_reason_and_the_active_model_stays(
    base, trained_checkpoint, ada
):
    good = services.model_version_register(
        path=trained_checkpoint, name="good", activate=True, user=SYSTEM
    )
    # Sabotaged: from random weights, a learning rate that cannot move them.
    params = QUICK | {"clean": False, "lr": 1e-9, "epochs": 1, "freeze_epochs": 0}
    job = services.training_job_create(user=ada, init="none", parameters=params, enqueue=False)
    job = services.training_job_run(job.pk)

    assert job.status == TrainingJob.Status.SUCCEEDED, job.log + job.error
    assert job.promoted is False and not job.candidate.is_active
    assert ModelVersion.objects.get(is_active=True) == good
    assert (
        "auc" in job.candidate.gate["reason"]
        and "worse than the active" in job.candidate.gate["reason"]
    )
    assert job.candidate.parent == good
    # The split adopted the active model's own validation images: it never trained on them.
    split = ValidationSplit.objects.get()
    assert split.origin.startswith("the validation images of good")
    with open(good.train_args["val_manifest"], newline="") as f:
        own_val = {Path(row["path"]).name for row in csv.DictReader(f)}
    assert {key.rsplit("/", 1)[-1] for key in split.item_keys} == own_val


def test_a_candidate_whose_threshold_misses_the_floor_on_the_gate_part_is_rejected(
    base, db, ada, settings, tmp_path, monkeypatch
):
    # The gate part's pneumonias are replaced, on disk, by images that look normal: a candidate
    # whose threshold was chosen on the selection part (and that never saw these files) calls
    # them normal, so its sensitivity on the gate part falls below the floor.
    import ml.dataset

    shutil.copytree(base, tmp_path / "base")
    settings.TRAINING_BASE_DATA = str(tmp_path / "base")
    split = services.validation_split_get_or_create(base_data=tmp_path / "base")
    with files.scratch_folder("test"):
        selection_csv, gate_csv = services.validation_split_parts(split)
        gate = read_manifest(gate_csv)
        selection = {item.path.resolve() for item in read_manifest(selection_csv)}
    for i, item in enumerate(it for it in gate if it.label == "PNEUMONIA"):
        make_xray("NORMAL", seed=900 + i, size=64).save(item.path)
    read = []
    original = ml.dataset.open_image
    monkeypatch.setattr(
        ml.dataset,
        "open_image",
        lambda path, **kw: read.append(Path(path).resolve()) or original(path, **kw),
    )

    job = services.training_job_create(
        user=ada, init="none", parameters=QUICK | {"clean": False}, enqueue=False
    )
    job = services.training_job_run(job.pk)

    assert job.status == TrainingJob.Status.SUCCEEDED, job.log + job.error
    assert job.promoted is False and not job.candidate.is_active
    assert "below the floor" in job.candidate.gate["reason"]
    assert job.candidate.gate["candidate"]["sensitivity"] < settings.RETRAIN_MIN_SENSITIVITY
    # ml.train read the selection part (to choose) and never a gate image.
    assert selection <= set(read)
    assert not {item.path.resolve() for item in gate} & set(read)
    # On the selection part, where its threshold was chosen, the same model meets the floor.
    assert job.candidate.metrics["val_sensitivity"] >= settings.RETRAIN_MIN_SENSITIVITY


def test_the_validation_split_is_cut_by_patient_into_selection_and_gate_parts(base, db):
    split = services.validation_split_get_or_create(base_data=base)
    with files.scratch_folder("test"):
        selection_csv, gate_csv = services.validation_split_parts(split)
        selection, gate = read_manifest(selection_csv), read_manifest(gate_csv)
    assert split.n_selection == len(selection) > 0 and split.n_gate == len(gate) > 0
    assert {i.source for i in selection} | {i.source for i in gate} == set(split.item_keys)
    assert {patient_id(i.path) for i in selection}.isdisjoint(patient_id(i.path) for i in gate)
    assert {i.label for i in gate} == {i.label for i in selection} == {"NORMAL", "PNEUMONIA"}
    assert split.gate_item_keys == [i.source for i in gate]
    assert (split.selection_hash, split.gate_hash) == (
        manifest_hash(selection),
        manifest_hash(gate),
    )


def test_a_split_frozen_before_the_parts_existed_is_cut_on_first_use(base, db):
    split = services.validation_split_get_or_create(base_data=base)
    keys = list(split.item_keys)
    ValidationSplit.objects.filter(pk=split.pk).update(
        selection_manifest="", selection_hash="", gate_manifest="", gate_hash="", gate_item_keys=[]
    )
    again = services.validation_split_get_or_create(base_data=base)
    assert again.pk == split.pk and again.item_keys == keys
    assert again.n_gate > 0 and again.gate_hash and set(again.gate_item_keys) < set(keys)


def test_the_validation_split_is_frozen_across_runs_and_never_cleaned(base, random_active, ada):
    split = services.validation_split_get_or_create(base_data=base)
    assert services.validation_split_get_or_create(base_data=base) == split
    keys = {item.source for item in services.training_pool(base_data=base)}
    assert keys and not keys & set(split.item_keys)
    assert set(split.item_keys) <= {
        i.source for i in services.training_pool(base_data=base, exclude_held_out=False)
    }
    run = services.cleaning_run_create(base_data=base, folds=3)
    assert not {c.item_key for c in run.candidates.all()} & set(split.item_keys)
    # Kermany file names, no patient key: the summary counts images, none of them keyed
    assert run.parameters["images"] == run.n_items and run.parameters["images_keyed"] == 0
    assert split.key_counts["images"] == len(split.item_keys)
    assert split.key_counts["images_keyed"] == 0


@pytest.mark.parametrize(
    ("candidate", "active", "passed", "why"),
    [
        ({"auc": 0.95, "sensitivity": 0.95}, {"auc": 0.95, "sensitivity": 0.99}, True, "vs active"),
        ({"auc": 0.946, "sensitivity": 0.95}, {"auc": 0.95, "sensitivity": 0.9}, True, "vs active"),
        ({"auc": 0.94, "sensitivity": 0.95}, {"auc": 0.95, "sensitivity": 0.9}, False, "worse"),
        ({"auc": 0.99, "sensitivity": 0.85}, {"auc": 0.95, "sensitivity": 0.9}, False, "floor"),
        ({"auc": 0.6, "sensitivity": 0.92}, None, True, "no active model"),
        ({"auc": None, "sensitivity": 0.92}, {"auc": 0.7, "sensitivity": 0.9}, False, "worse"),
    ],
)
def test_the_gate_applies_the_margin_and_the_sensitivity_floor(
    settings, candidate, active, passed, why
):
    settings.RETRAIN_GATE_METRIC, settings.RETRAIN_GATE_MARGIN = "auc", 0.005
    settings.RETRAIN_MIN_SENSITIVITY = 0.9
    same = {"data": {"manifest_hash": "h"}}
    verdict = services.gate_decide(candidate | same, None if active is None else active | same)
    assert verdict["passed"] is passed and why in verdict["reason"]


def test_the_gate_refuses_evaluations_on_different_splits(settings):
    with pytest.raises(ValueError, match="same validation split"):
        services.gate_decide(
            {"auc": 1, "sensitivity": 1, "data": {"manifest_hash": "a"}},
            {"auc": 1, "sensitivity": 1, "data": {"manifest_hash": "b"}},
        )


def test_only_admins_retrain_and_promote(base, random_active, rita, alice, ada, tmp_path):
    for user in (rita, alice):
        with pytest.raises(PermissionDenied):
            services.training_job_create(user=user, enqueue=False)
        with pytest.raises(PermissionDenied):
            services.model_version_promote(version=random_active, user=user)
    other = services.model_version_register(
        path=make_checkpoint(tmp_path / "o.pt", seed=9), name="o"
    )
    services.model_version_promote(version=other, user=ada, reason="manual")
    assert ModelActivation.objects.first().user == ada


def test_a_failed_run_is_recorded_on_the_job(base, db, ada, settings, tmp_path):
    settings.TRAINING_BASE_DATA = str(tmp_path / "missing")
    job = services.training_job_create(user=ada, init="none", enqueue=False)
    job = services.training_job_run(job.pk)
    assert job.status == TrainingJob.Status.FAILED and "does not exist" in job.error
    assert services.training_job_run(job.pk) is None  # finished jobs are not claimed again


def test_a_run_that_fails_after_registering_its_candidate_leaves_no_version(
    base, random_active, ada, settings
):
    # Trained and registered, then the gate fails (a metric name the gate does not know):
    # no half-made candidate stays behind to be promoted, nor its file.
    settings.RETRAIN_GATE_METRIC = "recall"
    params = QUICK | {"clean": False, "epochs": 1}
    models = Path(settings.MEDIA_ROOT) / "models"
    before = {p for p in models.rglob("*") if p.is_file()}
    job = services.training_job_create(user=ada, init="none", parameters=params, enqueue=False)
    job = services.training_job_run(job.pk)

    assert job.status == TrainingJob.Status.FAILED and "RETRAIN_GATE_METRIC" in job.error
    assert "== 4. Evaluating" in job.log and job.candidate is None
    assert list(ModelVersion.objects.all()) == [random_active]
    assert {p for p in models.rglob("*") if p.is_file()} == before  # checkpoint and plots
    assert ModelVersion.objects.get(is_active=True) == random_active


def test_a_version_that_was_ever_active_is_never_discarded(random_active):
    with pytest.raises(ValueError, match="has been active"):
        services.model_version_discard(random_active)
    assert ModelVersion.objects.filter(pk=random_active.pk).exists()


def test_the_command_refuses_flags_it_sets_itself_and_a_missing_active_model(base, db):
    with pytest.raises(CommandError, match="--out"):
        call_command("retrain", "--out", "x.pt")
    with pytest.raises(CommandError, match="no active model"):
        call_command("retrain", "--init", "active")


def test_the_command_cleans_finds_the_lr_and_retrains_from_the_active_model(
    base, random_active, ada, capsys
):
    call_command(
        "retrain", "--user", "ada", "--epochs", "1", "--freeze-epochs", "1",
        "--lr-find-iters", "12", "--batch-size", "8", "--threads", "2",
    )  # fmt: skip
    out = capsys.readouterr().out
    job = TrainingJob.objects.get()
    assert job.status == TrainingJob.Status.SUCCEEDED and job.created_by == ada
    assert job.parameters == {
        "epochs": 1, "freeze_epochs": 1, "lr_find_iters": 12, "batch_size": 8, "threads": 2,
        "clean": True,
    }  # fmt: skip
    assert "== 1. Cleaning" in out and CleaningRun.objects.count() == 1
    assert "lr_find:" in out and job.candidate.plots.get("lr_find")
    assert job.candidate.train_args["init_checkpoint"].endswith(".pt")
    assert "== 4. Evaluating" in out and job.candidate.name in out


def test_the_sweeper_resends_lost_jobs_and_gives_up_on_dead_ones(db, broker, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.PREDICTION_REQUEUE_AFTER, settings.TRAINING_LEASE_SECONDS = 60, 600
    settings.TRAINING_MAX_ATTEMPTS = 2
    long_ago = timezone.now() - timedelta(hours=1)
    lost = TrainingJob.objects.create(init="none")  # the broker never got it
    fresh = TrainingJob.objects.create(init="none", enqueued_at=timezone.now())
    silent = TrainingJob.objects.create(
        init="none", status="running", attempts=1, heartbeat_at=long_ago
    )
    dead = TrainingJob.objects.create(
        init="none", status="running", attempts=2, heartbeat_at=long_ago
    )

    assert services.training_jobs_sweep() == 2  # the lost one and the silent one
    for job in (lost, fresh, silent, dead):
        job.refresh_from_db()
    assert lost.enqueued_at is not None and silent.enqueued_at is not None
    assert fresh.status == "queued" and silent.status == "running"
    assert dead.status == "failed" and "stopped answering 2 times" in dead.error


def test_every_retrain_flag_is_a_training_setting_and_a_flag_of_the_command():
    from dataclasses import fields

    from diagnosis.management.commands.retrain import Command
    from diagnosis.services.training import TRAIN_FLAGS
    from ml.config import TrainConfig

    assert set(TRAIN_FLAGS) <= {f.name for f in fields(TrainConfig)}
    parser = Command().create_parser("manage.py", "retrain")
    dests = {action.dest for action in parser._actions}
    assert set(TRAIN_FLAGS) <= dests
