"""Output shapes shared by several API views."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from diagnosis import roles, selectors, wording
from diagnosis.models import (
    SUBTYPE_CAVEAT,
    Evaluation,
    ModelVersion,
    PacsDelivery,
    PacsInstance,
    Prediction,
    Review,
    Site,
    SiteAudit,
    SiteThreshold,
    Study,
    TrainingJob,
    ValidationSplit,
)


class CallSerializer(serializers.Serializer):
    """A call in words, as the pages say it (diagnosis.wording)."""

    headline = serializers.CharField(
        help_text="e.g. 'Pneumonia likely', 'Borderline: leans normal'"
    )
    sureness = serializers.ChoiceField(choices=["very sure", "fairly sure", "borderline"])
    tone = serializers.ChoiceField(
        choices=["positive", "negative", "borderline", "neutral"],
        help_text="How the pages colour it: pneumonia, normal, borderline; neutral (subtype).",
    )
    borderline = serializers.BooleanField(
        help_text="The probability is within BORDERLINE_MARGIN of the threshold."
    )
    percent = serializers.IntegerField(help_text="The probability in whole percent.")
    threshold_percent = serializers.IntegerField()


class PredictionOutputSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    heatmap_url = serializers.SerializerMethodField()
    subtype_heatmap_url = serializers.SerializerMethodField()
    threshold_source = serializers.CharField(
        read_only=True, help_text="Whose threshold decided: 'site NAME' or 'model version'."
    )
    subtype = serializers.SerializerMethodField(
        help_text="bacterial or viral, called at subtype_threshold on p_bacterial = "
        f"P(bacterial | pneumonia); null when the model version does not predict it. "
        f"{SUBTYPE_CAVEAT}"
    )
    subtype_caveat = serializers.SerializerMethodField(
        help_text="What the subtype is not, given wherever a subtype is."
    )
    call = serializers.SerializerMethodField(
        help_text="The pneumonia call in words; null until the prediction is done."
    )
    subtype_call = serializers.SerializerMethodField(
        help_text="The subtype call in words; null when no subtype was predicted."
    )
    model_intended_use = serializers.CharField(
        source="model_version.intended_use", read_only=True, default=None
    )
    model_warning = serializers.SerializerMethodField(
        help_text="What a page warns about the model that made it (a demo, a candidate); "
        "empty for the active, non-demo model."
    )

    class Meta:
        model = Prediction
        fields = [
            "id",
            "status",
            "label",
            "probability",
            "threshold",
            "threshold_source",
            "subtype",
            "p_bacterial",
            "subtype_threshold",
            "subtype_caveat",
            "call",
            "subtype_call",
            "model_version",
            "model_intended_use",
            "model_warning",
            "runtime",
            "elapsed_ms",
            "heatmap_url",
            "subtype_heatmap_url",
            "heatmap_due",
            "error",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_subtype(self, prediction: Prediction) -> str | None:
        return prediction.subtype or None

    @extend_schema_field(CallSerializer(allow_null=True))
    def get_call(self, prediction: Prediction) -> dict | None:
        call = wording.prediction_call(prediction)
        return None if call is None else CallSerializer(call).data

    @extend_schema_field(CallSerializer(allow_null=True))
    def get_subtype_call(self, prediction: Prediction) -> dict | None:
        call = wording.prediction_subtype_call(prediction)
        return None if call is None else CallSerializer(call).data

    def get_model_warning(self, prediction: Prediction) -> str:
        return wording.model_warning(prediction.model_version)

    def get_subtype_caveat(self, prediction: Prediction) -> str | None:
        return SUBTYPE_CAVEAT if prediction.subtype else None

    def get_heatmap_url(self, prediction: Prediction) -> str | None:
        if not prediction.heatmap:
            return None
        return reverse("api:prediction-heatmap", args=[prediction.study_id, prediction.pk])

    def get_subtype_heatmap_url(self, prediction: Prediction) -> str | None:
        if not prediction.subtype_heatmap:
            return None
        url = reverse("api:prediction-heatmap", args=[prediction.study_id, prediction.pk])
        return f"{url}?question=subtype"


class ReviewOutputSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.get_username")

    class Meta:
        model = Review
        fields = [
            "id",
            "reviewer",
            "created_at",
            "previous_label",
            "label",
            "previous_subtype",
            "subtype",
            "unusable_reason",
            "note",
        ]


class StudySummarySerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    prediction = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    uploaded_by = serializers.CharField(source="uploaded_by.get_username")
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Study
        fields = [
            "id",
            "url",
            "site",
            "status",
            "prediction",
            "current_label",
            "current_subtype",
            "unusable_reason",
            "original_filename",
            "width",
            "height",
            "uploaded_by",
            "created_at",
            "source_format",
            "modality",
            "view_position",
            "body_part",
            "patient_sex",
            "patient_age_years",
            "warnings",
        ]

    def get_status(self, study: Study) -> str:
        latest = study.latest_prediction
        return latest.status if latest else ""

    def get_prediction(self, study: Study) -> dict | None:
        latest = study.latest_prediction
        return PredictionOutputSerializer(latest).data if latest else None

    def get_url(self, study: Study) -> str:
        return reverse("api:study-detail", args=[study.pk])


class DeliveryOutputSerializer(serializers.ModelSerializer):
    """One result object owed to the PACS and where its delivery stands."""

    class Meta:
        model = PacsDelivery
        fields = ["kind", "status", "attempts", "last_error", "next_attempt_at", "created_at",
                  "delivered_at", "forwarded_to"]  # fmt: skip


class PredictionDetailSerializer(PredictionOutputSerializer):
    deliveries = DeliveryOutputSerializer(
        many=True, read_only=True,
        help_text="Result objects sent back to the PACS (studies that came from it only).",
    )  # fmt: skip

    class Meta(PredictionOutputSerializer.Meta):
        fields = [*PredictionOutputSerializer.Meta.fields, "deliveries"]


class PacsInstanceOutputSerializer(serializers.ModelSerializer):
    """Where a study came from in the PACS: shown to admins only."""

    class Meta:
        model = PacsInstance
        fields = ["source", "received_at", "orthanc_id", "orthanc_study", "sop_instance_uid",
                  "series_instance_uid", "study_instance_uid", "sop_class_uid"]  # fmt: skip


class StudyDetailSerializer(StudySummarySerializer):
    image_url = serializers.SerializerMethodField()
    predictions = PredictionDetailSerializer(many=True, source="predictions.all")
    reviews = ReviewOutputSerializer(many=True, source="reviews.all")
    pacs = serializers.SerializerMethodField(
        help_text="The study's PACS identifiers (admins only; null for everyone else, and for "
        "uploads)."
    )

    class Meta(StudySummarySerializer.Meta):
        fields = [*StudySummarySerializer.Meta.fields, "image_url", "predictions", "reviews",
                  "pacs"]  # fmt: skip

    def get_image_url(self, study: Study) -> str:
        return reverse("api:study-image", args=[study.pk])

    @extend_schema_field(PacsInstanceOutputSerializer(allow_null=True))
    def get_pacs(self, study: Study) -> dict | None:
        request = self.context.get("request")
        if request is None or not roles.is_admin(request.user):
            return None
        instance = selectors.study_pacs_instance(study)
        return PacsInstanceOutputSerializer(instance).data if instance else None


def plot_urls(owner: str, row: Evaluation | ModelVersion | SiteAudit) -> dict[str, str]:
    return {name: reverse("api:plot", args=[owner, row.pk, name]) for name in row.plots}


class EvaluationOutputSerializer(serializers.ModelSerializer):
    plots = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = ["id", "created_at", "data_source", "data_hash", "metrics", "plots"]

    def get_plots(self, evaluation: Evaluation) -> dict[str, str]:
        return plot_urls("evaluation", evaluation)


class ValidationSplitOutputSerializer(serializers.ModelSerializer):
    """The frozen validation split: training chooses on the selection part, the gate judges
    on the gate part (0 images in both until the split is cut, at its next use)."""

    n = serializers.SerializerMethodField()
    n_selection = serializers.SerializerMethodField()
    n_gate = serializers.IntegerField(read_only=True)

    class Meta:
        model = ValidationSplit
        fields = ["id", "created_at", "origin", "n", "n_selection", "n_gate", "manifest_hash",
                  "selection_hash", "gate_hash", "key_counts"]  # fmt: skip

    def get_n(self, split: ValidationSplit) -> int:
        return len(split.item_keys)

    def get_n_selection(self, split: ValidationSplit) -> int:
        return split.n_selection if split.gate_manifest else 0


class ModelVersionOutputSerializer(serializers.ModelSerializer):
    activated_by = serializers.CharField(source="activated_by.get_username", default=None)
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True)
    evaluations = EvaluationOutputSerializer(many=True, source="evaluations.all")
    plots = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "architecture",
            "sha256",
            "class_names",
            "positive_class",
            "preprocessing",
            "threshold",
            "subtype",
            "metrics",
            "data_hash",
            "is_active",
            "created_at",
            "activated_at",
            "activated_by",
            "parent",
            "gate",
            "plots",
            "evaluations",
        ]

    def get_plots(self, version: ModelVersion) -> dict[str, str]:
        return plot_urls("version", version)


class TrainingJobOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.get_username", default=None)
    candidate = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = TrainingJob
        fields = [
            "id", "status", "init", "parameters", "created_by", "created_at", "started_at",
            "finished_at", "attempts", "candidate", "promoted", "error", "log",
        ]  # fmt: skip


class SiteThresholdOutputSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.CharField(source="created_by.get_username", default=None)

    class Meta:
        model = SiteThreshold
        fields = ["id", "site", "model_version", "threshold", "subtype_threshold", "audit",
                  "created_by", "reason", "created_at"]  # fmt: skip


class SiteAuditOutputSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    candidate = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.CharField(source="created_by.get_username", default=None)
    plots = serializers.SerializerMethodField()

    class Meta:
        model = SiteAudit
        fields = ["id", "created_at", "created_by", "model_version", "data_source",
                  "threshold_in_force", "metrics", "candidate", "plots"]  # fmt: skip

    def get_plots(self, audit: SiteAudit) -> dict[str, str]:
        return plot_urls("audit", audit)


class SiteOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["name", "title", "created_at"]
