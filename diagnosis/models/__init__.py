"""Data of the review platform, one module per concern: studies.py (studies, predictions,
reviews), registry.py (model versions, activations, evaluations, runtime artifacts),
training.py (cleaning, the validation split, training jobs), sites.py (sites, their audits and
thresholds), pacs.py (the Orthanc feed, the instances taken from it, the outbox of
results). Business rules live in services/; these modules hold data and one-line properties
only. Everything is importable from here.
"""

from __future__ import annotations

from diagnosis.models.pacs import PacsDelivery, PacsFeed, PacsInstance
from diagnosis.models.registry import (
    INTENDED_USE,
    Evaluation,
    ModelActivation,
    ModelVersion,
    RuntimeArtifact,
)
from diagnosis.models.sites import Site, SiteAudit, SiteThreshold, default_site_pk
from diagnosis.models.studies import (
    SUBTYPE_CAVEAT,
    Label,
    PredictedSubtype,
    Prediction,
    Review,
    Study,
    Subtype,
    Unusable,
)
from diagnosis.models.training import (
    CleaningCandidate,
    CleaningDecision,
    CleaningRun,
    TrainingJob,
    ValidationSplit,
)

__all__ = [
    "INTENDED_USE", "SUBTYPE_CAVEAT", "CleaningCandidate", "CleaningDecision", "CleaningRun",
    "Evaluation", "Label", "ModelActivation", "ModelVersion", "PacsDelivery",
    "PacsFeed", "PacsInstance", "PredictedSubtype", "Prediction", "Review",
    "RuntimeArtifact", "Site", "SiteAudit", "SiteThreshold", "Study", "Subtype", "TrainingJob",
    "Unusable", "ValidationSplit", "default_site_pk",
]  # fmt: skip
