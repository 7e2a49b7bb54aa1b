"""Data of the review platform: studies, the model's predictions, radiologists' reviews.

Business rules live in services/; this package holds data and one-line properties only.
Sites, their audits and thresholds are in sites.py.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from diagnosis.models.sites import Site, SiteAudit, SiteThreshold, default_site_pk

__all__ = ["Site", "SiteAudit", "SiteThreshold", "default_site_pk"]  # and the models below


class Label(models.TextChoices):
    NORMAL = "NORMAL", "Normal"
    PNEUMONIA = "PNEUMONIA", "Pneumonia"


class Unusable(models.TextChoices):
    """Why an image must not be used for training (a review may say so instead of a label)."""

    NOT_CHEST = "not_chest", "Not a chest X-ray"
    WRONG_VIEW = "wrong_view", "Wrong view (not frontal)"
    POOR_QUALITY = "poor_quality", "Poor quality"
    OTHER = "other", "Other (see note)"


class ModelVersion(models.Model):
    """A registered classifier checkpoint. At most one is active at a time."""

    name = models.SlugField(max_length=100, unique=True)
    architecture = models.CharField(max_length=50)
    file = models.CharField(max_length=500, help_text="Path of the checkpoint, under MEDIA_ROOT.")
    sha256 = models.CharField(max_length=64)
    class_names = models.JSONField()
    positive_class = models.CharField(max_length=50)
    preprocessing = models.JSONField()
    threshold = models.FloatField(help_text="Decision threshold on P(positive class).")
    metrics = models.JSONField(default=dict, blank=True)
    train_args = models.JSONField(default=dict, blank=True)
    data_hash = models.CharField(max_length=64, blank=True)
    # Plot name -> file under MEDIA_ROOT, e.g. {"lr_find": "models/plots/NAME-lr_find.png"}.
    plots = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    activated_at = models.DateTimeField(null=True, blank=True)
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set by retraining: the version it continued from (or was compared against), what
    # ml.train printed, and the gate's verdict {"passed", "reason", "candidate", "active", ...}.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    training_log = models.TextField(blank=True)
    gate = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def validation_summary(self) -> str:
        keys = ("val_auc", "val_sensitivity", "val_specificity")
        figures = ", ".join(f"{k[4:]} {self.metrics[k]:.3f}" for k in keys if k in self.metrics)
        return f"{figures} (n={self.metrics['n_val']})" if "n_val" in self.metrics else figures


class ModelActivation(models.Model):
    """The audit trail of which model version was made active, by whom, when and why."""

    class Action(models.TextChoices):
        PROMOTE = "promote", "Promote"
        ROLLBACK = "rollback", "Roll back"

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    previous = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    action = models.CharField(max_length=10, choices=Action.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.previous or '-'} -> {self.version}"


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
    unusable_reason = models.CharField(max_length=20, choices=Unusable.choices, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        verdict = self.label or "-"
        if self.unusable_reason:
            verdict += f" (unusable: {self.unusable_reason})"
        return f"Review {self.pk}: {self.previous_label or '-'} -> {verdict}"


class Evaluation(models.Model):
    """A model version's figures on a labeled data set (`manage.py evaluate`)."""

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="evaluations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    data_source = models.CharField(max_length=500, help_text="Folder or manifest evaluated on.")
    data_hash = models.CharField(max_length=64, blank=True)
    metrics = models.JSONField(help_text="The JSON of ml.evaluate: auc, auc_ci, sensitivity, ...")
    # Plot name -> file under MEDIA_ROOT, e.g. {"roc": "evaluations/3/roc.png"}.
    plots = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Evaluation {self.pk} of {self.model_version}"

    @property
    def summary(self) -> str:
        keys = ("auc", "sensitivity", "specificity", "threshold")
        figures = [(k, self.metrics.get(k)) for k in keys]
        n = (self.metrics.get("n") or {}).get("total")
        return (
            ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in figures) + f" (n={n})"
        )


class CleaningRun(models.Model):
    """One ranking of the training pool by how likely each label is wrong (`clean_data`)."""

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    parameters = models.JSONField(default=dict, help_text="folds, seed, backbone, base data.")
    n_items = models.PositiveIntegerField()
    n_issues = models.PositiveIntegerField()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Cleaning run {self.pk}"


class CleaningCandidate(models.Model):
    """An image of the pool as ranked by a cleaning run (rank 1: most likely mislabeled)."""

    run = models.ForeignKey(CleaningRun, on_delete=models.CASCADE, related_name="candidates")
    # "base:<path under the base data folder>" or "study:<id>": what decisions refer to.
    item_key = models.CharField(max_length=500, db_index=True)
    path = models.CharField(max_length=1000)
    given_label = models.CharField(max_length=20, choices=Label.choices)
    probability = models.FloatField(help_text="Out-of-fold P(pneumonia).")
    loss = models.FloatField()
    self_confidence = models.FloatField()
    label_issue = models.BooleanField()
    rank = models.PositiveIntegerField()

    class Meta:
        ordering = ["run", "rank"]

    def __str__(self) -> str:
        return f"#{self.rank} {self.item_key}"


class CleaningDecision(models.Model):
    """A reviewer's decision on a pool image. Append-only: the latest one per item counts,
    so a decision is reversed by making another (e.g. `keep`)."""

    class Decision(models.TextChoices):
        KEEP = "keep", "Keep as labeled"
        RELABEL = "relabel", "Relabel"
        EXCLUDE = "exclude", "Exclude from training"

    item_key = models.CharField(max_length=500, db_index=True)
    decision = models.CharField(max_length=10, choices=Decision.choices)
    label = models.CharField(max_length=20, choices=Label.choices, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.decision} {self.item_key}"


class ValidationSplit(models.Model):
    """The validation images every retrained candidate and the active model are compared on.

    Frozen once (a patient split of the training pool, stored as a CSV manifest) and left out
    of every later training run and cleaning ranking; the newest row is the one in force.
    It is split once more, by patient, into a selection part, on which ml.train picks the
    epoch and the threshold, and a gate part, which no training choice sees and on which the
    gate judges the candidate and the active model."""

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    manifest = models.CharField(max_length=300, help_text="CSV manifest, under MEDIA_ROOT.")
    manifest_hash = models.CharField(max_length=64)
    # The training-pool keys of its images ("base:..." / "study:<id>").
    item_keys = models.JSONField(default=list)
    origin = models.CharField(max_length=300, blank=True, help_text="How it was chosen.")
    selection_manifest = models.CharField(
        max_length=300, blank=True, help_text="CSV manifest of the part that training chooses on."
    )
    selection_hash = models.CharField(max_length=64, blank=True)
    gate_manifest = models.CharField(
        max_length=300, blank=True, help_text="CSV manifest of the part the gate judges on."
    )
    gate_hash = models.CharField(max_length=64, blank=True)
    gate_item_keys = models.JSONField(default=list)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Validation split {self.pk} ({len(self.item_keys)} images)"

    @property
    def n_gate(self) -> int:
        return len(self.gate_item_keys)

    @property
    def n_selection(self) -> int:
        return len(self.item_keys) - len(self.gate_item_keys)


class TrainingJob(models.Model):
    """One retraining run (`manage.py retrain` or the models page), with its progress log."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Init(models.TextChoices):
        ACTIVE = "active", "The active model"
        IMAGENET = "imagenet", "ImageNet weights"
        NONE = "none", "Random weights (from scratch)"

    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    init = models.CharField(max_length=10, choices=Init.choices, default=Init.ACTIVE)
    # ml.train flags given for this run (epochs, lr, ...), and base-data options.
    parameters = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    candidate = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    promoted = models.BooleanField(null=True, blank=True, help_text="The gate's verdict.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Training job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


class RuntimeArtifact(models.Model):
    """An optimized form of a model version for one inference runtime (`optimize_model`),
    kept only if it passed the accuracy gate against the version's fp32 on validation."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="runtimes")
    runtime = models.CharField(max_length=20)
    # The artifact under MEDIA_ROOT (blank for torch-bf16, which runs the checkpoint itself).
    file = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    # ml.runtimes.accuracy_gate's comparison: reference / candidate figures, drops, reason.
    comparison = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["version", "runtime"]
        constraints = [
            models.UniqueConstraint(fields=["version", "runtime"], name="one_artifact_per_runtime")
        ]

    def __str__(self) -> str:
        return f"{self.version} ({self.runtime})"
