"""A site's decision threshold for a model version: put in force by admins (or the
platform, for an adapted candidate), every activation kept with who, when, why and the audit
it came from."""

from __future__ import annotations

from diagnosis import roles
from diagnosis.models import ModelVersion, Site, SiteAudit, SiteThreshold


def site_threshold_activate(
    *, site: Site, version: ModelVersion, threshold: float | None, user, reason: str = "",
    audit: SiteAudit | None = None, subtype_threshold: float | None = None,
) -> SiteThreshold:  # fmt: skip
    """Put `threshold` in force for `version` at `site` (None restores the version's own),
    and with it `subtype_threshold` on P(bacterial | pneumonia) for a version that answers
    the subtype (None: the version's own). Admins only; every activation is kept with who, when,
    why and the audit it came from."""
    roles.require(user, roles.can_promote, "Only admins may change a site's threshold.")
    for value in (threshold, subtype_threshold):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"a threshold is within [0, 1], got {value}")
    if subtype_threshold is not None and not version.subtype:
        raise ValueError(f"{version} does not answer the subtype: it has no subtype threshold")
    if subtype_threshold is not None and threshold is None:
        # A row without a pneumonia threshold restores the version's own, both of them.
        raise ValueError("a site's subtype threshold goes with its pneumonia threshold")
    of_audit = (
        audit
        and audit.site_id == site.pk
        and version.pk in (audit.model_version_id, audit.candidate_id)
    )
    if audit is not None and not of_audit:
        raise ValueError(f"audit {audit.pk} is not of {version} at {site}")
    return SiteThreshold.objects.create(
        site=site, model_version=version, threshold=threshold, audit=audit,
        subtype_threshold=subtype_threshold,
        created_by=roles.recorded_user(user), reason=roles.recorded_reason(user, reason.strip()),
    )  # fmt: skip


def site_threshold_from_audit(
    *, audit: SiteAudit, user, reason: str = "", restore: bool = False
) -> SiteThreshold:
    """Put an audit's calibrated threshold in force for its version at its site, with the
    audit's subtype threshold where it calibrated one, or with `restore` give the decision
    back to the version's own thresholds (the site page's buttons, the API, `site_audit
    --activate`)."""
    calibrated = audit.calibrated
    subtype_threshold = None
    if restore:
        threshold, why = None, "restored the version's own thresholds"
    elif calibrated.get("threshold") is None:
        raise ValueError(f"audit {audit.pk} has no calibrated threshold")
    else:
        threshold = calibrated["threshold"]
        why = f"calibrated in audit {audit.pk} ({calibrated.get('rule')} rule"
        # The subtype's, where the audit could calibrate one (both subtypes among its
        # calibration part's pneumonias); else the version's own stays.
        subtype_threshold = (calibrated.get("subtype_calibrated") or {}).get("threshold")
        why += "; subtype: youden rule)" if subtype_threshold is not None else ")"
    return site_threshold_activate(
        site=audit.site, version=audit.model_version, threshold=threshold, user=user,
        audit=audit, reason=reason or why, subtype_threshold=subtype_threshold,
    )  # fmt: skip
