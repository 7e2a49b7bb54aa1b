"""Sites: the populations a model is audited, calibrated and adapted on (issue: onboarding).

A site is a hospital, a scanner or a department. Each study belongs to one; a single
installation has the default site only. A model version's threshold can be overridden per
site, by an audited activation, from what an audit measured on the site's labeled cases.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

DEFAULT_SITE = "default"


def default_site_pk() -> int:
    """The default site, created on first use (a fresh installation has no other)."""
    site, _ = Site.objects.get_or_create(name=DEFAULT_SITE, defaults={"title": "This installation"})
    return site.pk


class Site(models.Model):
    name = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SiteAudit(models.Model):
    """One retrospective audit of a model version on a site's labeled cases
    (`manage.py site_audit`): the figures at the threshold in force, the calibrated
    threshold with its evaluation-part figures, and, with --adapt, the adapted model's."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="audits")
    model_version = models.ForeignKey(
        "diagnosis.ModelVersion", on_delete=models.CASCADE, related_name="site_audits"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    data_source = models.CharField(max_length=500)
    threshold_in_force = models.FloatField()
    # ml.evaluate's keys at the threshold in force, plus "calibrated" and "adapted" blocks.
    metrics = models.JSONField()
    # Plot name -> file under MEDIA_ROOT ("roc", "reliability", "roc_adapted", ...).
    plots = models.JSONField(default=dict, blank=True)
    # The model fine-tuned on the calibration part (--adapt), registered as a candidate.
    candidate = models.ForeignKey(
        "diagnosis.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="adapted_in",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Audit {self.pk} of {self.model_version} at {self.site}"

    @property
    def calibrated(self) -> dict:
        return self.metrics.get("calibrated") or {}


class SiteThreshold(models.Model):
    """An activation of a site threshold for a model version: append-only, the latest row of
    a (site, version) pair is in force; a row with no threshold restores the version's."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="thresholds")
    model_version = models.ForeignKey(
        "diagnosis.ModelVersion", on_delete=models.CASCADE, related_name="site_thresholds"
    )
    threshold = models.FloatField(null=True, blank=True)
    # On P(bacterial | pneumonia), for a version that answers the subtype; null: the version's.
    subtype_threshold = models.FloatField(null=True, blank=True)
    audit = models.ForeignKey(
        SiteAudit, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        value = "the version's own" if self.threshold is None else f"{self.threshold:.4f}"
        if self.subtype_threshold is not None:
            value += f", subtype {self.subtype_threshold:.4f}"
        return f"{self.site} / {self.model_version}: {value}"
