"""Site API: what the site pages show, and the audited activation of a site threshold."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from diagnosis import selectors, services
from diagnosis.api.permissions import CanPromote, CanUpload
from diagnosis.api.serializers import (
    SiteAuditOutputSerializer,
    SiteOutputSerializer,
    SiteThresholdOutputSerializer,
)


def _site(name: str):
    site = selectors.site(name)
    if site is None:
        raise Http404("No such site.")
    return site


class SiteListApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(responses=SiteOutputSerializer(many=True), summary="The sites")
    def get(self, request):
        return Response(SiteOutputSerializer(selectors.site_list(), many=True).data)


class SiteDetailApi(APIView):
    permission_classes = [IsAuthenticated, CanUpload]

    @extend_schema(
        responses=inline_serializer(
            "SiteDetail",
            {
                "site": SiteOutputSerializer(),
                "active_model": serializers.CharField(allow_null=True),
                "threshold_in_force": serializers.FloatField(allow_null=True),
                "threshold_source": serializers.CharField(allow_null=True),
                "subtype_threshold_in_force": serializers.FloatField(
                    allow_null=True,
                    help_text="on P(bacterial | pneumonia): the site's, else the version's; "
                    "null when the active version does not answer the subtype",
                ),
                "audits": SiteAuditOutputSerializer(many=True),
                "thresholds": SiteThresholdOutputSerializer(many=True),
            },
        ),
        summary="A site: the threshold in force, its audits and its threshold history",
    )
    def get(self, request, name: str):
        site = _site(name)
        active = selectors.model_version_active()
        in_force = selectors.site_threshold_in_force(active, site) if active else None
        threshold, source = None, None
        if in_force is not None:
            threshold, source = in_force.threshold, f"site {site.name}"
        elif active is not None:
            threshold, source = active.threshold, "model version"
        subtype_threshold = None
        if active is not None and active.subtype:
            subtype_threshold = active.subtype["threshold"]
            if in_force is not None and in_force.subtype_threshold is not None:
                subtype_threshold = in_force.subtype_threshold
        audits = selectors.site_audits(site)
        history = selectors.site_threshold_history(site)
        return Response(
            {
                "site": SiteOutputSerializer(site).data,
                "active_model": active.name if active else None,
                "threshold_in_force": threshold,
                "threshold_source": source,
                "subtype_threshold_in_force": subtype_threshold,
                "audits": SiteAuditOutputSerializer(audits, many=True).data,
                "thresholds": SiteThresholdOutputSerializer(history, many=True).data,
            }
        )


class SiteThresholdActivateApi(APIView):
    permission_classes = [IsAuthenticated, CanPromote]

    class InputSerializer(serializers.Serializer):
        audit = serializers.IntegerField(help_text="the audit whose calibrated threshold to use")
        restore = serializers.BooleanField(
            default=False, help_text="restore the audited version's own thresholds instead"
        )
        reason = serializers.CharField(required=False, allow_blank=True, max_length=500)

    @extend_schema(
        request=InputSerializer,
        responses={201: SiteThresholdOutputSerializer},
        summary="Put an audit's calibrated thresholds (pneumonia, and subtype where it has one) in "
        "force at the site (admins; audited)",
    )
    def post(self, request, name: str):
        site = _site(name)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        audit = selectors.site_audit(data.validated_data["audit"])
        if audit is None or audit.site_id != site.pk:
            raise serializers.ValidationError({"audit": ["no such audit at this site"]})
        try:
            row = services.site_threshold_from_audit(
                audit=audit,
                user=request.user,
                reason=data.validated_data.get("reason", ""),
                restore=data.validated_data["restore"],
            )
        except ValueError as exc:
            raise serializers.ValidationError({"audit": [str(exc)]}) from None
        return Response(SiteThresholdOutputSerializer(row).data, status=201)
