"""REST API: one view per resource, each parses input, calls a service or selector, and
formats the answer."""

from __future__ import annotations

from dataclasses import asdict

from django.core.files.storage import default_storage
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from diagnosis import selectors, services
from diagnosis.api.pagination import Pagination
from diagnosis.api.permissions import CanPromote, CanReview, CanUpload
from diagnosis.api.serializers import (
    ModelVersionOutputSerializer,
    ReviewOutputSerializer,
    StudyDetailSerializer,
    StudySummarySerializer,
    TrainingJobOutputSerializer,
    ValidationSplitOutputSerializer,
)
from diagnosis.downloads import file_response
from diagnosis.models import (
    Label,
    PredictedSubtype,
    Prediction,
    Site,
    Subtype,
    TrainingJob,
    Unusable,
)
from diagnosis.validation import UploadRejected


class SiteNameField(serializers.SlugRelatedField):
    """A site by name. A name with a NUL byte names no site: refused as one that does not
    exist, before the lookup (PostgreSQL refuses NUL in text and would answer 500)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data)
        return super().to_internal_value(data)


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number, from 1."),
    OpenApiParameter("page_size", int, description=Pagination.page_size_query_description),
]


def _paginated(request, view, studies) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(studies, request, view=view)
    return paginator.get_paginated_response(StudySummarySerializer(page, many=True).data)


class StudyListCreateApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "uploads"  # UploadRateThrottle: UPLOAD_RATE per user

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(
            choices=Prediction.Status.values, required=False, help_text="the latest prediction's"
        )
        predicted_label = serializers.ChoiceField(
            choices=Label.values, required=False, help_text="the model's call (latest prediction)"
        )
        reviewed_label = serializers.ChoiceField(
            choices=Label.values, required=False,
            help_text="the radiologists' label (latest review); studies not reviewed never match",
        )  # fmt: skip
        subtype = serializers.ChoiceField(
            choices=Subtype.values, required=False, help_text="the radiologists' subtype"
        )
        predicted_subtype = serializers.ChoiceField(
            choices=PredictedSubtype.values, required=False, help_text="the latest prediction's"
        )

    class UploadInputSerializer(serializers.Serializer):
        image = serializers.FileField(allow_empty_file=True)
        site = SiteNameField(
            slug_field="name", queryset=Site.objects.all(), required=False,
            help_text="The site (hospital, scanner) the study comes from; default: the default "
            "site. Its threshold for the active model decides.",
        )  # fmt: skip
        patient_id = serializers.CharField(
            required=False, allow_blank=True, max_length=64, write_only=True,
            help_text="The patient's identifier at your site (e.g. the record number), for a "
            "JPEG or PNG: it groups a patient's images when models are trained and judged. Only "
            "a keyed hash of it is kept; a DICOM's own PatientID is used instead.",
        )  # fmt: skip

    class AcceptedSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        status = serializers.CharField()
        url = serializers.CharField()
        duplicate = serializers.BooleanField()
        warnings = serializers.ListField(child=serializers.CharField())

    @extend_schema(
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses=StudySummarySerializer(many=True),
        summary="List the studies you may see, newest first",
    )
    def get(self, request):
        if "label" in request.query_params:
            raise serializers.ValidationError(
                {"label": ["Ambiguous: filter on predicted_label (the model's call) or "
                           "reviewed_label (the radiologists')."]}
            )  # fmt: skip
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        params = dict(filters.validated_data)
        if "reviewed_label" in params:
            params["label"] = params.pop("reviewed_label")
        return _paginated(request, self, selectors.study_list_for(request.user, **params))

    @extend_schema(
        request={"multipart/form-data": UploadInputSerializer},
        responses={202: AcceptedSerializer, 200: AcceptedSerializer},
        summary="Upload a chest X-ray (JPEG, PNG or DICOM); it is predicted asynchronously",
        description="202: a new study, predicted asynchronously. 200: the same bytes were "
        "already uploaded as a study you can see; that study is returned, not run again.",
    )
    def post(self, request):
        data = self.UploadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            study = services.study_create(
                uploaded_by=request.user,
                image=data.validated_data["image"],
                site=data.validated_data.get("site"),
                patient_id=data.validated_data.get("patient_id", ""),
            )
        except UploadRejected as exc:
            field = "patient_id" if exc.filename == "patient_id" else "image"
            raise serializers.ValidationError({field: [exc.reason]}) from None
        body = StudySummarySerializer(study).data
        return Response(
            {
                "id": study.pk,
                "status": body["status"],
                "url": body["url"],
                "duplicate": study.is_duplicate,
                "warnings": study.warnings,
            },
            status=status.HTTP_200_OK if study.is_duplicate else status.HTTP_202_ACCEPTED,
            headers={"Location": request.build_absolute_uri(body["url"])},
        )


class StudyDetailApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(responses=StudyDetailSerializer, summary="A study with its predictions")
    def get(self, request, pk: int):
        study = selectors.study_or_404(request.user, pk)
        return Response(StudyDetailSerializer(study, context={"request": request}).data)


class StudyImageApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses={(200, "image/*"): bytes}, summary="The uploaded image, to authorized users"
    )
    def get(self, request, pk: int):
        study = selectors.study_or_404(request.user, pk)
        return file_response(
            lambda: study.image.open("rb"), content_type=study.content_type,
            what=f"the image of study {study.pk}", name=study.image.name,
        )  # fmt: skip


class PredictionHeatmapApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    class QuestionSerializer(serializers.Serializer):
        question = serializers.ChoiceField(
            choices=list(selectors.HEATMAP_FIELDS), default="pneumonia", required=False,
            help_text="pneumonia: evidence for pneumonia; subtype: for bacterial against viral "
            "(a model version that answers the subtype)",
        )  # fmt: skip

    @extend_schema(
        parameters=[QuestionSerializer],
        responses={(200, "image/png"): bytes},
        summary="Grad-CAM overlay of what drove a prediction (either question)",
    )
    def get(self, request, pk: int, prediction_pk: int):
        query = self.QuestionSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        question = query.validated_data.get("question", "pneumonia")
        heatmap = selectors.prediction_heatmap_for(request.user, pk, prediction_pk, question)
        if heatmap is None:
            raise Http404("No heatmap for this prediction.")
        return file_response(
            lambda: heatmap.open("rb"), content_type="image/png",
            what=f"the heatmap of prediction {prediction_pk}", name=heatmap.name,
        )  # fmt: skip


class ReviewCreateApi(APIView):
    permission_classes = [IsAuthenticated, CanReview]

    class ReviewInputSerializer(serializers.Serializer):
        label = serializers.ChoiceField(choices=Label.values, required=False, allow_blank=True)
        subtype = serializers.ChoiceField(
            choices=Subtype.values, required=False, allow_blank=True,
            help_text="With label PNEUMONIA only: bacterial, viral or undetermined.",
        )  # fmt: skip
        unusable_reason = serializers.ChoiceField(
            choices=Unusable.values, required=False, allow_blank=True
        )
        note = serializers.CharField(required=False, allow_blank=True, max_length=5000)

        def validate(self, data):
            if not data.get("label") and not data.get("unusable_reason"):
                raise serializers.ValidationError(
                    "Give a label, or an unusable_reason saying why the image is unusable."
                )
            if data.get("subtype") and data.get("label") != Label.PNEUMONIA:
                raise serializers.ValidationError(
                    {"subtype": ["A subtype goes with the label PNEUMONIA only."]}
                )
            return data

    @extend_schema(
        request=ReviewInputSerializer,
        responses={201: ReviewOutputSerializer},
        summary="Confirm or correct a study's label, or mark it unusable (radiologists)",
    )
    def post(self, request, pk: int):
        study = selectors.study_or_404(request.user, pk)
        data = self.ReviewInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.review_create(study=study, reviewer=request.user, **data.validated_data)
        return Response(ReviewOutputSerializer(review).data, status=status.HTTP_201_CREATED)


class PlotApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses={(200, "image/png"): bytes},
        summary="A plot of a model version (owner 'version') or of an evaluation",
    )
    def get(self, request, owner: str, pk: int, plot: str):
        name = selectors.plot_file(owner, pk, plot)
        if name is None:
            raise Http404("No such plot.")
        return file_response(
            lambda: default_storage.open(name, "rb"), content_type="image/png",
            what=f"the {plot} plot", name=name,
        )  # fmt: skip


class WorklistApi(APIView):
    permission_classes = [IsAuthenticated, CanReview]

    class FilterSerializer(serializers.Serializer):
        order = serializers.ChoiceField(
            choices=list(selectors.WORKLIST_ORDERS), default="triage", required=False
        )
        subtype = serializers.ChoiceField(
            choices=PredictedSubtype.values, required=False,
            help_text="only studies whose latest prediction calls this subtype",
        )  # fmt: skip

    @extend_schema(
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses=StudySummarySerializer(many=True),
        summary="Studies awaiting review: triage, uncertainty, oldest or bacterial order; "
        "overdue first",
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        order = filters.validated_data.get("order", "triage")
        subtype = filters.validated_data.get("subtype", "")
        return _paginated(request, self, selectors.worklist(order=order, subtype=subtype))


class RateSerializer(serializers.Serializer):
    value = serializers.FloatField(help_text="k / n")
    k = serializers.IntegerField()
    n = serializers.IntegerField()
    low = serializers.FloatField(help_text="95% Wilson interval, lower end")
    high = serializers.FloatField(help_text="95% Wilson interval, upper end")
    too_few = serializers.BooleanField(help_text="n is below AGREEMENT_MIN_CASES")


def _rates_as_json(value):
    """agreement_by_version()'s rows with each selectors.Rate as a plain dict."""
    if isinstance(value, selectors.Rate):
        return asdict(value)
    if isinstance(value, dict):
        return {key: _rates_as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rates_as_json(item) for item in value]
    return value


class AgreementApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses=inline_serializer(
            "Agreement",
            {
                "model_version": serializers.CharField(),
                "n": serializers.IntegerField(),
                "confusion": serializers.DictField(child=serializers.IntegerField()),
                "agreement": RateSerializer(),
                "sensitivity": RateSerializer(allow_null=True),
                "specificity": RateSerializer(allow_null=True),
                "subtype": inline_serializer(
                    "SubtypeAgreement",
                    {
                        "n": serializers.IntegerField(),
                        "n_undetermined": serializers.IntegerField(),
                        "confusion": serializers.DictField(
                            child=serializers.DictField(child=serializers.IntegerField()),
                            help_text="confusion[reviewed][called]",
                        ),
                        "agreement": RateSerializer(allow_null=True),
                        "sensitivity": RateSerializer(allow_null=True),
                        "specificity": RateSerializer(allow_null=True),
                    },
                    allow_null=True,
                ),
            },
            many=True,
        ),
        summary="Model vs radiologists on reviewed studies, per model version",
        description="Every rate comes with k, n and its 95% Wilson interval; too_few marks a "
        "rate from fewer than AGREEMENT_MIN_CASES cases.",
    )
    def get(self, request):
        return Response(_rates_as_json(selectors.agreement_by_version()))


class ModelVersionListApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses=inline_serializer(
            "ModelVersionList",
            {
                "active": serializers.CharField(allow_null=True),
                "results": ModelVersionOutputSerializer(many=True),
                "validation_split": ValidationSplitOutputSerializer(allow_null=True),
            },
        ),
        summary="Registered model versions, which one is active, and the frozen validation split",
    )
    def get(self, request):
        versions = list(selectors.model_version_list())
        active = next((v.name for v in versions if v.is_active), None)
        split = selectors.validation_split_current()
        return Response(
            {
                "active": active,
                "results": ModelVersionOutputSerializer(versions, many=True).data,
                "validation_split": ValidationSplitOutputSerializer(split).data if split else None,
            }
        )


class ModelVersionPromoteApi(APIView):
    permission_classes = [IsAuthenticated, CanPromote]

    class PromoteInputSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, max_length=500)

    @extend_schema(
        request=PromoteInputSerializer,
        responses=ModelVersionOutputSerializer,
        summary="Make a model version the active one (admins; audited)",
    )
    def post(self, request, name: str):
        version = selectors.model_version_by_name(name)
        if version is None:
            raise Http404("No such model version.")
        data = self.PromoteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.model_version_promote(
            version=version, user=request.user, reason=data.validated_data.get("reason", "")
        )
        return Response(ModelVersionOutputSerializer(version, context={"request": request}).data)


class TrainingJobListCreateApi(APIView):
    def get_permissions(self):
        # Everyone with a role may follow retraining; only admins start it.
        extra = CanPromote() if self.request.method == "POST" else CanUpload()
        return [IsAuthenticated(), extra]

    class TrainingJobInputSerializer(serializers.Serializer):
        init = serializers.ChoiceField(choices=TrainingJob.Init.values, default="active")
        freeze_epochs = serializers.IntegerField(min_value=0, max_value=50, required=False)
        epochs = serializers.IntegerField(min_value=0, max_value=50, required=False)
        limit_per_class = serializers.IntegerField(min_value=1, required=False)
        clean = serializers.BooleanField(default=True)

    @extend_schema(
        responses=TrainingJobOutputSerializer(many=True), summary="Recent retraining jobs"
    )
    def get(self, request):
        jobs = selectors.training_jobs(limit=50)
        return Response(TrainingJobOutputSerializer(jobs, many=True).data)

    @extend_schema(
        request=TrainingJobInputSerializer,
        responses={202: TrainingJobOutputSerializer},
        summary="Start retraining on the training worker (admins)",
    )
    def post(self, request):
        data = self.TrainingJobInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parameters = dict(data.validated_data)
        init = parameters.pop("init")
        try:
            job = services.training_job_create(user=request.user, init=init, parameters=parameters)
        except ValueError as exc:
            raise serializers.ValidationError({"init": [str(exc)]}) from None
        location = reverse("api:training-job-detail", args=[job.pk])
        return Response(
            TrainingJobOutputSerializer(job).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": location},
        )


class TrainingJobDetailApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses=TrainingJobOutputSerializer, summary="One retraining job, with its log"
    )
    def get(self, request, pk: int):
        job = selectors.training_job(pk)
        if job is None:
            raise Http404("No such training job.")
        return Response(TrainingJobOutputSerializer(job).data)
