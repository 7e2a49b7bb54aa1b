"""`manage.py bench` starts the platform as its own children (gunicorn and one prediction
worker on the real broker, sharing the test database and media folder), measures the
end-to-end rows on it and stops it, leaving no process behind, also when it fails."""

from __future__ import annotations

import math
import os
import shutil

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Q

from bench.launch import PlatformError, platform, processes_of
from diagnosis.models import ModelVersion, Prediction, TrainingJob
from diagnosis.roles import SYSTEM
from tests.conftest import make_checkpoint
from tests.synthetic import write_dataset

pytestmark = pytest.mark.e2e


@pytest.fixture
def bench_model(transactional_db, broker, tmp_path):
    from diagnosis import services

    # 64 px: the model-only rows and the worker's predictions take little of the two cores.
    path = make_checkpoint(tmp_path / "bench-e2e.pt", input_size=64)
    return services.model_version_register(path=path, name="bench-e2e", activate=True, user=SYSTEM)


@pytest.fixture
def bench_args(tmp_path) -> list[str]:
    write_dataset(tmp_path / "train", 10, size=64, seed=3)  # 20 distinct JPEGs
    return [
        "--runtimes", "torch", "--images", str(tmp_path / "train"),
        "--full-resolution", str(tmp_path / "none"), "--idle", "2", "-n", "4", "-c", "2",
        "--backlog", "4", "--pacs-idle", "2", "--pacs-burst", "4", "--pacs-senders", "2",
    ]  # fmt: skip


def table_rows(out: str) -> dict[str, str]:
    rows = [line.strip("|").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    return {name.strip(): value.strip() for name, value in rows}


def test_it_measures_the_end_to_end_rows_on_a_platform_of_its_own(bench_model, bench_args, capsys):
    call_command("bench", *bench_args, "--worker-env", "PREDICTION_HEATMAPS=false")

    rows = table_rows(capsys.readouterr().out)
    assert "PREDICTION_HEATMAPS=false" in rows["platform"]
    accepted = int(rows["burst: 4 uploads from 2 clients, accepted"].split(" (")[0])
    errors, lost = (int(x) for x in rows["burst: errors / lost studies"].split(" / "))
    # Every upload accounted for, none lost. On SQLite an upload may meet "database is locked"
    # while the worker writes: the bench counts it as an error, as it should.
    assert lost == 0 and accepted + errors == 4 and accepted > 0
    if connection.vendor != "sqlite":
        assert errors == 0
    assert "burst: drained (worker runtime torch)" in rows
    # The backlog uploaded while the worker was held, then drained once it was released.
    drain = rows["worker drain: 4 uploads queued, worker held, then released"]
    held = dict(part.split(" ") for part in drain.split("; ")[1].split(", "))
    assert "x model-only b16 (torch)" in drain and held["lost"] == "0"
    assert int(held["accepted"]) + int(held["errors"]) == 4
    accepted += int(held["accepted"])
    # Where the drain's time went, from the worker's own log.
    spent = rows["worker drain: its log, from the release to its last batch"]
    assert " batches of " in spent and "of that time; per batch claim " in spent
    p50, p95 = (float(x) for x in rows["upload -> prediction at idle p50 / p95 (s)"].split(" / "))
    assert 0 < p50 <= p95
    web, worker = rows["peak RSS web / worker (largest process)"].removesuffix(" MB").split(" / ")
    assert not math.isnan(float(web)) and float(worker) > float(web) > 0
    # The PACS rows (Orthanc installed, as in CI): a warm-up study and two at idle, each timed
    # to its report; four in the burst from two senders, each reported once.
    pacs = 0
    if shutil.which("Orthanc"):
        idle = rows[
            "PACS: C-STORE end -> report in Orthanc, 2 studies one at a time, p50 / p95 (s)"
        ]
        assert 0 < float(idle.split(" / ")[0]) <= float(idle.split(" / ")[1].split(" ")[0])
        assert rows["PACS burst: predictions done; studies with 1 report / 0 / more than 1"] == (
            "4; 4 / 0 / 0"
        )
        pacs = 1 + 2 + 4
    # One warm-up upload, two at idle, the burst's (and the PACS studies): all predicted by
    # the worker...
    assert Prediction.objects.filter(status="done", runtime="torch").count() == 3 + accepted + pacs
    # ...which had the variable: no heatmap drawn nor owed (by default each prediction gets one,
    # drawn at once or owed until the worker is idle).
    assert not Prediction.objects.filter(Q(heatmap_due=True) | ~Q(heatmap="")).exists()
    assert processes_of(os.getpid()) == []


def test_it_stops_the_web_server_when_the_worker_does_not_start(tmp_path):
    bad = {"INFERENCE_THREADS": "many"}
    with (
        pytest.raises(PlatformError, match="the worker exited") as failure,
        platform(dict(os.environ), queue="unused", log_dir=tmp_path, worker_env=bad),
    ):
        pytest.fail("the platform started")

    assert "INFERENCE_THREADS must be an integer" in str(failure.value)  # the worker's log
    assert processes_of(os.getpid()) == []  # the web server too is stopped


def test_it_refuses_worker_variables_without_a_platform_to_start(db):
    with pytest.raises(CommandError, match="--worker-env is for the platform"):
        call_command("bench", "--no-platform", "--worker-env", "PREDICTION_HEATMAPS=false")


def test_with_s3_it_measures_the_drain_against_local_files_and_an_outage(
    bench_model, s3_server, tmp_path, capsys
):
    """The S3 rows: the same held backlog drained with the files in a SeaweedFS the command
    starts, and a burst during which that server is stopped for 30 s: every accepted upload
    predicted once, the rest refused with a 503."""
    write_dataset(tmp_path / "more", 8, size=64, seed=4)  # 16 distinct JPEGs
    call_command(
        "bench", "--runtimes", "torch", "--images", str(tmp_path / "more"),
        "--full-resolution", str(tmp_path / "none"), "--idle", "1", "-n", "2", "-c", "2",
        "--backlog", "3", "--pacs-idle", "0", "--pacs-burst", "0", "--s3", "--s3-outage", "6",
        "--worker-env", "PREDICTION_HEATMAPS=false",
    )  # fmt: skip

    rows = table_rows(capsys.readouterr().out)
    drain = rows["worker drain, files in S3 (SeaweedFS, same machine), 3 held"]
    assert "x the local files' drain" in drain and drain.endswith("errors 0, lost 0")
    spent = rows["worker drain, files in S3: its log, from the release to its last batch"]
    assert " batches of " in spent and "of that time; per batch claim " in spent
    outage = rows["S3 stopped 30 s during a burst of 6 uploads"]
    figures = dict(
        part.rsplit(" ", 1) for piece in outage.split("; ") for part in piece.split(", ")
    )
    accepted, refused = int(figures["accepted"]), int(figures["refused with 503"])
    assert accepted + refused + int(figures["other errors"]) == 6
    assert int(figures["predicted"]) == accepted and figures["lost"] == "0"
    assert figures["predictions per study"] == f"{accepted}/{accepted}"
    assert processes_of(os.getpid()) == []


def test_s3_rows_need_a_backlog_and_no_pacs_rows(db):
    with pytest.raises(CommandError, match="--s3 needs"):
        call_command("bench", "--no-platform", "--s3")


def test_with_retrain_it_times_a_retrain_alone_and_beside_predictions(
    bench_model, tmp_path, capsys
):
    """The retrain rows: a training worker beside the prediction worker, a retrain alone and
    one during which an upload arrives every 5 s, each upload timed to its prediction; the
    candidates never stay active (both runs start from the same model)."""
    write_dataset(tmp_path / "base", 16, size=64, seed=6)  # 32 distinct JPEGs, the base set
    call_command(
        "bench", "--runtimes", "torch", "--images", str(tmp_path / "base"),
        "--full-resolution", str(tmp_path / "none"), "--idle", "1", "-n", "2", "-c", "2",
        "--backlog", "2", "--pacs-idle", "0", "--pacs-burst", "0", "--retrain", "8",
        "--worker-env", "PREDICTION_HEATMAPS=false",
    )  # fmt: skip

    rows = table_rows(capsys.readouterr().out)
    alone = float(rows["retrain alone (s)"])
    shared, ratio = rows["retrain with an upload every 5 s (s)"].split(" = ")
    # Both times are printed to the second: their ratio to within that rounding.
    assert alone > 0 and abs(float(ratio.removesuffix("x alone")) - float(shared) / alone) < 0.1
    (during,) = [k for k in rows if k.startswith("upload -> prediction during that retrain")]
    assert all(float(x) > 0 for x in rows[during].split(" / ") if x != "nan")
    assert TrainingJob.objects.filter(status="succeeded").count() == 2
    assert ModelVersion.objects.get(is_active=True) == bench_model
    assert processes_of(os.getpid()) == []
