from __future__ import annotations

import argparse
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from diagnosis import selectors
from diagnosis.models import ModelVersion

SHARED = Path(settings.BASE_DIR).parent / "shared" / "data"  # the real data, beside the checkout


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class Command(BaseCommand):
    help = (
        "One table of inference speed on this machine: model-only img/s at batch 1 and 16 for "
        "each runtime with its ratio to PyTorch eager fp32, preprocessing ms per full-resolution "
        "JPEG and per DICOM, then upload -> prediction latency at idle, a burst's drain rate "
        "against the model-only batch-16 throughput, errors, lost studies and peak RSS of the "
        "web and worker processes. For those it starts the platform as its own children "
        "(gunicorn as scripts/up.sh starts it and one prediction worker, with this command's "
        "settings and environment) and stops them at the end; --url measures a platform "
        "started separately (make up) instead, --no-platform skips them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", default="", help="model version (default: the active)")
        parser.add_argument(
            "--runtimes", default="torch,torch-bf16,onnx-fp32,onnx-int8",
            help="runtimes of the model-only rows; the first is the ratios' reference",
        )  # fmt: skip
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            "--url", default="", help="a running platform (make up) for the end-to-end rows, "
            "instead of the one this command starts",
        )  # fmt: skip
        where.add_argument(
            "--no-platform", action="store_true",
            help="only the model-only and preprocessing rows",
        )  # fmt: skip
        parser.add_argument(
            "--worker-env", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
            help="set a variable for the worker this command starts (INFERENCE_RUNTIME, "
            "PREDICTION_HEATMAPS, PREDICTION_BATCH_SIZE, ...); repeatable. Otherwise the web "
            "server and the worker inherit this command's environment.",
        )  # fmt: skip
        parser.add_argument("--idle", type=int, default=20, help="uploads one at a time")
        parser.add_argument("-n", type=int, default=500, help="uploads in the burst")
        parser.add_argument("-c", type=int, default=20, help="clients in the burst")
        parser.add_argument(
            "--backlog", type=int, default=500,
            help="uploads queued while the worker is held, then drained by it (the worker's "
            "own drain rate; the platform this command starts only; 0: none)",
        )  # fmt: skip
        parser.add_argument(
            "--pacs-idle", type=int, default=20,
            help="studies C-STOREd one at a time into an Orthanc this command starts, each timed "
            "to its report in Orthanc (the platform this command starts only; 0: none)",
        )  # fmt: skip
        parser.add_argument(
            "--s3",
            action="store_true",
            help="then again with the files in S3 (a SeaweedFS this command starts): the held "
            "backlog's drain against the local one's, and an S3 outage during a burst",
        )
        parser.add_argument(
            "--retrain", type=int, default=0, metavar="IMAGES_PER_CLASS",
            help="also retrain (1 frozen + 1 unfrozen epoch on this many --images per class) "
            "alone, then while an upload arrives every 5 s (the training worker yielding)",
        )  # fmt: skip
        parser.add_argument(
            "--s3-outage", type=int, default=100, help="uploads in the burst S3 stops during"
        )
        parser.add_argument("--pacs-burst", type=int, default=200, help="studies in the PACS burst")
        parser.add_argument("--pacs-senders", type=int, default=4, help="senders of the burst")
        parser.add_argument(
            "--images", type=Path, default=SHARED / "chest_xray" / "train",
            help="JPEGs to upload (n + idle distinct ones) and to calibrate int8 with",
        )  # fmt: skip
        parser.add_argument(
            "--full-resolution", type=Path, default=SHARED / "full_resolution",
            help="JPEGs of the preprocessing rows",
        )  # fmt: skip

    def handle(self, *args, model, runtimes, url, no_platform, worker_env, **options):
        from bench import speed

        if worker_env and (url or no_platform):
            raise CommandError("--worker-env is for the platform this command starts.")
        if options["s3"] and (
            url or no_platform or not options["backlog"] or options["pacs_idle"]
            or options["pacs_burst"]
        ):  # fmt: skip
            raise CommandError(
                "--s3 needs the platform this command starts, a --backlog, and "
                "--pacs-idle 0 --pacs-burst 0 (it uploads images of its own)"
            )
        version = (
            ModelVersion.objects.filter(name=model).first()
            if model
            else selectors.model_version_active()
        )
        if version is None:
            raise CommandError("No such model version, and none is active.")
        if not no_platform:
            speed.refuse_a_backlog()
        images, n, n_idle = options["images"], options["n"], options["idle"]
        n_backlog = 0 if url else options["backlog"]
        paths = sorted(images.rglob("*.jpeg")) if images.is_dir() else []
        n_pacs = 0 if (url or no_platform) else options["pacs_idle"] + options["pacs_burst"] + 1
        if options["s3"]:
            n_pacs = n_backlog + 1 + options["s3_outage"]  # the images of the S3 rows
        if not no_platform and len(paths) < n + n_backlog + n_idle + n_pacs:
            raise CommandError(f"need {n + n_backlog + n_idle + n_pacs} images under {images}")
        size = version.preprocessing["input_size"]
        rows = [("model", f"{version.name} ({version.architecture}, {size} px)")]
        throughput = speed.model_rows(version, runtimes.split(","), paths, rows)
        speed.preprocessing_rows(version, options["full_resolution"], rows)
        e2e = (n_idle, n, n_backlog, options["c"], paths, throughput, rows)
        if url:
            from bench.load import peak_rss_mb

            rows.append(("platform", f"{url}, started separately"))
            # As scripts/up.sh names them: gunicorn, and the prediction worker predict@.
            speed.platform_rows(
                url, *e2e, rss=lambda: (peak_rss_mb("gunicorn")[0], peak_rss_mb("predict@")[0])
            )
        elif not no_platform:
            pacs = {"n_idle": options["pacs_idle"], "n_burst": options["pacs_burst"],
                    "senders": options["pacs_senders"]}  # fmt: skip
            s3 = {"version": version, "n_outage": options["s3_outage"]} if options["s3"] else None
            retrain = None
            if options["retrain"]:
                params = {"freeze_epochs": 1, "epochs": 1, "clean": False,
                          "limit_per_class": options["retrain"]}  # fmt: skip
                retrain = {"base_data": images, "params": params}
            speed.own_platform_rows(
                dict(worker_env), e2e, rows, say=self.stderr.write, pacs=pacs, s3=s3,
                retrain=retrain,
            )  # fmt: skip
        from bench.load import table

        self.stdout.write(table(rows))
