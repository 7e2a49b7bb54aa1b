"""Who may change what every prediction uses: services refuse a user without the role and a
caller that names no one; the platform's own actions and a shell command without --user act
as the system and are recorded as such."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command

from diagnosis import services
from diagnosis.models import ModelActivation, ModelVersion, SiteAudit, SiteThreshold
from diagnosis.roles import SYSTEM
from tests.conftest import make_checkpoint
from tests.diagnosis.test_sites import labeled_studies


@pytest.fixture
def candidate(db, tmp_path):
    return services.model_version_register(path=make_checkpoint(tmp_path / "c.pt"), name="c")


@pytest.mark.parametrize("who", ["rita", "alice", None])
def test_activation_refuses_a_non_admin_and_no_one(who, request, candidate):
    user = request.getfixturevalue(who) if who else None
    with pytest.raises(PermissionDenied, match="Only admins"):
        services.model_version_activate(version=candidate, user=user)
    with pytest.raises(PermissionDenied, match="Only admins"):
        services.training_job_create(user=user, init="none", enqueue=False)
    assert not ModelVersion.objects.filter(is_active=True).exists()
    assert not ModelActivation.objects.exists()


def test_a_system_action_is_allowed_and_recorded_as_the_system(candidate, ada, tmp_path):
    services.model_version_activate(version=candidate, user=SYSTEM, reason="first model")
    row = ModelActivation.objects.get()
    assert row.user is None and row.reason == "system: first model"
    candidate.refresh_from_db()
    assert candidate.is_active and candidate.activated_by is None
    # An admin's action stays theirs.
    other = services.model_version_register(
        path=make_checkpoint(tmp_path / "d.pt", seed=7), name="d", activate=True, user=ada
    )
    assert ModelActivation.objects.first().user == ada and other.registered_by == ada
    assert not ModelActivation.objects.first().reason.startswith("system")


@pytest.mark.parametrize(
    "command",
    [
        ["promote", "c", "--user", "rita"],
        ["rollback", "--user", "rita"],
        ["retrain", "--user", "rita", "--init", "imagenet"],
    ],
)
def test_commands_act_as_their_user_and_refuse_a_non_admin(command, candidate, rita):
    with pytest.raises(CommandError, match="Only admins"):
        call_command(*command)
    assert not ModelActivation.objects.exists()


def test_register_model_activates_as_the_system_or_refuses_a_non_admin(tmp_path, db, rita, capsys):
    path = make_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CommandError, match="Only admins"):
        call_command("register_model", str(path), "--activate", "--user", "rita")
    assert not ModelVersion.objects.exists()  # refused before anything was stored
    call_command("register_model", str(path), "--activate")
    assert ModelActivation.objects.get().reason.startswith("system")


def test_site_audit_refuses_a_non_admins_promote_before_any_work(active_model, rita, ada, capsys):
    site = services.site_get_or_create(name="hospital-c")
    labeled_studies(site, rita, n_per_class=6)
    for flags in (["--adapt", "--promote"], ["--activate"]):
        with pytest.raises(CommandError, match="Only admins"):
            call_command("site_audit", "--site", "hospital-c", "--user", "rita", *flags)
    assert "Scoring" not in capsys.readouterr().out  # refused up front, before any work
    assert not SiteAudit.objects.exists() and not SiteThreshold.objects.exists()
    # --activate as an admin puts the calibrated threshold in force, recorded as theirs.
    call_command("site_audit", "--site", "hospital-c", "--user", "ada", "--activate")
    row = SiteThreshold.objects.get()
    assert row.created_by == ada and row.audit == SiteAudit.objects.get()
