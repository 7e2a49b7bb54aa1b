from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.models import ModelVersion


class Command(BaseCommand):
    help = "Make a registered model version the active one; waiting uploads are sent to it."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Name of the model version (see /api/models/).")

    def handle(self, *args, name: str, **options):
        version = ModelVersion.objects.filter(name=name).first()
        if version is None:
            raise CommandError(f"No model version named {name!r}.")
        services.model_version_activate(version=version)
        self.stdout.write(f"{version.name} is now active.")
