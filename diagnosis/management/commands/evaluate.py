from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnosis import selectors, services
from diagnosis.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Evaluate a model version on a labeled folder (NORMAL/ and PNEUMONIA/) or a CSV "
        "manifest, and store the figures and plots with the version."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--data", required=True, type=Path, help="Folder (Kaggle layout) or manifest .csv."
        )
        parser.add_argument("--model", default="", help="Version name (default: the active one).")

    def handle(self, *args, data: Path, model: str, **options):
        if not data.exists():
            raise CommandError(f"No such folder or file: {data}")
        version = (
            ModelVersion.objects.filter(name=model).first()
            if model
            else selectors.model_version_active()
        )
        if version is None:
            raise CommandError(f"No model version {model!r}." if model else "No model is active.")
        evaluation = services.evaluation_create(version=version, data=data)
        self.stdout.write(
            f"Stored evaluation {evaluation.pk} of {version.name}: {evaluation.summary}"
        )
