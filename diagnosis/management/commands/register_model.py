from __future__ import annotations

from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import actor


class Command(BaseCommand):
    help = "Register a checkpoint made by the ml package as a model version."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="Checkpoint file (.pt) written by ml.train.")
        parser.add_argument("--name", default="", help="Version name (default: arch-sha256).")
        parser.add_argument(
            "--activate", action="store_true", help="Make it the active model at once."
        )
        parser.add_argument(
            "--note", default="", help="shown with the version on every page while it is active "
            "(e.g. that it is a demo)",
        )  # fmt: skip
        parser.add_argument(
            "--demo", action="store_true",
            help="a demo model: every page showing its predictions warns that it is one",
        )  # fmt: skip
        parser.add_argument(
            "--intended-use", default="",
            help="its intended use in one line (default: the project's model card's)",
        )  # fmt: skip
        parser.add_argument(
            "--user",
            default="",
            help="who registers (and activates: an admin); default: the system, recorded as such",
        )

    def handle(self, *args, path: Path, name: str, activate: bool, user: str, note: str, **options):
        from ml.checkpoint import CheckpointError

        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        try:
            version = services.model_version_register(
                path=path, name=name, activate=activate, user=actor(user), note=note,
                demo=options["demo"], intended_use=options["intended_use"],
            )  # fmt: skip
        except (CheckpointError, ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        state = "active" if version.is_active else "registered (not active)"
        self.stdout.write(
            f"{version.name}: {version.architecture}, threshold {version.threshold:.3f}, {state}"
        )
