"""Predictions: enqueued after commit, claimed once, swept when the broker lost them."""

from __future__ import annotations

import collections
import io
import logging
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, connections, transaction
from django.db.models import Exists, F, Q
from django.utils import timezone

from diagnosis import model_loader, selectors
from diagnosis.files import is_outage, read_many
from diagnosis.models import ModelVersion, Prediction
from diagnosis.services.outbox import deliveries_for_predictions
from pneumo_site.celery import app

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- predictions


def prediction_enqueue(prediction_id: int, *, covers: Iterable[int] = ()) -> bool:
    """Send the job to the broker. If the broker is down the prediction stays pending and
    the sweeper sends it later: an accepted upload is never lost. `covers`: other pending
    predictions this task's batch will take (predictions_sweep), marked as enqueued too."""
    try:
        app.send_task("diagnosis.tasks.predict", (prediction_id,), retry=False)
    except Exception:
        logger.warning(
            "Broker unavailable; prediction %s stays pending for the sweeper.",
            prediction_id,
            exc_info=True,
        )
        return False
    Prediction.objects.filter(pk__in=[prediction_id, *covers]).update(enqueued_at=timezone.now())
    return True


def predictions_sweep() -> int:
    """Enqueue again what should be queued but may not be: pending predictions not enqueued
    for PREDICTION_REQUEUE_AFTER (the broker was down, or lost its queue), and running ones
    whose worker held them past the lease (it died). Returns how many tasks were sent.

    A task takes its own prediction and the oldest pending others up to a batch
    (predictions_claim), so pending ones are sent one task per PREDICTION_BATCH_SIZE, oldest
    first: a backlog waiting longer than PREDICTION_REQUEUE_AFTER (a burst, a worker down for
    a while) costs each sweep a task per batch, not one per prediction, which would flood the
    queue and the worker with tasks that find nothing left to claim. A running prediction
    whose lease is over is claimed only by its own task: one each."""
    if selectors.model_version_active() is None:
        return 0  # Nothing can run; activation enqueues everything pending.
    now = timezone.now()
    stale = selectors.predictions_to_requeue(
        pending_before=now - timedelta(seconds=settings.PREDICTION_REQUEUE_AFTER),
        running_before=now - timedelta(seconds=settings.PREDICTION_LEASE_SECONDS),
    )
    rows = list(stale.order_by("created_at", "id").values_list("pk", "status"))
    pending = [pk for pk, status in rows if status == Prediction.Status.PENDING]
    batch = max(1, settings.PREDICTION_BATCH_SIZE)
    groups = [pending[start : start + batch] for start in range(0, len(pending), batch)]
    groups += [[pk] for pk, status in rows if status != Prediction.Status.PENDING]
    return sum(prediction_enqueue(group[0], covers=group[1:]) for group in groups)


def prediction_model_load() -> str | None:
    """Load the active model in this process now (a worker that has just started), so that
    its first prediction does not wait for it (seconds with torch). Returns the version's
    name, or None when no model is active."""
    version = selectors.model_version_active()
    if version is None:
        return None
    model_loader.predictor_for(version)
    return version.name


def predictions_claim(prediction_id: int | None, *, batch_size: int = 1) -> list[Prediction]:
    """Take predictions for this worker with conditional UPDATEs under one claim token: this
    task's own (unless another worker has it; None: no own one), then up to batch_size - 1
    other pending ones, oldest first. A duplicate delivery, or a second worker, finds nothing
    to claim. A running prediction whose lease is over (its worker died) can be claimed
    again."""
    with transaction.atomic():  # one commit for the claim
        token = _claim_rows(prediction_id, batch_size)
    return _claimed(token)


def _claimed(token: str) -> list[Prediction]:
    # Only what running and recording a batch reads: a backlog is drained a batch at a time,
    # and building full model instances was most of this query's time.
    return list(
        Prediction.objects.filter(claim=token)
        .select_related("study")
        .only("claim", "status", "created_at", "study__image", "study__site_id")
        .order_by("created_at")
    )


def _claim_rows(prediction_id: int | None, batch_size: int, *, version=None) -> str:
    """Claim rows (predictions_claim) inside the caller's transaction; returns the token.
    With `version`, nothing is claimed unless it is still the active model."""
    now = timezone.now()
    token = uuid.uuid4().hex
    take = {"status": Prediction.Status.RUNNING, "started_at": now, "claim": token,
            "attempts": F("attempts") + 1}  # fmt: skip
    own = 0
    if prediction_id is not None:
        lease_over = now - timedelta(seconds=settings.PREDICTION_LEASE_SECONDS)
        own = Prediction.objects.filter(
            Q(status=Prediction.Status.PENDING)
            | Q(status=Prediction.Status.RUNNING, started_at__lt=lease_over),
            pk=prediction_id,
        ).update(**take)
    # A task whose prediction another batch took fills a whole batch with others.
    room = batch_size - own
    if room > 0:
        pending = Prediction.objects.filter(status=Prediction.Status.PENDING)
        oldest = pending.exclude(pk=prediction_id).order_by("created_at", "id").values("pk")
        # One statement: the status condition is evaluated again on each row the UPDATE
        # takes, so a row another worker took meanwhile is not taken twice.
        rows = pending.filter(pk__in=oldest[:room])
        if version is not None:
            rows = rows.filter(Exists(ModelVersion.objects.filter(pk=version.pk, is_active=True)))
        rows.update(**take)
    return token


def prediction_run(prediction_id: int) -> Prediction | None:
    """Run the active model on the prediction's study, batched with other pending ones
    (PREDICTION_BATCH_SIZE), then, while predictions wait and for up to
    PREDICTION_DRAIN_SECONDS, on the next batch of the oldest pending ones (up to
    PREDICTION_DRAIN_BATCH_SIZE): a worker drains a backlog without a round trip through the
    broker between batches, and claims each next batch in the transaction that records the
    last. While a batch runs, a helper thread records the one before it and claims the next
    (and with PREDICTION_DRAIN_AHEAD=reads reads its images), so the forward pass does not
    wait for the database (_Ahead); inside a caller's transaction, which that thread could
    not see, the steps run in turn. Returns this task's prediction as it ended, or None when
    there was nothing to do for it (already taken, or no active model yet)."""
    version = selectors.model_version_active()
    if version is None:
        logger.info("No active model; prediction %s stays pending.", prediction_id)
        return None
    size = max(1, settings.PREDICTION_BATCH_SIZE)
    # Well inside the task's soft time limit, whatever the setting says.
    drain_for = min(settings.PREDICTION_DRAIN_SECONDS, settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    deadline = time.monotonic() + drain_for
    start = time.perf_counter()
    batch = predictions_claim(prediction_id, batch_size=size)
    mine = next((p for p in batch if p.pk == prediction_id), None)
    claimed = _Claimed(batch, {"claim": 1000 * (time.perf_counter() - start)})
    # Draining a backlog, bigger batches spread the claim and record over more images.
    # Inline heatmaps keep the batch size: Grad-CAM's memory grows with the batch.
    drain = size if settings.PREDICTION_HEATMAPS == "inline" else _drain_batch_size()
    helper = settings.PREDICTION_DRAIN_AHEAD != "off" and not connection.in_atomic_block
    with _Ahead(enabled=helper, reads=settings.PREDICTION_DRAIN_AHEAD == "reads") as ahead:
        owes_heatmaps = _drain(claimed, version, deadline, drain, ahead)
    if owes_heatmaps:
        transaction.on_commit(heatmaps_schedule)
    if mine is None:
        return None
    mine.refresh_from_db()
    return mine


def _drain_batch_size() -> int:
    return max(1, settings.PREDICTION_DRAIN_BATCH_SIZE or settings.PREDICTION_BATCH_SIZE)


@dataclass
class _Claimed:
    """A claimed batch on its way: its rows, their images once read (prediction id -> bytes
    or the exception reading raised), its results once run, and each step's milliseconds."""

    rows: list[Prediction]
    ms: dict = field(default_factory=dict)
    sources: dict | None = None
    results: dict | None = None
    runtime: str = ""

    def outage(self) -> bool:
        return any(_storage_outage(r) for r in (self.sources or {}).values())


class _Ahead:
    """One helper thread for a drain's database steps, and its storage reads with `reads`
    (its own connection, closed at the end); not `enabled`: none, and _drain runs those
    steps in turn in the caller's thread."""

    def __init__(self, *, enabled: bool, reads: bool = False):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="drain") if enabled else None
        self.reads = enabled and reads

    def __enter__(self) -> _Ahead:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.submit(connections.close_all).result()
            self.pool.shutdown()

    def start(self, work, *args) -> Future:
        """Run `work(*args)` on the helper thread (only when `enabled`)."""
        return self.pool.submit(work, *args)


def _drain(claimed: _Claimed, version, deadline: float, drain: int, ahead: _Ahead) -> bool:
    """Run claimed batches until none is left; returns whether any left heatmaps owed.

    With a helper thread: while batch N runs, the helper records batch N-1 and, in the same
    transaction, claims batch N+1 (and reads its images, with `ahead.reads`; else this
    thread reads them before running it). In turn (no helper): batch N is recorded, then N+1
    claimed, in one transaction, then read. The next batch is claimed only
    while the drain has time, the version is still the active one (_claim_rows), and the
    storage answered the batch now running (an outage sends its predictions back to pending
    for the sweeper: taking more at once would only meet it again). A model that cannot run
    ends the drain: a batch claimed meanwhile goes back to pending, with a task sent for it."""
    pipelined = ahead.pool is not None
    behind, owed = None, False
    while claimed.rows:
        if claimed.sources is None:
            _read(claimed)
        more = drain if time.monotonic() < deadline and not claimed.outage() else 0
        if pipelined:
            following = ahead.start(_record_and_claim, behind, version, more, ahead.reads)
            model_failed = _predict(claimed, version)
            next_claimed = following.result()
            behind = claimed
        else:
            model_failed = _predict(claimed, version)
            next_claimed = _record_and_claim(claimed, version, 0 if model_failed else more)
        owed |= any(_owes_heatmap(r) for r in claimed.results.values())
        if model_failed:
            _release(next_claimed.rows)
            break
        claimed = next_claimed
    if behind is not None:
        _record_and_claim(behind, version, 0)
    return owed


def _read(claimed: _Claimed) -> None:
    """Read every image of the batch in one call (parallel GETs from S3), each on its own: a
    damaged or missing file fails alone."""
    start = time.perf_counter()
    images = read_many([p.study.image.name for p in claimed.rows])
    claimed.sources = dict(zip([p.pk for p in claimed.rows], images, strict=True))
    claimed.ms["read"] = 1000 * (time.perf_counter() - start)


def _predict(claimed: _Claimed, version) -> bool:
    """Run the batch's images (claimed.results); returns whether the model itself failed
    (every prediction of the batch then fails with it)."""
    start = loaded = time.perf_counter()
    failed = False
    try:
        predictor = model_loader.predictor_for(version)
        claimed.runtime = predictor.runtime
        loaded = time.perf_counter()
        claimed.results = _run_batch(predictor, claimed.rows, version, claimed.sources)
    except Exception as exc:  # the model, not an image
        claimed.results = {p.pk: exc for p in claimed.rows}
        failed = True
    claimed.ms["load"] = 1000 * (loaded - start)
    claimed.ms["predict"] = 1000 * (time.perf_counter() - loaded)
    return failed


def _record_and_claim(claimed: _Claimed | None, version, more: int, read: bool = False) -> _Claimed:
    """Record `claimed` (when given) and claim up to `more` of the oldest pending predictions
    if `version` is still the active one, in one transaction; returns the next batch, its
    images read with `read`."""
    start = time.perf_counter()
    token = None
    with transaction.atomic():  # one commit for the batch and the next claim
        if claimed is not None:
            _record(claimed.rows, version, claimed.results, claimed.runtime)
        recorded = time.perf_counter()
        if more:
            token = _claim_rows(None, more, version=version)
    if claimed is not None:
        claimed.ms["record"] = 1000 * (recorded - start)
        _log_batch(claimed)
    following = _Claimed(_claimed(token) if token else [])
    following.ms["claim"] = 1000 * (time.perf_counter() - recorded)
    if following.rows and read:
        _read(following)
    return following


def _log_batch(claimed: _Claimed) -> None:
    ms = collections.defaultdict(float, claimed.ms)
    logger.info(
        "Batch of %d (%s): claim %.0f ms, load %.0f ms, read %.0f ms, predict %.0f ms, "
        "record %.0f ms",
        len(claimed.rows), claimed.runtime, ms["claim"], ms["load"], ms["read"],
        ms["predict"], ms["record"],
    )  # fmt: skip


def _release(rows: list[Prediction]) -> None:
    """Give back a batch claimed ahead but not run: pending again, its claim's attempt taken
    back, and a task sent for it once that is committed."""
    if not rows:
        return
    pks = [p.pk for p in rows]
    with transaction.atomic():
        Prediction.objects.filter(
            pk__in=pks, claim=rows[0].claim, status=Prediction.Status.RUNNING
        ).update(status=Prediction.Status.PENDING, claim="", started_at=None,
                 attempts=F("attempts") - 1)  # fmt: skip
        transaction.on_commit(lambda: prediction_enqueue(pks[0], covers=pks[1:]))


def _storage_outage(result) -> bool:
    return isinstance(result, Exception) and is_outage(result)


def _owes_heatmap(result) -> bool:
    return not isinstance(result, Exception) and result[1] == ""


def heatmaps_schedule() -> None:
    """Ask a worker to draw the owed heatmaps (heatmaps_draw, waiting for quiet). Each batch
    that leaves heatmaps owed asks; an ask that comes while predictions wait finds no quiet and
    leaves the drawing to a later one. A broker that cannot take the ask leaves them to the
    sweeper. No countdown: a task waiting for its time in the worker would be an unacknowledged
    message, which a broker outage then turns into a worker crash (kombu 5.7)."""
    try:
        app.send_task("diagnosis.tasks.draw_heatmaps", retry=False)
    except Exception:
        logger.warning("Broker unavailable; the sweeper draws the owed heatmaps.", exc_info=True)


def _quiet(quiet: float, *, wait: bool) -> bool:
    """Whether heatmaps may be drawn now: no prediction waits or runs, and none finished in
    the last `quiet` seconds. With `wait`, a recent finish is waited out (polling every 20 ms)
    unless a prediction comes meanwhile: predictions always go first."""
    busy = Prediction.objects.filter(
        status__in=[Prediction.Status.PENDING, Prediction.Status.RUNNING]
    )
    while not busy.exists():
        since = timezone.now() - timedelta(seconds=quiet)
        if quiet <= 0 or not Prediction.objects.filter(finished_at__gt=since).exists():
            return True
        if not wait:
            return False
        time.sleep(0.02)
    return False


def heatmaps_draw(*, quiet: float | None = None, wait: bool = False) -> int:
    """Draw the heatmaps still owed, a batch at a time, while predictions are quiet (none
    waiting or running, none finished in the last `quiet` seconds, by default
    PREDICTION_HEATMAP_QUIET_SECONDS; `wait` waits that out): a burst, or a run of uploads
    one after the other, is predicted first and explained after, and an upload arriving
    meanwhile waits for one batch of heatmaps at most. Stops after half the task time limit,
    leaving the rest to the next ask or the sweeper. Returns how many were drawn.

    Nothing is claimed: a heatmap is written only if still owed, so two workers drawing the
    same one waste a pass and keep one file. A worker killed here leaves them owed for the
    next batch or the sweeper. A failure (the model file gone) drops the batch's heatmaps: the
    predictions stand, and an explanation is not worth retrying for ever."""
    if quiet is None:
        quiet = settings.PREDICTION_HEATMAP_QUIET_SECONDS
    deadline = time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT / 2
    drawn = 0
    owed = Prediction.objects.filter(status=Prediction.Status.DONE, heatmap_due=True)
    while time.monotonic() < deadline and owed.exists() and _quiet(quiet, wait=wait):
        batch = list(
            owed.select_related("study", "model_version").order_by("finished_at", "id")[
                : max(1, settings.PREDICTION_BATCH_SIZE)
            ]
        )
        if not batch:
            break
        version = batch[0].model_version  # one model per pass
        batch = [p for p in batch if p.model_version_id == version.pk]
        try:
            predictor = model_loader.predictor_for(version)
            sources = read_many([p.study.image.name for p in batch])
            for failed in (s for s in sources if isinstance(s, Exception)):
                raise failed
            images, subtype_images = _heatmaps(predictor, sources)
        except Exception as exc:
            if is_outage(exc):  # still owed: the next ask or the sweeper draws them
                logger.warning("Storage unavailable; heatmaps wait: %r", exc)
                break
            logger.exception("Heatmaps of predictions %s dropped.", [p.pk for p in batch])
            owed.filter(pk__in=[p.pk for p in batch]).update(heatmap_due=False)
            continue
        for prediction, image, subtype_image in zip(batch, images, subtype_images, strict=True):
            name = _save_png(image, "heatmaps")
            subtype_name = "" if subtype_image is None else _save_png(subtype_image, "heatmaps")
            drew = owed.filter(pk=prediction.pk).update(
                heatmap=name, subtype_heatmap=subtype_name, heatmap_due=False
            )
            if drew:
                drawn += 1
            else:  # another worker drew them meanwhile
                for written in filter(None, (name, subtype_name)):
                    default_storage.delete(written)
    return drawn


def _answers_subtype(predictor) -> bool:
    return getattr(getattr(predictor, "meta", None), "subtype", None) is not None


def _heatmaps(predictor, sources: list) -> tuple[list, list]:
    """The Grad-CAM colour layers (RGBA, ml.colormap) of the pneumonia question and, for a
    model that answers it, of the subtype question (bacterial against viral; else None for
    each source): each image decoded once, one forward pass, a backward pass per question."""
    if not _answers_subtype(predictor):
        return predictor.heatmaps(sources, layer=True), [None] * len(sources)
    maps = predictor.heatmaps_for(sources, ("pneumonia", "subtype"), layer=True)
    return maps["pneumonia"], maps["subtype"]


def _run_batch(predictor, batch: list[Prediction], version, sources: dict) -> dict:
    """prediction id -> (ml Prediction, heatmap, subtype heatmap, site threshold) or the
    exception for that image (_record); `sources`: prediction id -> the image's bytes, or the
    exception reading it raised. Each study's site thresholds decide (the pneumonia one and,
    for a version that answers it, the subtype one), where in force for the version; the
    version's own otherwise. A batch from several such sites runs a pass per threshold row."""
    in_force = selectors.site_thresholds_in_force(version, {p.study.site_id for p in batch})
    groups: dict = {}
    for prediction in batch:
        groups.setdefault(in_force.get(prediction.study.site_id), []).append(prediction)
    results = {}
    for site_threshold, group in groups.items():
        thresholds = (None, None)
        if site_threshold is not None:
            thresholds = (site_threshold.threshold, site_threshold.subtype_threshold)
        for pk, result in _run_group(predictor, group, thresholds, sources).items():
            ok = not isinstance(result, Exception)
            results[pk] = (*result, site_threshold) if ok else result
    return results


def _run_group(predictor, batch: list[Prediction], thresholds: tuple, read: dict) -> dict:
    """prediction id -> (ml Prediction, heatmap, subtype heatmap) or the exception for that
    image; `read`: prediction id -> its image's bytes or the exception reading it raised;
    `thresholds`: (pneumonia, subtype), each None for the version's own. The images run as
    one batch."""
    threshold, subtype_threshold = thresholds
    results, sources, ready = {}, [], []
    for prediction in batch:
        if isinstance(read[prediction.pk], Exception):
            results[prediction.pk] = read[prediction.pk]
        else:
            sources.append(read[prediction.pk])
            ready.append(prediction)
    if not ready:
        return results
    try:
        # Heatmaps need gradients: only the torch runtimes give them.
        explains = settings.PREDICTION_HEATMAPS != "off" and hasattr(predictor, "heatmaps")
        if explains and settings.PREDICTION_HEATMAPS == "inline":
            if _answers_subtype(predictor):  # one Grad-CAM pass explains both questions
                made = predictor.predict_batch(
                    sources, threshold=threshold, subtype_threshold=subtype_threshold
                )
                explained = list(zip(made, *_heatmaps(predictor, sources), strict=True))
            else:
                explained = [(r, o, None) for r, o in
                             predictor.explain_batch(sources, threshold=threshold)]  # fmt: skip
            outputs = [
                (r, _save_png(o, "heatmaps"), s and _save_png(s, "heatmaps"))
                for r, o, s in explained
            ]
        else:  # deferred: "" marks the heatmaps as owed (heatmaps_draw)
            outputs = [
                (r, "" if explains else None, None)
                for r in predictor.predict_batch(
                    sources, threshold=threshold, subtype_threshold=subtype_threshold
                )
            ]
    except Exception as exc:
        from ml.core import ImageDecodeError

        if not isinstance(exc, ImageDecodeError) or len(ready) == 1:
            raise
        # One image the batch could not decode: run each alone, so only that one fails.
        for prediction in ready:
            try:
                results[prediction.pk] = _run_group(predictor, [prediction], thresholds, read)[
                    prediction.pk
                ]
            except Exception as single:
                results[prediction.pk] = single
        return results
    results.update({p.pk: out for p, out in zip(ready, outputs, strict=True)})
    return results


# What _record writes: each prediction's outcome, success or failure alike.
_OUTCOME_FIELDS = [
    "status", "model_version", "label", "probability", "threshold", "site_threshold",
    "elapsed_ms", "heatmap", "heatmap_due", "runtime", "error", "model_error", "finished_at",
    "p_bacterial", "subtype", "subtype_threshold", "subtype_heatmap",
]  # fmt: skip


def _record(batch: list[Prediction], version, results: dict, runtime: str = "") -> None:
    """Write the batch's outcomes with one UPDATE statement (_write), on the rows this claim
    still holds: those are locked first (SELECT ... FOR UPDATE; on SQLite the transaction
    holds the write lock), so no other worker can take one in between. A row another worker
    took (its lease was over) keeps that worker's result, and a heatmap drawn for it here is
    deleted. Runs inside the caller's transaction."""
    ours = Prediction.objects.filter(
        pk__in=[p.pk for p in batch], status=Prediction.Status.RUNNING, claim=batch[0].claim
    )
    held = set(ours.select_for_update().values_list("pk", flat=True))
    now, rows, released = timezone.now(), [], []
    for prediction in batch:
        result = results[prediction.pk]
        if prediction.pk in held and _storage_outage(result):
            released.append(prediction.pk)
        elif prediction.pk in held:
            _outcome(prediction, version, result, runtime, now)
            rows.append(prediction)
        elif not isinstance(result, Exception):  # another worker's result stands
            for written in filter(None, result[1:3]):
                default_storage.delete(written)
    _write(rows, _OUTCOME_FIELDS)
    if released:
        # The storage did not answer: not the image's fault. Back to pending, as if just
        # enqueued, so the sweeper sends them again after PREDICTION_REQUEUE_AFTER.
        logger.warning("Storage unavailable; predictions %s wait for the sweeper.", released)
        ours.filter(pk__in=released).update(
            status=Prediction.Status.PENDING, claim="", started_at=None, enqueued_at=now
        )
    deliveries_for_predictions(rows)  # results of PACS studies are owed to the PACS


def _write(rows: list[Prediction], names: list[str]) -> None:
    """UPDATE each row's `names` columns from the instance: one statement run for all rows
    (executemany). Django's bulk_update, which builds a CASE per column and row, was slower
    in Python than the row-by-row updates this replaces."""
    if not rows:
        return
    fields = [Prediction._meta.get_field(name) for name in names]
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(Prediction._meta.db_table),
        ", ".join(f"{quote(field.column)} = %s" for field in fields),
        quote(Prediction._meta.pk.column),
    )
    params = [
        [field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields]
        + [row.pk]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _outcome(prediction: Prediction, version, result, runtime: str, now) -> None:
    """Set one prediction's outcome fields (_OUTCOME_FIELDS) from its result or exception."""
    prediction.model_version, prediction.finished_at = version, now
    if isinstance(result, Exception):
        from ml.core import CheckpointError

        model_error = isinstance(result, model_loader.ModelFileError | CheckpointError)
        logger.error("Prediction %s failed: %r", prediction.pk, result)
        reason = f"{type(result).__name__}: {result}"
        if model_error:
            reason = f"The active model cannot be used ({reason}); retried when one is."
        prediction.status, prediction.error = Prediction.Status.FAILED, reason[:2000]
        prediction.model_error, prediction.runtime = model_error, ""
        prediction.label, prediction.probability, prediction.threshold = "", None, None
        prediction.site_threshold, prediction.elapsed_ms = None, None
        prediction.heatmap, prediction.heatmap_due = "", False
        prediction.p_bacterial, prediction.subtype, prediction.subtype_threshold = None, "", None
        prediction.subtype_heatmap = ""
        return
    # heatmap: a file name, "" when owed, None when not made; subtype_heatmap: a file name or
    # None (owed with the heatmap when that is); site_threshold: what decided
    output, heatmap, subtype_heatmap, site_threshold = result
    prediction.status, prediction.error, prediction.model_error = Prediction.Status.DONE, "", False
    prediction.label, prediction.probability = output.label, output.probability
    prediction.threshold, prediction.site_threshold = output.threshold, site_threshold
    prediction.elapsed_ms, prediction.runtime = output.elapsed_ms, runtime
    prediction.heatmap, prediction.heatmap_due = heatmap or "", heatmap == ""
    prediction.subtype_heatmap = subtype_heatmap or ""
    # The second question, when the version answers it (ml.core.Prediction's None otherwise).
    prediction.p_bacterial, prediction.subtype = output.p_bacterial, output.subtype or ""
    prediction.subtype_threshold = output.subtype_threshold


def _save_png(image, folder: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return default_storage.save(f"{folder}/{uuid.uuid4().hex}.png", ContentFile(buffer.getvalue()))
