from __future__ import annotations

import argparse
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from diagnosis import services
from diagnosis.management.operators import actor


class Command(BaseCommand):
    help = (
        "Train a model with ml.train (same flags; see python -m ml.train --help), register it "
        "as a model version, and store its evaluations on the validation and held-out test "
        "splits that ml.train wrote next to the checkpoint."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        from ml.train import get_args_parser

        # The training flags are ml.train's own, so the two commands cannot drift apart.
        parents = [get_args_parser(add_help=False)]
        return super().create_parser(prog_name, subcommand, parents=parents, **kwargs)

    def add_arguments(self, parser):
        parser.set_defaults(out=None)  # a dated file under VAR_DIR/models, see handle()
        parser.add_argument("--name", default="", help="Version name (default: arch-sha256).")
        parser.add_argument("--activate", action="store_true", help="Activate it at once.")
        parser.add_argument(
            "--user",
            default="",
            help="who trains (and activates: an admin); default: the system, recorded as such",
        )

    def handle(self, *args, name: str, activate: bool, user: str, **options):
        from ml.train import TrainConfig

        out = options["out"]
        if out is None:
            stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
            out = Path(settings.VAR_DIR) / "models" / f"{options['arch']}-{stamp}.pt"
        # The options that are ml.train's flags become its config; the rest are this command's.
        config = TrainConfig.from_args(argparse.Namespace(**options), out=out)
        try:
            version, evaluations = services.model_train(
                config=config, name=name, activate=activate, user=actor(user)
            )
        except (ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Registered {version.name} ({'active' if version.is_active else 'not active'})"
        )
        for split, evaluation in evaluations.items():
            self.stdout.write(f"  {split}: {evaluation.summary}")
