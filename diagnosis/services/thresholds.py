"""A site's decision threshold for a model version: put in force by admins (or the
platform, for an adapted candidate), every activation kept with who, when, why and the audit
it came from."""

from __future__ import annotations

from diagnosis import roles
from diagnosis.models import ModelVersion, Site, SiteAudit, SiteThreshold


def site_threshold_activate(
    *, site: Site, version: ModelVersion, threshold: float | None, user, reason: str = "",
    audit: SiteAudit | None = None,
) -> SiteThreshold:  # fmt: skip
    """Put `threshold` in force for `version` at `site` (None restores the version's own).
    Admins only; every activation is kept with who, when, why and the audit it came from."""
    roles.require(user, roles.can_promote, "Only admins may change a site's threshold.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"a threshold is within [0, 1], got {threshold}")
    of_audit = (
        audit
        and audit.site_id == site.pk
        and version.pk in (audit.model_version_id, audit.candidate_id)
    )
    if audit is not None and not of_audit:
        raise ValueError(f"audit {audit.pk} is not of {version} at {site}")
    return SiteThreshold.objects.create(
        site=site, model_version=version, threshold=threshold, audit=audit,
        created_by=roles.recorded_user(user), reason=roles.recorded_reason(user, reason.strip()),
    )  # fmt: skip


def site_threshold_from_audit(
    *, audit: SiteAudit, user, reason: str = "", restore: bool = False
) -> SiteThreshold:
    """Put an audit's calibrated threshold in force for its version at its site, or with
    `restore` give the decision back to the version's own threshold (the site page's
    buttons, the API, `site_audit --activate`)."""
    calibrated = audit.calibrated
    if restore:
        threshold, why = None, "restored the version's own threshold"
    elif calibrated.get("threshold") is None:
        raise ValueError(f"audit {audit.pk} has no calibrated threshold")
    else:
        threshold = calibrated["threshold"]
        why = f"calibrated in audit {audit.pk} ({calibrated.get('rule')} rule)"
    return site_threshold_activate(
        site=audit.site, version=audit.model_version, threshold=threshold, user=user,
        audit=audit, reason=reason or why,
    )  # fmt: skip
