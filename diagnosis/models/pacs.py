"""The PACS link: how far the platform has read Orthanc's changes, which DICOM instances it
took (each once), and the outbox of result objects owed to the PACS.

Only what is needed to answer and to write back is kept: Orthanc's identifiers and the DICOM
UIDs of the source image. Never names, patient IDs, dates or accession numbers: those stay in
the PACS, and the result objects copy them from the source header at delivery time.
"""

from __future__ import annotations

from django.db import models

from diagnosis.models.sites import Site


class PacsFeed(models.Model):
    """One Orthanc server's changes feed, read from `last_seq` on (Orthanc's sequence number
    of the last change handled). Restarting the platform, or Orthanc, resumes from here."""

    source = models.CharField(max_length=300, unique=True, help_text="The Orthanc URL.")
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.source} at change {self.last_seq}"


class PacsInstance(models.Model):
    """A DICOM instance the platform took from the PACS: ingested as a study, or refused with
    the reason. The SOPInstanceUID is unique: an instance is taken once, whatever the feed
    replays."""

    class Status(models.TextChoices):
        INGESTED = "ingested", "Ingested"
        REFUSED = "refused", "Refused"

    sop_instance_uid = models.CharField(max_length=64, unique=True)
    study_instance_uid = models.CharField(max_length=64)
    series_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64, blank=True)
    orthanc_id = models.CharField(max_length=64, help_text="Orthanc's instance identifier.")
    orthanc_study = models.CharField(max_length=64, help_text="Orthanc's study identifier.")
    source = models.CharField(max_length=300, help_text="The Orthanc URL it came from.")
    status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.TextField(blank=True, help_text="Why it was refused.")
    study = models.OneToOneField(
        "diagnosis.Study", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="pacs_instance",
    )  # fmt: skip
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"PACS instance {self.pk} ({self.status})"


class PacsDelivery(models.Model):
    """One result object owed to the PACS (the outbox): written in the transaction that made
    the result, sent by `pacs_deliver` with retries and backoff until the PACS has it. Its
    SOPInstanceUID is fixed when the row is made, and the PACS is asked for it before every
    send, so a result is stored once however often the send is tried."""

    class Kind(models.TextChoices):
        REPORT = "report", "Structured report (unverified)"
        OVERLAY = "overlay", "Secondary capture of the heatmap"
        VERIFIED = "verified", "Structured report (verified)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        SKIPPED = "skipped", "Skipped"  # nothing to send (no heatmap was drawn)

    instance = models.ForeignKey(PacsInstance, on_delete=models.PROTECT, related_name="deliveries")
    prediction = models.ForeignKey(
        "diagnosis.Prediction", on_delete=models.PROTECT, related_name="deliveries"
    )
    review = models.ForeignKey(
        "diagnosis.Review", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    orthanc_id = models.CharField(max_length=64, blank=True)
    forwarded_to = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of prediction {self.prediction_id} ({self.status})"
