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


def test_it_activates_a_version_by_name(checkpoint_path, db):
    call_command("register_model", str(checkpoint_path), "--name", "later")
    call_command("activate_model", "later")
    assert ModelVersion.objects.get(name="later").is_active
    with pytest.raises(CommandError):
        call_command("activate_model", "nope")


def test_it_creates_demo_users_with_their_roles(capsys, db):
    call_command("create_demo_users", "--password", "s3cret-pass")

    out = capsys.readouterr().out
    assert "radiologist  password: s3cret-pass" in out
    users = {u.username: u for u in get_user_model().objects.all()}
    assert roles.is_admin(users["admin"])
    assert roles.can_review(users["radiologist"]) and not roles.is_admin(users["radiologist"])
    assert roles.can_upload(users["uploader"]) and not roles.can_review(users["uploader"])
    assert users["uploader"].check_password("s3cret-pass")
