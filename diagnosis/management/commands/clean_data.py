from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services


class Command(BaseCommand):
    help = (
        "Rank the training pool (the base data folder plus reviewed studies, minus unusable "
        "and excluded images) by how likely each label is wrong, with out-of-fold predictions "
        "of a linear head on frozen ImageNet EfficientNet-Lite0 features (ml.cleaning), and "
        "store the ranking for the cleaning page. Test and held-out sets are never passed in."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--data",
            type=Path,
            default=Path(settings.TRAINING_BASE_DATA) if settings.TRAINING_BASE_DATA else None,
            help="Base training folder (NORMAL/, PNEUMONIA/); default: TRAINING_BASE_DATA.",
        )
        parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds.")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the folds.")
        parser.add_argument(
            "--checkpoint", default=None, help="Use this checkpoint's body for the features."
        )

    def handle(self, *args, data: Path | None, folds: int, seed: int, checkpoint, **options):
        if data is not None and not data.is_dir():
            raise CommandError(f"No such folder: {data}")
        try:
            run = services.cleaning_run_create(
                base_data=data, folds=folds, seed=seed, checkpoint=checkpoint
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Cleaning run {run.pk}: {run.n_items} images ranked, {run.n_issues} flagged as "
            "likely mislabeled; review them on /cleaning/."
        )
