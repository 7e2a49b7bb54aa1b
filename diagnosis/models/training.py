"""Retraining: cleaning runs and decisions, the frozen validation split, training jobs."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from diagnosis.models.registry import ModelVersion
from diagnosis.models.studies import Label


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
    # diagnosis.pseudonyms.key_counts of its images: how many are known by a real patient key
    # ({} for a split frozen before they were counted).
    key_counts = models.JSONField(default=dict, blank=True)

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
