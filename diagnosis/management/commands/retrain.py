from __future__ import annotations

import argparse
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnosis import selectors, services
from diagnosis.management.operators import actor
from diagnosis.models import TrainingJob
from diagnosis.services.training import TRAIN_FLAGS


def _ml_parser() -> argparse.ArgumentParser:
    from ml.train import get_args_parser

    return get_args_parser(add_help=False, source=False)


class Command(BaseCommand):
    help = (
        "Retrain: rank the training pool for cleaning, export it (base data + reviewed studies, "
        "cleaning decisions applied, the frozen validation split left out), fine-tune with "
        "ml.train (LR finder, frozen head, unfrozen with discriminative rates, one-cycle), "
        "evaluate the candidate and the active model on the same frozen validation split, "
        "register the candidate and promote it only if the gate passes (RETRAIN_GATE_*). "
        f"ml.train flags accepted: {', '.join('--' + f.replace('_', '-') for f in TRAIN_FLAGS)}."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # ml.train's own flags and help; only those given on the command line are passed on.
        ml = _ml_parser()
        ml.set_defaults(**dict.fromkeys(vars(ml.parse_args([]))))  # None: not given
        return super().create_parser(prog_name, subcommand, parents=[ml], **kwargs)

    def add_arguments(self, parser):
        parser.add_argument(
            "--init",
            choices=TrainingJob.Init.values,
            help="start from the active model (default when there is one) or ImageNet weights",
        )
        parser.add_argument(
            "--data",
            type=Path,
            help="base data folder, Kaggle layout (default: the TRAINING_BASE_DATA setting, "
            f"now {settings.TRAINING_BASE_DATA or 'empty: reviewed studies only'})",
        )
        parser.add_argument(
            "--skip-cleaning", action="store_true", help="do not rank the pool for cleaning first"
        )
        parser.add_argument(
            "--enqueue", action="store_true", help="send it to the training worker and return"
        )
        parser.add_argument("--user", default="", help="admin recorded as the one who retrained")

    def handle(self, *args, init, data, skip_cleaning, enqueue, user, **options):
        # --limit-per-class is retrain's own: it limits the base images, never the reviews.
        limit_per_class = options.pop("limit_per_class", None)
        given = {k for k in vars(_ml_parser().parse_args([])) if options.get(k) is not None}
        if given - set(TRAIN_FLAGS):
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given - set(TRAIN_FLAGS)))
            raise CommandError(f"retrain sets these itself: {flags}")
        parameters = {k: options[k] for k in TRAIN_FLAGS if k in given}
        parameters["clean"] = not skip_cleaning
        if data is not None:
            if not data.is_dir():
                raise CommandError(f"No such folder: {data}")
            parameters["base_data"] = str(data.resolve())
        if limit_per_class:
            parameters["limit_per_class"] = limit_per_class
        if init is None:
            init = "active" if selectors.model_version_active() else "imagenet"
        try:
            job = services.training_job_create(
                user=actor(user), init=init, parameters=parameters, enqueue=enqueue
            )
        except (ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        if enqueue:
            self.stdout.write(f"Training job {job.pk} sent to queue {settings.TRAINING_QUEUE}.")
            return
        job = services.training_job_run(job.pk, echo=self.stdout)
        if job.status == TrainingJob.Status.FAILED:
            raise CommandError(f"Training job {job.pk} failed: {job.error}")
        verdict = job.candidate.gate
        state = "promoted and active" if job.promoted else "kept as a candidate"
        self.stdout.write(f"{job.candidate.name}: {state} ({verdict['reason']})")
