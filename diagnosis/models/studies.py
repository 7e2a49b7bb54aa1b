"""Studies as uploaded, the model's predictions on them, radiologists' reviews."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from diagnosis.models.registry import ModelVersion
from diagnosis.models.sites import Site, SiteThreshold, default_site_pk


class Label(models.TextChoices):
    NORMAL = "NORMAL", "Normal"
    PNEUMONIA = "PNEUMONIA", "Pneumonia"


class Subtype(models.TextChoices):
    """Bacterial or viral pneumonia. A model calls one of the first two; a radiologist may
    also answer undetermined, which is a valid answer and never counted as an error."""

    BACTERIAL = "bacterial", "Bacterial"
    VIRAL = "viral", "Viral"
    UNDETERMINED = "undetermined", "Undetermined"


class PredictedSubtype(models.TextChoices):
    """What a model calls: never undetermined."""

    BACTERIAL = "bacterial", "Bacterial"
    VIRAL = "viral", "Viral"


# What the platform says wherever it shows a predicted subtype (study page, API).
SUBTYPE_CAVEAT = (
    "The subtype is a probability learned from radiographs of children aged 1 to 5, never a "
    "substitute for microbiology."
)


class Unusable(models.TextChoices):
    """Why an image must not be used for training (a review may say so instead of a label)."""

    NOT_CHEST = "not_chest", "Not a chest X-ray"
    WRONG_VIEW = "wrong_view", "Wrong view (not frontal)"
    POOR_QUALITY = "poor_quality", "Poor quality"
    OTHER = "other", "Other (see note)"


class Study(models.Model):
    """One uploaded chest X-ray."""

    image = models.FileField(upload_to="studies/", max_length=300)
    original_filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=50)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="studies"
    )
    # The population it comes from: its site's threshold decides (diagnosis.models.sites).
    site = models.ForeignKey(
        Site, on_delete=models.PROTECT, related_name="studies", default=default_site_pk
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The latest review's label, kept here so that lists and the admin can filter on it;
    # services.review_create is the only writer and updates it in the same transaction.
    current_label = models.CharField(max_length=20, choices=Label.choices, blank=True)
    # The latest review's subtype of a PNEUMONIA label (blank: none given, or not pneumonia).
    current_subtype = models.CharField(max_length=12, choices=Subtype.choices, blank=True)
    # Likewise the latest review's verdict on the image; non-empty keeps it out of training.
    unusable_reason = models.CharField(max_length=20, choices=Unusable.choices, blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # What the upload was (JPEG, PNG or DICOM; a DICOM is stored as the PNG it converts to)
    # and the de-identified facts of a DICOM header: never names, IDs, dates or places.
    source_format = models.CharField(max_length=10, blank=True)
    # The pseudonymous patient key (diagnosis.pseudonyms): a keyed hash of the DICOM's
    # PatientID, or of an identifier given with the upload; never the identifier itself.
    patient_key = models.CharField(max_length=64, blank=True, db_index=True)
    modality = models.CharField(max_length=16, blank=True)
    view_position = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=32, blank=True)
    patient_sex = models.CharField(max_length=1, blank=True)
    patient_age_years = models.PositiveSmallIntegerField(null=True, blank=True)
    # Intended-use warnings found at upload (diagnosis.guardrails): shown, never a refusal.
    warnings = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"Study {self.pk}"

    @property
    def latest_prediction(self) -> Prediction | None:
        # .all() keeps to the default ordering (newest first) and uses a prefetch if any.
        return next(iter(self.predictions.all()), None)


class Prediction(models.Model):
    """One run of a model on a study. A study keeps every prediction ever made on it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="predictions")
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="predictions"
    )
    label = models.CharField(max_length=20, choices=Label.choices, blank=True)
    probability = models.FloatField(null=True, blank=True, help_text="P(pneumonia).")
    threshold = models.FloatField(null=True, blank=True)
    # The second question, for a model version that answers it (null / blank otherwise):
    # P(bacterial | pneumonia), the subtype called at subtype_threshold, and that threshold.
    p_bacterial = models.FloatField(null=True, blank=True, help_text="P(bacterial | pneumonia).")
    subtype = models.CharField(
        max_length=12, choices=PredictedSubtype.choices, blank=True, db_index=True
    )
    subtype_threshold = models.FloatField(null=True, blank=True)
    # The site threshold that decided, when one was in force; else the version's own did.
    site_threshold = models.ForeignKey(
        SiteThreshold, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    elapsed_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The failure was the model's (file missing, corrupted or unreadable), not the image's:
    # the next activation of a model sends the prediction round again.
    model_error = models.BooleanField(default=False)
    # Grad-CAM overlay of what drove the call (PNG under MEDIA_ROOT), when enabled.
    heatmap = models.FileField(upload_to="heatmaps/", max_length=300, blank=True)
    # The same for the subtype question (evidence for bacterial against viral), drawn with it
    # when the model version answers that question.
    subtype_heatmap = models.FileField(upload_to="heatmaps/", max_length=300, blank=True)
    # The result is recorded and its heatmap still owed (PREDICTION_HEATMAPS=deferred): the
    # worker draws it when no prediction is waiting.
    heatmap_due = models.BooleanField(default=False, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    # The inference runtime that made it (INFERENCE_RUNTIME): torch, torch-bf16, onnx-int8...
    runtime = models.CharField(max_length=20, blank=True)
    # Which claim (one worker's batch) holds the prediction while it runs; only that claim's
    # holder may write the result.
    claim = models.CharField(max_length=32, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Prediction {self.pk} ({self.status})"

    @property
    def threshold_source(self) -> str:
        """Whose threshold decided: a site's (set for this version there) or the version's."""
        if self.site_threshold_id is None:
            return "model version" if self.threshold is not None else ""
        return f"site {self.site_threshold.site.name}"


class Review(models.Model):
    """A radiologist's label for a study. Append-only: reviews are never edited or deleted."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    previous_label = models.CharField(max_length=20, choices=Label.choices, blank=True)
    # Blank when the reviewer only marked the image unusable without a label.
    label = models.CharField(max_length=20, choices=Label.choices, blank=True)
    # Only with label PNEUMONIA: bacterial, viral or undetermined; blank when not given.
    previous_subtype = models.CharField(max_length=12, choices=Subtype.choices, blank=True)
    subtype = models.CharField(max_length=12, choices=Subtype.choices, blank=True)
    unusable_reason = models.CharField(max_length=20, choices=Unusable.choices, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        verdict = self.label or "-"
        if self.subtype:
            verdict += f" ({self.subtype})"
        if self.unusable_reason:
            verdict += f" (unusable: {self.unusable_reason})"
        return f"Review {self.pk}: {self.previous_label or '-'} -> {verdict}"
