"""The model registry: versions, who activated which, evaluations, runtime artifacts."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

# The intended use of every model this project trains, in one line (ml/README.md, "Model
# cards"); a version registered with its own says so instead.
INTENDED_USE = (
    "Decision support for frontal chest X-rays of children aged 1 to 5: normal or pneumonia, "
    "every result reviewed by a clinician; not for adults, lateral films or other findings."
)


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
    # The checkpoint's second question, {"head": ..., "threshold": ...} on P(bacterial |
    # pneumonia), or null: the version answers only the first (ml.core.SubtypeQuestion).
    subtype = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    train_args = models.JSONField(default=dict, blank=True)
    data_hash = models.CharField(max_length=64, blank=True)
    # What whoever registered it wants every user to know (e.g. "a demo model, not validated
    # at any site"): shown on the models page and, while it is active, on every page.
    note = models.TextField(blank=True)
    # A demo (make up trains one in minutes): every page showing its predictions says so loudly.
    is_demo = models.BooleanField(default=False)
    intended_use = models.CharField(max_length=300, default=INTENDED_USE)
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
    def subtype_question(self):
        """The ml.core.SubtypeQuestion the version answers, or None."""
        from ml.core import SubtypeQuestion

        return None if not self.subtype else SubtypeQuestion.from_dict(self.subtype)

    @property
    def standing(self) -> str:
        """ "active", "candidate" (never active) or "retired" (active once, not now)."""
        if self.is_active:
            return "active"
        return "retired" if self.activated_at else "candidate"

    @property
    def validation_summary(self) -> str:
        keys = ("val_auc", "val_sensitivity", "val_specificity")
        figures = ", ".join(f"{k[4:]} {self.metrics[k]:.3f}" for k in keys if k in self.metrics)
        return f"{figures} (n={self.metrics['n_val']})" if "n_val" in self.metrics else figures

    @property
    def subtype_summary(self) -> str:
        """What the version says about the second question, for the models page."""
        if not self.subtype:
            return "subtype: not predicted by this model"
        auc = (self.metrics.get("subtype") or {}).get("val_auc")
        figures = "" if auc is None else f", validation AUC {auc:.3f}"
        return (
            f"subtype ({self.subtype['head']}): threshold {self.subtype['threshold']:.3f}{figures}"
        )


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
        text = (
            ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in figures) + f" (n={n})"
        )
        subtype = self.metrics.get("subtype")
        if subtype and subtype.get("auc") is not None:
            text += (
                f"; subtype AUC {subtype['auc']:.3f}, sensitivity {subtype['sensitivity']:.3f}, "
                f"specificity {subtype['specificity']:.3f}"
            )
        return text


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
