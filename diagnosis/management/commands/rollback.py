from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import actor


class Command(BaseCommand):
    help = "Re-activate the model version that was active before the latest promotion (audited)."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="", help="Why, for the audit trail.")
        parser.add_argument(
            "--user",
            default="",
            help="the admin rolling back (default: the system, recorded as such)",
        )

    def handle(self, *args, reason: str, user: str, **options):
        try:
            version = services.model_version_rollback(user=actor(user), reason=reason)
        except (ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Rolled back: {version.name} is active again.")
