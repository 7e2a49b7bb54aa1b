"""The measurements of `manage.py bench` (one table of inference speed on this machine):
model-only rows per runtime, preprocessing rows, and the end-to-end rows on a platform this
module starts or one started separately. The command parses and prints; this measures."""

from __future__ import annotations

import io
import os
import random
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.management.base import CommandError

from diagnosis import model_loader

# What the table's platform row reports of the worker's configuration (see settings.py).
WORKER_VARIABLES = (
    "INFERENCE_RUNTIME", "INFERENCE_DEVICE", "INFERENCE_THREADS", "PREDICTION_BATCH_SIZE",
    "PREDICTION_HEATMAPS",
)  # fmt: skip


def _median_seconds(fn, *, warmup: int = 2, repeats: int = 7) -> float:
    from ml.bench import median_seconds

    return median_seconds(fn, warmup=warmup, repeats=repeats)


# ------------------------------------------------------------------ model only


def predictors(version, runtime: str, paths: list[Path], tmp: str):
    """(predictor, note) for `runtime`: the accepted artifact when there is one, else one
    built here for timing (its accuracy not gated: note says so)."""
    from ml.core import Preprocessing
    from ml.inference import Predictor
    from ml.runtimes import OnnxPredictor, build_artifact

    checkpoint = model_loader.model_path(version)
    if runtime in ("torch", "torch-bf16"):
        precision = "bf16" if runtime == "torch-bf16" else "fp32"
        gated = runtime == "torch" or version.runtimes.filter(runtime=runtime).exists()
        note = "" if gated else " (not gated)"
        return Predictor.from_checkpoint(checkpoint, precision=precision), note
    artifact = version.runtimes.filter(runtime=runtime).first()
    if artifact is not None:
        path, note = Path(model_loader.artifact_path(artifact)), ""
    else:
        calibration = random.Random(0).sample(paths, min(128, len(paths)))
        path = build_artifact(
            checkpoint, runtime, Path(tmp) / f"{runtime}.onnx", calibration=calibration
        )
        note = " (not gated)"
    pre = Preprocessing.from_dict(version.preprocessing)
    predictor = OnnxPredictor(
        path, pre, version.threshold, version.class_names, version.positive_class,
        threads=settings.INFERENCE_THREADS, subtype=version.subtype_question,
    )  # fmt: skip
    return predictor, note


def model_rows(version, runtimes, paths: list[Path], rows) -> dict:
    """`paths`: the --images JPEGs (int8 calibration, the decode + model rows)."""
    import numpy as np

    size = version.preprocessing["input_size"]
    throughput: dict[str, float] = {}
    reference: dict[int, float] = {}
    # What the platform rows upload: is decoding worth overlapping with the forward pass?
    uploads = [path.read_bytes() for path in paths[:64]] if len(paths) >= 16 else []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            predictor, note = predictors(version, runtime, paths, tmp)
            figures = []
            for batch in (1, 16):
                x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
                if runtime.startswith("torch"):
                    import torch

                    tensor = torch.from_numpy(x)
                    seconds = _median_seconds(
                        lambda t=tensor, p=predictor: p.positive_probabilities(t)
                    )
                else:
                    seconds = _median_seconds(lambda a=x, p=predictor: p.positive_probabilities(a))
                rate = batch / seconds
                reference.setdefault(batch, rate)  # the first runtime: torch fp32
                figures.append(f"b{batch} {rate:.1f} img/s ({rate / reference[batch]:.2f}x)")
                if batch == 16:
                    throughput[runtime] = rate
            rows.append((f"model only, {runtime}{note}", "; ".join(figures)))
            if uploads:
                serial, overlapped = _decode_rates(predictor, uploads)
                rows.append((
                    f"decode + model, {runtime}, b16 ({len(uploads)} of --images)",
                    f"one after the other {serial:.1f} img/s "
                    f"({serial / throughput[runtime]:.2f}x model only); next batch decoded "
                    f"on a second thread meanwhile {overlapped:.1f} img/s",
                ))  # fmt: skip
    peak_rows(version, throughput, rows)
    return throughput


def peak_rows(version, throughput: dict[str, float], rows) -> None:
    """Each runtime's batch-16 rate as a share of the CPU's fp32 peak from its units and of a
    measured fp32 GEMM (ml.peak): where the clock /proc/cpuinfo reports is a base clock the
    cores boost above, the GEMM is the higher, truer bar."""
    from ml.checkpoint import load_checkpoint
    from ml.peak import cpu_peak, gemm_gflops, model_flops

    model, _ = load_checkpoint(model_loader.model_path(version), map_location="cpu")
    flops = model_flops(model, version.preprocessing["input_size"])
    peak, gemm = cpu_peak(), gemm_gflops()
    rows.append((
        "CPU fp32 peak, from its units (ml.peak)",
        f"{peak.describe()}; a 2048x2048 fp32 GEMM measured {gemm:.0f} GFLOP/s "
        f"({gemm / peak.gflops:.0%})",
    ))  # fmt: skip
    for runtime, rate in throughput.items():
        achieved = rate * flops / 1e9
        rows.append((
            f"share of the fp32 peak, {runtime} b16",
            f"{rate:.1f} img/s x {flops / 1e9:.3f} GFLOP = {achieved:.0f} GFLOP/s = "
            f"{achieved / peak.gflops:.0%} of the peak, {achieved / gemm:.0%} of the GEMM",
        ))  # fmt: skip


# ------------------------------------------------------------------ preprocessing


def preprocessing_rows(version, folder: Path, rows) -> None:
    from ml.core import Preprocessing, image_to_array, open_image
    from ml.dicom import read_dicom

    pre = Preprocessing.from_dict(version.preprocessing)
    jpegs = sorted(folder.rglob("*.jpeg")) if folder.is_dir() else []
    if not jpegs:
        rows.append(("preprocessing", f"skipped: no JPEGs under {folder}"))
        return
    datas = [p.read_bytes() for p in jpegs]

    def jpeg_all():
        for data in datas:
            image_to_array(open_image(data, size=pre.input_size), pre)

    ms = _median_seconds(jpeg_all, warmup=1, repeats=3) * 1000 / len(datas)
    rows.append((f"preprocessing, full-resolution JPEG ({len(datas)} images)", f"{ms:.1f} ms/img"))
    dicom = _dicom_from(jpegs[0])

    def dicom_one():
        image_to_array(read_dicom(io.BytesIO(dicom), max_pixels=10**9).image, pre)

    ms = _median_seconds(dicom_one, warmup=1, repeats=5) * 1000
    rows.append(("preprocessing, 16-bit DICOM of the same size", f"{ms:.1f} ms/img"))


# ------------------------------------------------------------------ the platform


def own_platform_rows(
    worker_env: dict[str, str], e2e: tuple, rows, say=print, pacs: dict | None = None,
    s3: dict | None = None, retrain: dict | None = None,
) -> None:  # fmt: skip
    """The end-to-end rows on a platform started here, as children sharing this command's
        database, media folder and broker; stopped however the measurement ends. With `s3`
        ({"version", "n_outage"}), the S3 rows after them (s3_rows); with `retrain`
    ({"base_data", "params"}), the retrain rows (retrain_rows)."""
    from django.db import connection

    from bench.launch import PlatformError, database_url, platform

    env = {
        # The benchmark measures the platform, not its throttles: the idle rows poll a
        # study many times a second and one account uploads a client's whole share.
        "API_USER_RATE": "100000/min",
        "UPLOAD_RATE": "100000/min",
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "VAR_DIR": str(settings.VAR_DIR),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-bench-{os.getpid()}"
    logs = Path(settings.VAR_DIR) / "log"
    config = {k: os.environ[k] for k in WORKER_VARIABLES if k in os.environ} | worker_env
    say(f"Starting the platform (queue {queue}, logs {logs}/bench-*.log)")
    try:
        with platform(env, queue=queue, log_dir=logs, worker_env=worker_env) as running:
            say(
                f"Web server pid {running.web.proc.pid} at {running.url}, "
                f"worker pid {running.worker.proc.pid}: ready"
            )
            web = f"gunicorn {running.web_workers} x {running.web_threads} threads"
            described = ", ".join(f"{k}={v}" for k, v in config.items()) or "the defaults"
            rows.append(("platform", f"started here: {web}, one worker ({described})"))
            held = partial(_held, running.worker_name, queue)
            local = platform_rows(
                running.url, *e2e, rss=running.peak_rss_mb, held=held,
                worker_log=running.worker.log,
            )  # fmt: skip
            if pacs and (pacs["n_idle"] or pacs["n_burst"]):
                from bench.pacs import pacs_rows

                n_idle, n, n_backlog, paths = e2e[0], e2e[1], e2e[2], e2e[4]
                unused = paths[n + n_backlog : len(paths) - n_idle]  # none uploaded above
                pacs_rows(running, unused, rows, say=say, **pacs)
            if retrain:
                fresh = e2e[4][len(e2e[4]) // 2 : len(e2e[4]) - e2e[0]]  # uploaded by no row
                retrain_rows(running, queue, fresh, rows, say=say, **retrain)
        if s3 and local:
            s3_rows(env, worker_env, queue, e2e, local, rows, say=say, **s3)
    except PlatformError as exc:
        raise CommandError(f"The platform did not start: {exc}") from exc
    finally:
        _delete_queue(queue)


def s3_rows(env, worker_env, queue, e2e, local, rows, *, version, n_outage, say=print) -> None:
    """The same platform with its files in S3 (a SeaweedFS server started here, its own
    model cache): the worker's drain of the same held backlog, against `local`'s; then, with
    the sweeper running, a burst of `n_outage` uploads during which the S3 server is
    stopped for 30 s: how many uploads were refused (503), and whether every accepted one
    was predicted, once."""
    import threading
    import time

    from storages.backends.s3 import S3Storage

    from bench.launch import platform
    from bench.load import backlog as held_backlog
    from bench.load import bench_tokens, burst, idle
    from diagnosis.models import Prediction
    from pneumo_site.storages import s3_storage
    from scripts.seaweed import SeaweedProcess

    _, n, n_backlog, c, paths, _, _ = e2e
    # Images no other row uploaded (the same bytes again would be a duplicate of a study).
    fresh = paths[n + n_backlog : n + 2 * n_backlog + 1 + n_outage]
    warm, backlog, outage = fresh[:1], fresh[1 : n_backlog + 1], fresh[n_backlog + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedProcess(
            Path(tmp) / "s3", bucket="pneumo-bench", access_key="bench", secret_key="bench-key-1"
        )
        with server:
            url = f"s3://{server.bucket}/bench"
            bucket = S3Storage(**s3_storage(
                url, endpoint_url=server.endpoint_url, access_key=server.access_key,
                secret_key=server.secret_key,
            )["OPTIONS"])  # fmt: skip
            # What the worker reads of the model, under the names the rows give.
            for name in [version.file, *(a.file for a in version.runtimes.all() if a.file)]:
                with default_storage.open(name, "rb") as fh:
                    bucket.save(name, fh)
            s3_env = {
                "STORAGE_URL": url, "AWS_S3_ENDPOINT_URL": server.endpoint_url,
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key, "STORAGE_TIMEOUT_SECONDS": "5",
                "MODEL_CACHE_DIR": str(Path(tmp) / "model-cache"),
                "SCRATCH_DIR": str(Path(tmp) / "scratch"),
                # The sweeper sends predictions held back by the outage again after 10 s.
                "PREDICTION_REQUEUE_AFTER": "10", "SWEEP_INTERVAL_SECONDS": "5",
            }  # fmt: skip
            logs = Path(settings.VAR_DIR) / "log" / "s3"  # beside the first platform's logs
            say(
                f"Starting the platform again with its files in S3 ({server.endpoint_url}), "
                f"logs {logs}/bench-*.log"
            )
            with platform(
                env | s3_env, queue=f"{queue}-s3", log_dir=logs, worker_env=worker_env,
                beat=True,
            ) as running:  # fmt: skip
                tokens = bench_tokens(c + 1)
                if not idle(running.url, tokens.pop(), warm, timeout=180):
                    raise CommandError("The first upload with S3 storage got no prediction.")
                held = partial(_held, running.worker_name, f"{queue}-s3")
                b = held_backlog(running.url, tokens, backlog, held=held)
                rows.append((
                    f"worker drain, files in S3 (SeaweedFS, same machine), {n_backlog} held",
                    f"{b['drain_per_s']:.2f} predictions/s = "
                    f"{b['drain_per_s'] / local['drain_per_s']:.2f} x the local files' drain; "
                    f"accepted {b['accepted']}, errors {len(b['errors'])}, lost {b['lost']}",
                ))  # fmt: skip
                rows += drain_log_row(
                    "worker drain, files in S3: its log", running.worker.log, b["released"]
                )
                if not n_outage:
                    return
                result: dict = {}
                batch = outage
                uploading = threading.Thread(
                    target=lambda: result.update(burst(running.url, tokens, batch, timeout=600))
                )
                uploading.start()
                time.sleep(1.0)
                server.stop()
                time.sleep(30)
                server.start()
                uploading.join()
            # urllib raises HTTPError for a 503: "NAME: HTTP Error 503: Service Unavailable".
            refused = [e for e in result["errors"] if "HTTP Error 503" in e]
            made = Prediction.objects.filter(study_id__in=result["studies"])
            rows.append((
                f"S3 stopped 30 s during a burst of {len(batch)} uploads",
                f"accepted {result['accepted']}, refused with 503 {len(refused)}, other errors "
                f"{len(result['errors']) - len(refused)}; predicted {result['done']}, failed "
                f"{result['failed']}, lost {result['lost']}; predictions per study "
                f"{made.count()}/{len(result['studies'])}, tried again after the outage "
                f"{made.filter(attempts__gt=1).count()}",
            ))  # fmt: skip


def drain_log_row(label: str, worker_log: Path, released) -> list[tuple[str, str]]:
    """The row (none when no batch was logged) of where a held backlog's drain spent its
    time, read from the worker's log from its release on (bench.load.drain_breakdown)."""
    from bench.load import drain_breakdown

    spent = drain_breakdown(worker_log.read_text(), released)
    if not spent:
        return []
    ms = spent["ms"]
    return [(
        f"{label}, from the release to its last batch",
        f"{spent['batches']} batches of {spent['mean_size']:.1f} on average; "
        f"decoding and the forward pass {spent['predict_share']:.0%} of that time; "
        f"per batch claim {ms['claim']:.0f} ms, read {ms['read']:.0f} ms, "
        f"predict {ms['predict']:.0f} ms, record {ms['record']:.0f} ms",
    )]  # fmt: skip


def platform_rows(
    url, n_idle, n, n_backlog, c, paths, throughput, rows, *, rss, held=None, worker_log=None
):
    """The end-to-end rows; returns the held backlog's figures (bench.load.backlog), if any.
    `worker_log`: the worker's log file, for where the held backlog's drain spent its time."""
    from bench.load import backlog as held_backlog
    from bench.load import bench_tokens, burst, idle, ps

    tokens = bench_tokens(c + 1)
    # One upload first, not measured: the worker loads the model on its first task.
    try:
        warm = idle(url, tokens.pop(), paths[:1], timeout=180)
    except OSError as exc:  # an HTTP error too
        raise CommandError(f"The first upload to {url} failed: {exc}") from exc
    if not warm:
        raise CommandError(f"The first upload to {url} got no prediction within 180 s.")
    latencies = idle(url, tokens[0], paths[len(paths) - n_idle :])
    rows.append(("upload -> prediction at idle p50 / p95 (s)", ps(latencies, (50, 95), ".3f")))
    r = burst(url, tokens, paths[:n])
    runtime = ",".join(r["runtimes"]) or "?"
    rows += [
        (f"burst: {n} uploads from {c} clients, accepted",
         f"{r['accepted']} ({r['uploads_per_s']:.1f}/s)"),
        ("burst: upload latency p50 / p95 (s)", ps(r["upload_latency"], (50, 95), ".3f")),
        (f"burst: drained (worker runtime {runtime})",
         _against(r["drain_per_s"], runtime, throughput)),
        ("burst: upload -> prediction p50 / p95 (s)", ps(r["to_prediction"], (50, 95), ".1f")),
        ("burst: errors / lost studies", f"{len(r['errors'])} / {r['lost']}"),
    ]  # fmt: skip
    b = None
    if n_backlog and held is not None:
        b = held_backlog(url, tokens, paths[n : n + n_backlog], held=held)
        runtime = ",".join(b["runtimes"]) or "?"
        rows.append((
            f"worker drain: {n_backlog} uploads queued, worker held, then released",
            f"{_against(b['drain_per_s'], runtime, throughput)} ({runtime}); "
            f"accepted {b['accepted']}, errors {len(b['errors'])}, lost {b['lost']}",
        ))  # fmt: skip
        if worker_log:
            rows += drain_log_row("worker drain: its log", worker_log, b["released"])
    else:  # the worker's pace, roughly, without a held backlog to measure it on (--url)
        rate = r["backlog_per_s"]
        rows.append((
            "burst: backlog drained after the last upload",
            "no backlog: the worker kept pace with the uploads"
            if rate is None else _against(rate, runtime, throughput),
        ))  # fmt: skip
    web, worker = rss()
    rows.append(("peak RSS web / worker (largest process)", f"{web:.0f} / {worker:.0f} MB"))
    return b


def refuse_a_backlog() -> None:
    """A worker's batch claims the oldest pending predictions of any study, so predictions
    already waiting in this database would be measured with the bench's own."""
    from diagnosis.models import Prediction

    waiting = Prediction.objects.filter(
        status__in=[Prediction.Status.PENDING, Prediction.Status.RUNNING]
    ).count()
    if waiting:
        raise CommandError(
            f"{waiting} predictions are pending or running in this database, and the worker "
            "would run them during the measurement. Let a worker finish them, or run the bench "
            "in a database of its own (VAR_DIR=/tmp/benchvar: migrate, then register_model)."
        )


def _decode_rates(predictor, sources: list[bytes], batch: int = 16) -> tuple[float, float]:
    """img/s of decoding and predicting `sources` a batch at a time: one step after the other
    (what the worker does), and with the next batch decoded on a second thread during each
    forward pass (a pipeline)."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [sources[k : k + batch] for k in range(0, len(sources) - batch + 1, batch)]

    def serial() -> None:
        for images in batches:
            predictor.positive_probabilities(predictor.inputs(images))

    def overlapped() -> None:
        with ThreadPoolExecutor(1) as pool:
            upcoming = pool.submit(predictor.inputs, batches[0])
            for following in [*batches[1:], None]:
                x = upcoming.result()
                if following is not None:
                    upcoming = pool.submit(predictor.inputs, following)
                predictor.positive_probabilities(x)

    n = batch * len(batches)
    return tuple(n / _median_seconds(fn, warmup=1, repeats=3) for fn in (serial, overlapped))


def _against(rate: float, runtime: str, throughput: dict[str, float]) -> str:
    """A drain rate and its ratio to the runtime's model-only batch-16 throughput."""
    ratio = rate / throughput[runtime] if runtime in throughput else float("nan")
    return f"{rate:.2f} predictions/s = {ratio:.2f} x model-only b16"


@contextmanager
def _held(worker: str, queue: str):
    """The worker stops taking tasks from `queue` while the block runs (Celery's remote
    control: cancel_consumer, then add_consumer); what is sent meanwhile waits in the broker."""
    from pneumo_site.celery import app

    replies = app.control.cancel_consumer(queue, destination=[worker], reply=True, timeout=10)
    if not replies:
        raise CommandError(f"The worker {worker} did not answer the request to hold it.")
    try:
        yield
    finally:
        app.control.add_consumer(queue, destination=[worker], reply=True, timeout=10)


def _delete_queue(name: str) -> None:
    """Delete the platform's own queue and the tasks still in it: those of predictions that
    another task's batch already made (they would do nothing), or those of a run cut short.
    No worker reads that queue again."""
    from kombu import Exchange, Queue

    from pneumo_site.celery import app

    with app.connection_for_write() as connection:
        # Declared first: the transport deletes only the bindings its channel knows of.
        queue = Queue(name, Exchange(name), routing_key=name, channel=connection.default_channel)
        queue.declare()
        queue.delete()


def _dicom_from(jpeg: Path) -> bytes:
    """A 16-bit MONOCHROME2 DICOM with the pixels of `jpeg` (what a DR system would send)."""
    from bench.pacs import as_dicom

    return as_dicom(jpeg, bits=16)


def retrain_rows(running, queue: str, paths: list[Path], rows, *, base_data: Path, params: dict,
                 say=print) -> None:  # fmt: skip
    """A training worker beside the platform's prediction worker, on the same cores: a retrain
    alone, then the same retrain while an upload arrives every 5 s, each timed to its
    prediction (what the training worker's yielding keeps short), and the two retrains'
    times."""
    import sys
    import time

    from bench.load import bench_tokens, idle
    from diagnosis import services
    from diagnosis.models import TrainingJob
    from diagnosis.services.gate import validation_split_get_or_create
    from pneumo_site.celery import app

    training_queue = f"{queue}-training"
    running.spawn(
        "training-worker",
        [sys.executable, "-m", "celery", "-A", "pneumo_site", "worker", "--concurrency", "1",
         "--loglevel", "INFO", "-Q", training_queue, "-n", f"bench-training-{os.getpid()}@%h"],
        running.child_env | {"TRAINING_BASE_DATA": str(base_data)},
    )  # fmt: skip
    validation_split_get_or_create(base_data=base_data)  # made once, before either run
    token = bench_tokens(1)[0]
    from diagnosis import selectors
    from diagnosis.roles import SYSTEM

    active = selectors.model_version_active()

    def retrain(upload_every: float | None) -> tuple[float, list[float], str]:
        job = services.training_job_create(user=SYSTEM, parameters=params, enqueue=False)
        app.send_task("diagnosis.tasks.retrain", (job.pk,), queue=training_queue, retry=False)
        latencies, uploads = [], iter(paths)
        while True:
            job.refresh_from_db()
            if job.status in (TrainingJob.Status.SUCCEEDED, TrainingJob.Status.FAILED):
                break
            if upload_every and job.status == TrainingJob.Status.RUNNING:
                latencies += idle(running.url, token, [next(uploads)], timeout=120)
                time.sleep(upload_every)
            else:
                time.sleep(0.5)
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise CommandError(f"The bench's retrain failed:\n{job.error}")
        if job.promoted:  # both runs start from, and predict with, the same model
            services.model_version_activate(version=active, user=SYSTEM, reason="bench")
        pauses = [line for line in job.log.splitlines() if "paused" in line]
        return (job.finished_at - job.started_at).total_seconds(), latencies, (pauses or [""])[-1]

    say(f"Retraining alone ({params})")
    alone, _, _ = retrain(None)
    say("Retraining again, an upload every 5 s")
    shared, latencies, paused = retrain(5.0)
    from bench.load import ps

    rows += [
        ("retrain alone (s)", f"{alone:.0f}"),
        ("retrain with an upload every 5 s (s)", f"{shared:.0f} = {shared / alone:.2f}x alone"),
        (f"upload -> prediction during that retrain, {len(latencies)} uploads, p50 / p95 (s)",
         ps(latencies, (50, 95), ".3f")),
        ("the training worker's last pause line", paused.strip() or "no pause"),
    ]  # fmt: skip
