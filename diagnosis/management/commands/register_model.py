from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnosis import services


class Command(BaseCommand):
    help = "Register a checkpoint made by the ml package as a model version."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="Checkpoint file (.pt) written by ml.train.")
        parser.add_argument("--name", default="", help="Version name (default: arch-sha256).")
        parser.add_argument(
            "--activate", action="store_true", help="Make it the active model at once."
        )

    def handle(self, *args, path: Path, name: str, activate: bool, **options):
        from ml.checkpoint import CheckpointError

        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        try:
            version = services.model_version_register(path=path, name=name, activate=activate)
        except (CheckpointError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        state = "active" if version.is_active else "registered (not active)"
        self.stdout.write(
            f"{version.name}: {version.architecture}, threshold {version.threshold:.3f}, {state}"
        )
