"""The platform as a DICOM node of its PACS (Orthanc): studies in, results out.

In: `pacs_poll` reads Orthanc's changes feed from the sequence number stored in the database
(PacsFeed); each StableStudy change brings the study's instances not taken yet. Each is
checked and converted exactly like a DICOM upload (diagnosis.validation: the same refusals,
intended-use warnings and de-identification) and becomes a study of the configured site with
a pending prediction, or a refused PacsInstance with the reason. The SOPInstanceUID is unique
in the database, so an instance is taken once whatever the feed replays; the sequence number
moves on only past what was handled, so a restart of either side resumes where it stopped.

Out: `pacs_deliver` sends the outbox (diagnosis.services.outbox): the structured report and
the heatmap overlay of each finished prediction, and a verified report for each review. Each
object's UID is fixed when it is owed and the PACS is asked for it before each send: stored
once, however often a send is retried. A PACS that is down delays delivery (backoff up to
PACS_RETRY_MAX_SECONDS), never drops it.

Nothing identifying is logged or kept: the source header is read from the PACS when an
object is built and dropped after; logs name rows by their primary keys.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from diagnosis.models import PacsDelivery, PacsFeed, PacsInstance, Site
from diagnosis.models.sites import default_site_pk
from diagnosis.orthanc import Orthanc, OrthancError, OrthancNotFound
from diagnosis.services.storage import atomic_files
from diagnosis.services.studies import study_record
from diagnosis.validation import UploadRejected, inspect_upload

logger = logging.getLogger(__name__)

# Orthanc's change that says a study has received nothing new for StableAge seconds.
STABLE_STUDY = "StableStudy"

# ---------------------------------------------------------------------------- in


def pacs_site() -> Site:
    """The site PACS studies belong to: ORTHANC_SITE, or the default site."""
    if not settings.ORTHANC_SITE:
        return Site.objects.get(pk=default_site_pk())
    try:
        return Site.objects.get(name=settings.ORTHANC_SITE)
    except Site.DoesNotExist:
        raise ImproperlyConfigured(
            f"ORTHANC_SITE names site {settings.ORTHANC_SITE!r}, which does not exist "
            "(create it with manage.py site_audit, or in the admin)."
        ) from None


def pacs_user():
    """The account PACS studies are recorded as uploaded by: it cannot sign in."""
    user, created = get_user_model().objects.get_or_create(
        username=settings.PACS_USER, defaults={"is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def pacs_poll(pacs: Orthanc | None = None, *, limit: int = 100) -> int:
    """Read the changes feed to its end, ingesting each stable study. Returns how many
    instances were taken (ingested or refused). OrthancError when Orthanc cannot be read:
    the sequence number then stays at the last change fully handled."""
    pacs = pacs or Orthanc.from_settings()
    feed, _ = PacsFeed.objects.get_or_create(source=pacs.url)
    site, user = pacs_site(), pacs_user()
    taken = 0
    while True:
        page = pacs.changes(since=feed.last_seq, limit=limit)
        for change in page.get("Changes", []):
            if change.get("ChangeType") == STABLE_STUDY:
                taken += pacs_study_ingest(pacs, change["ID"], site=site, user=user)
            feed.last_seq = change["Seq"]
            feed.save(update_fields=["last_seq", "updated_at"])
        if page.get("Done", True) or not page.get("Changes"):
            last = int(page.get("Last", feed.last_seq))
            if last > feed.last_seq:  # changes past the end of the page that were not ours
                feed.last_seq = last
                feed.save(update_fields=["last_seq", "updated_at"])
            return taken


def pacs_study_ingest(pacs: Orthanc, study_id: str, *, site: Site, user) -> int:
    """Take each instance of the Orthanc study not taken yet. Returns how many were."""
    taken = 0
    try:
        instances = pacs.study_instances(study_id)
    except OrthancNotFound:  # deleted from the PACS before it was read: nothing to take
        logger.info("PACS study %s is gone; skipped", study_id)
        return 0
    for item in instances:
        sop = str(item.get("MainDicomTags", {}).get("SOPInstanceUID", "")).strip()
        if not sop or PacsInstance.objects.filter(sop_instance_uid=sop).exists():
            continue
        if PacsDelivery.objects.filter(sop_instance_uid=sop).exists():
            continue  # one of our own results, back in the study's feed
        try:
            data = pacs.instance_file(item["ID"])
        except OrthancNotFound:
            continue
        taken += _ingest_instance(pacs, data, sop, item["ID"], study_id, site=site, user=user)
    return taken


def _ingest_instance(
    pacs, data: bytes, sop: str, instance_id: str, study_id: str, *, site, user
) -> int:
    from ml.dicom import read_uids

    uids = read_uids(data)
    row = PacsInstance(
        sop_instance_uid=sop, study_instance_uid=uids["study_instance_uid"],
        series_instance_uid=uids["series_instance_uid"], sop_class_uid=uids["sop_class_uid"],
        orthanc_id=instance_id, orthanc_study=study_id, source=pacs.url, site=site,
    )  # fmt: skip
    try:
        info = inspect_upload(io.BytesIO(data), filename="DICOM instance", size=len(data))
    except UploadRejected as exc:
        row.status, row.reason = PacsInstance.Status.REFUSED, exc.reason
        info = None
    try:
        with atomic_files() as written, transaction.atomic():
            if info is not None:
                row.status = PacsInstance.Status.INGESTED
                row.study = study_record(
                    info, None, written, uploaded_by=user, site=site,
                    original_filename=f"PACS {uids['modality'] or 'DICOM'} image",
                )  # fmt: skip
            row.save()
    except IntegrityError:  # another listener took it first: once is enough
        return 0
    logger.info(
        "PACS instance %s %s%s", row.pk, row.status,
        f" as study {row.study_id}" if row.study_id else f": {row.reason}",
    )  # fmt: skip
    return 1


# ---------------------------------------------------------------------------- out


def pacs_deliver(pacs: Orthanc | None = None, *, limit: int = 50) -> int:
    """Send the result objects owed and due. Returns how many reached the PACS."""
    pacs = pacs or Orthanc.from_settings()
    now = timezone.now()
    due = (
        PacsDelivery.objects.filter(status=PacsDelivery.Status.PENDING)
        .exclude(next_attempt_at__gt=now)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    delivered = 0
    for pk in list(due):
        with transaction.atomic():
            # One sender per row at a time; another listener skips it.
            delivery = (
                PacsDelivery.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("instance", "prediction__model_version", "prediction__study__site",
                                "review__reviewer")
                .filter(pk=pk, status=PacsDelivery.Status.PENDING)
                .first()
            )  # fmt: skip
            if delivery is not None:
                delivered += _deliver(pacs, delivery)
    return delivered


def _deliver(pacs: Orthanc, delivery: PacsDelivery) -> int:
    """Send one owed object, or record why not and when to try again."""
    from diagnosis import dicom_results

    prediction = delivery.prediction
    now = timezone.now()
    if delivery.kind == PacsDelivery.Kind.OVERLAY:
        if prediction.heatmap_due:  # not drawn yet: look again soon, no attempt spent
            delivery.next_attempt_at = now + timedelta(seconds=settings.PACS_POLL_SECONDS * 5)
            delivery.save(update_fields=["next_attempt_at"])
            return 0
        if not prediction.heatmap:
            delivery.status = PacsDelivery.Status.SKIPPED
            delivery.last_error = "no heatmap was drawn for this prediction"
            delivery.save(update_fields=["status", "last_error"])
            return 0
    delivery.attempts += 1
    try:
        # Asked before each send: an object stored by an earlier try is not stored again.
        found = [r for r in pacs.lookup(delivery.sop_instance_uid) if r.get("Type") == "Instance"]
        if found:
            delivery.orthanc_id = found[0]["ID"]
        else:
            source = dicom_results.read_header(pacs.instance_file(delivery.instance.orthanc_id))
            stored = pacs.store(result_object(delivery, source))
            delivery.orthanc_id = str(stored.get("ID", ""))
        for destination in settings.ORTHANC_FORWARD_TO:
            if destination not in delivery.forwarded_to:
                pacs.forward(destination, delivery.orthanc_id)
                delivery.forwarded_to = [*delivery.forwarded_to, destination]
    except Exception as exc:
        # OrthancError messages are ours; any other error is named by its type only, since a
        # DICOM library's message may quote header values.
        reason = str(exc) if isinstance(exc, OrthancError) else f"{type(exc).__name__}"
        wait = min(settings.PACS_RETRY_MAX_SECONDS, 2 ** min(delivery.attempts, 16))
        delivery.last_error, delivery.next_attempt_at = reason[:1000], now + timedelta(seconds=wait)
        delivery.save(
            update_fields=[
                "attempts",
                "last_error",
                "next_attempt_at",
                "orthanc_id",
                "forwarded_to",
            ]
        )
        logger.warning("PACS delivery %s failed (attempt %d): %s; retried in %d s",
                       delivery.pk, delivery.attempts, reason, wait)  # fmt: skip
        return 0
    delivery.status, delivery.delivered_at, delivery.last_error = (
        PacsDelivery.Status.DELIVERED,
        timezone.now(),
        "",
    )
    delivery.save(update_fields=["status", "delivered_at", "last_error", "attempts", "orthanc_id",
                                 "forwarded_to"])  # fmt: skip
    logger.info("PACS delivery %s (%s) stored", delivery.pk, delivery.kind)
    return 1


def result_facts(delivery: PacsDelivery):
    """What the object of `delivery` says (dicom_results.ResultFacts)."""
    from diagnosis.dicom_results import ResultFacts

    prediction = delivery.prediction
    version = prediction.model_version
    facts = {
        "probability": prediction.probability, "threshold": prediction.threshold,
        "threshold_source": prediction.threshold_source, "model_label": prediction.label,
        "model_name": version.name, "model_version": version.sha256[:16],
        "made_at": prediction.finished_at, "p_bacterial": prediction.p_bacterial,
        "subtype": prediction.subtype, "subtype_threshold": prediction.subtype_threshold,
    }  # fmt: skip
    review = delivery.review
    if review is not None:
        reviewer = review.reviewer
        name = (
            f"{reviewer.last_name}^{reviewer.first_name}"
            if reviewer.last_name else f"{reviewer.get_username()}^"  # a one-part name
        )  # fmt: skip
        facts.update(
            verified_label=review.label, verified_subtype=review.subtype, verifier=name,
            organization=prediction.study.site.title or prediction.study.site.name,
            verified_at=review.created_at,
        )  # fmt: skip
    return ResultFacts(**facts)


OVERLAY_OPACITY = 0.6  # the burned-in overlay's heatmap at its peak; the viewer's default too


def result_object(delivery: PacsDelivery, source) -> bytes:
    """The DICOM file of `delivery`, built from its rows and the source header."""
    from diagnosis import dicom_results as dr

    instance, facts = delivery.instance, result_facts(delivery)
    if delivery.kind == PacsDelivery.Kind.OVERLAY:
        from PIL import Image

        from ml.colormap import composite

        with default_storage.open(delivery.prediction.heatmap.name, "rb") as fh:
            layer = Image.open(io.BytesIO(fh.read()))
            layer.load()
        with delivery.prediction.study.image.open("rb") as fh, Image.open(fh) as image:
            # The stored colour layer over the study's image: what the viewer shows.
            overlay = composite(image, layer, opacity=OVERLAY_OPACITY)
        return dr.encode(
            dr.secondary_capture(
                source,
                overlay,
                facts,
                sop_instance_uid=delivery.sop_instance_uid,
                series_instance_uid=dr.result_uid(instance.study_instance_uid, "overlays"),
                instance_number=delivery.pk,
            )
        )
    series = dr.result_uid(instance.study_instance_uid, "reports")
    previous = None
    if delivery.kind == PacsDelivery.Kind.VERIFIED:
        earlier = (
            PacsDelivery.objects.filter(
                instance=instance,
                prediction=delivery.prediction,
                pk__lt=delivery.pk,
                kind__in=[PacsDelivery.Kind.REPORT, PacsDelivery.Kind.VERIFIED],
            )
            .order_by("-pk")
            .first()
        )
        if earlier is not None:  # the report this one supersedes, built again (same UIDs)
            previous = dr.structured_report(
                source, result_facts(earlier), sop_instance_uid=earlier.sop_instance_uid,
                series_instance_uid=series, instance_number=earlier.pk,
            )  # fmt: skip
    return dr.encode(
        dr.structured_report(
            source,
            facts,
            sop_instance_uid=delivery.sop_instance_uid,
            series_instance_uid=series,
            instance_number=delivery.pk,
            previous=previous,
        )
    )


def pacs_check(pacs: Orthanc | None = None) -> dict:
    """Check the PACS settings at start: Orthanc answers to the credentials, and the site
    exists. Returns Orthanc's /system; raises OrthancError or ImproperlyConfigured."""
    pacs = pacs or Orthanc.from_settings()
    info = pacs.system()
    pacs_site()
    return info
