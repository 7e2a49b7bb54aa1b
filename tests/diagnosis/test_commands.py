from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from diagnosis import roles
from diagnosis.models import ModelVersion


def test_it_registers_and_activates_a_checkpoint(checkpoint_path, capsys, db):
    call_command("register_model", str(checkpoint_path), "--name", "demo", "--activate")

    assert "demo: resnet34, threshold 0.500, active" in capsys.readouterr().out
    assert ModelVersion.objects.get(name="demo").is_active


def test_it_refuses_to_register_what_is_not_a_checkpoint(tmp_path, db):
    junk = tmp_path / "junk.pt"
    junk.write_text("junk")
    with pytest.raises(CommandError):
        call_command("register_model", str(junk))
    with pytest.raises(CommandError, match="No such file"):
        call_command("register_model", str(tmp_path / "absent.pt"))
    assert ModelVersion.objects.count() == 0


def test_it_promotes_and_rolls_back_with_an_audit_trail(checkpoint_path, tmp_path, ada):
    from diagnosis.models import ModelActivation
    from tests.conftest import make_checkpoint

    call_command("register_model", str(checkpoint_path), "--name", "v1", "--activate")
    call_command("register_model", str(make_checkpoint(tmp_path / "v2.pt", seed=2)), "--name", "v2")
    call_command("promote", "v2", "--reason", "better AUC", "--user", "ada")
    assert ModelVersion.objects.get(is_active=True).name == "v2"

    call_command("rollback", "--reason", "too many false positives", "--user", "ada")
    assert ModelVersion.objects.get(is_active=True).name == "v1"
    trail = ModelActivation.objects.order_by("created_at", "id").values_list(
        "action", "previous__name", "version__name", "user__username", "reason"
    )
    assert list(trail) == [
        ("promote", None, "v1", None, "system"),  # no --user: the shell, as the system
        ("promote", "v1", "v2", "ada", "better AUC"),
        ("rollback", "v2", "v1", "ada", "too many false positives"),
    ]
    with pytest.raises(CommandError):
        call_command("promote", "nope")


def test_it_refuses_a_user_name_that_matches_no_one(checkpoint_path, tmp_path, ada):
    from tests.conftest import make_checkpoint

    call_command("register_model", str(checkpoint_path), "--name", "v1", "--activate")
    call_command("register_model", str(make_checkpoint(tmp_path / "v2.pt", seed=2)), "--name", "v2")
    for command in (["promote", "v2"], ["rollback"]):
        with pytest.raises(CommandError, match="No user named 'adaa'"):
            call_command(*command, "--user", "adaa")
    assert ModelVersion.objects.get(is_active=True).name == "v1"  # the typo changed nothing


def test_it_refuses_a_rollback_with_nothing_to_go_back_to(checkpoint_path, db):
    call_command("register_model", str(checkpoint_path), "--name", "only", "--activate")
    with pytest.raises(CommandError, match="no earlier"):
        call_command("rollback")


def test_it_creates_demo_users_with_their_roles(capsys, db):
    call_command("create_demo_users", "--password", "s3cret-pass")

    out = capsys.readouterr().out
    assert "radiologist  password: s3cret-pass" in out
    users = {u.username: u for u in get_user_model().objects.all()}
    assert roles.is_admin(users["admin"])
    assert roles.can_review(users["radiologist"]) and not roles.is_admin(users["radiologist"])
    assert roles.can_upload(users["uploader"]) and not roles.can_review(users["uploader"])
    assert users["uploader"].check_password("s3cret-pass")


def test_it_stores_an_evaluation_with_its_plots(active_model, tmp_path, capsys, alice):
    from django.conf import settings
    from django.urls import reverse

    from diagnosis.models import Evaluation
    from tests.conftest import api_client_for
    from tests.synthetic import write_dataset

    write_dataset(tmp_path / "site", 6, size=96, seed=3)
    call_command("evaluate", "--data", str(tmp_path / "site"))

    evaluation = Evaluation.objects.get()
    assert evaluation.model_version == active_model
    assert evaluation.metrics["n"] == {"NORMAL": 6, "PNEUMONIA": 6, "total": 12}
    assert evaluation.metrics["threshold"] == 0.5
    assert {"auc", "auc_ci", "confusion", "brier", "ece"} <= set(evaluation.metrics)
    assert set(evaluation.plots) == {"roc", "confusion", "reliability"}
    for name in evaluation.plots.values():
        assert (settings.MEDIA_ROOT / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Stored evaluation {evaluation.pk} of test-v1: auc " in capsys.readouterr().out

    body = api_client_for(alice).get(reverse("api:model-list")).json()
    (listed,) = body["results"][0]["evaluations"]
    assert listed["metrics"]["n"]["total"] == 12
    plot = api_client_for(alice).get(listed["plots"]["roc"])
    assert plot.status_code == 200 and plot["Content-Type"] == "image/png"


def test_it_refuses_to_evaluate_without_a_model(tmp_path, db):
    with pytest.raises(CommandError, match="No model is active"):
        call_command("evaluate", "--data", str(tmp_path))


def test_it_has_a_migration_for_every_model_change(db):
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.slow
def test_it_trains_registers_and_evaluates_a_model(tmp_path, capsys, alice, settings):
    from django.test import Client
    from django.urls import reverse

    from tests.conftest import api_client_for
    from tests.synthetic import write_dataset

    write_dataset(tmp_path / "data", 24, size=64, seed=5)
    call_command(
        "train", "--data", str(tmp_path / "data"), "--arch", "resnet34", "--pretrained", "none",
        "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--lr-find-iters", "12",
        "--name", "tiny", "--activate", "--out", str(tmp_path / "tiny.pt"),
    )  # fmt: skip

    out = capsys.readouterr().out
    assert "Registered tiny (active)" in out
    version = ModelVersion.objects.get(name="tiny")
    assert version.is_active and version.architecture == "resnet34"
    assert version.preprocessing["input_size"] == 64
    assert {"val_auc", "val_sensitivity", "val_specificity"} <= set(version.metrics)
    assert set(version.plots) == {"lr_find"}
    assert (settings.MEDIA_ROOT / version.plots["lr_find"]).stat().st_size > 1000
    sources = sorted(e.data_source.rsplit(".", 2)[-2] for e in version.evaluations.all())
    assert sources == ["test", "val"]  # the held-out split is evaluated, never trained on
    assert "  test: auc " in out

    body = api_client_for(alice).get(reverse("api:model-list")).json()
    assert api_client_for(alice).get(body["results"][0]["plots"]["lr_find"]).status_code == 200
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("model-list")).content.decode()
    assert f"/models/plots/version/{version.pk}/lr_find.png" in page
    assert "<title>Models · Pneumonia review</title>" in page
    assert page.count('id="activations"') == 1
