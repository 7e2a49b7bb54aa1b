from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import operator


class Command(BaseCommand):
    help = "Re-activate the model version that was active before the latest promotion (audited)."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="", help="Why, for the audit trail.")
        parser.add_argument("--user", default="", help="User name recorded as the actor.")

    def handle(self, *args, reason: str, user: str, **options):
        try:
            version = services.model_version_rollback(user=operator(user), reason=reason)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Rolled back: {version.name} is active again.")
