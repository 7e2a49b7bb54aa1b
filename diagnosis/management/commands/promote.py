from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import actor
from diagnosis.models import ModelVersion


class Command(BaseCommand):
    help = "Make a registered model version the active one (audited); waiting uploads go to it."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Name of the model version (see /api/models/).")
        parser.add_argument("--reason", default="", help="Why, for the audit trail.")
        parser.add_argument(
            "--user", default="", help="the admin promoting (default: the system, recorded as such)"
        )

    def handle(self, *args, name: str, reason: str, user: str, **options):
        version = ModelVersion.objects.filter(name=name).first()
        if version is None:
            raise CommandError(f"No model version named {name!r}.")
        try:
            services.model_version_activate(version=version, user=actor(user), reason=reason)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{version.name} is now active.")
