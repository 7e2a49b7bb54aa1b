"""Django admin. Actions go through the same services as the web pages and the API, so a
relabel here is an ordinary review in the audit trail."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from diagnosis import selectors, services
from diagnosis.models import (
    Label,
    ModelActivation,
    ModelVersion,
    PacsDelivery,
    PacsFeed,
    PacsInstance,
    Prediction,
    Review,
    Site,
    SiteAudit,
    SiteThreshold,
    Study,
    Subtype,
    TrainingJob,
    ValidationSplit,
)


class LatestStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return Prediction.Status.choices

    def queryset(self, request, queryset):
        return queryset.filter(latest_status=self.value()) if self.value() else queryset


class PredictedLabelFilter(admin.SimpleListFilter):
    title = "predicted label"
    parameter_name = "predicted"

    def lookups(self, request, model_admin):
        return Label.choices

    def queryset(self, request, queryset):
        return queryset.filter(predicted_label=self.value()) if self.value() else queryset


class DisagreementFilter(admin.SimpleListFilter):
    title = "model vs radiologist"
    parameter_name = "agreement"

    def lookups(self, request, model_admin):
        return [("disagree", "disagree"), ("agree", "agree")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return selectors.filter_disagreement(queryset, self.value() == "disagree")


class RelabelForm(forms.Form):
    label = forms.ChoiceField(choices=Label.choices)
    subtype = forms.ChoiceField(
        choices=[("", "not given"), *Subtype.choices],
        required=False,
        help_text="With the label Pneumonia only.",
    )
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def clean(self):
        data = super().clean()
        if data.get("subtype") and data.get("label") != Label.PNEUMONIA:
            self.add_error("subtype", "A subtype goes with the label Pneumonia only.")
        return data


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0
    can_delete = False
    fields = readonly_fields = [
        "created_at", "reviewer", "previous_label", "label", "previous_subtype", "subtype",
        "note",
    ]  # fmt: skip

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class PredictionInline(admin.TabularInline):
    model = Prediction
    extra = 0
    can_delete = False
    fields = readonly_fields = [
        "created_at",
        "status",
        "label",
        "probability",
        "threshold",
        "subtype",
        "p_bacterial",
        "model_version",
        "error",
    ]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "original_filename",
        "uploaded_by",
        "created_at",
        "latest_status",
        "predicted_label",
        "current_label",
        "current_subtype",
    ]
    list_filter = [
        LatestStatusFilter,
        PredictedLabelFilter,
        "current_label",
        "current_subtype",
        DisagreementFilter,
        "site",
        "created_at",
    ]
    search_fields = ["original_filename", "sha256", "uploaded_by__username"]
    readonly_fields = [
        "image",
        "original_filename",
        "content_type",
        "sha256",
        "width",
        "height",
        "uploaded_by",
        "created_at",
        "current_label",
        "current_subtype",
        # Like the label, the latest review's: changed by a review (the relabel action), so
        # that the audit trail keeps who and why.
        "unusable_reason",
        "reviewed_at",
        "patient_key",  # a keyed hash, shown to admins only (this admin is theirs alone)
    ]
    inlines = [PredictionInline, ReviewInline]
    actions = ["relabel"]

    def get_queryset(self, request):
        return selectors.studies_annotated(super().get_queryset(request))

    @admin.display(ordering="latest_status")
    def latest_status(self, study: Study) -> str:
        return study.latest_status or ""

    @admin.display(ordering="predicted_label")
    def predicted_label(self, study: Study) -> str:
        return study.predicted_label or ""

    def has_add_permission(self, request) -> bool:
        return False  # Uploads go through the upload page or the API, which validate.

    @admin.action(description="Relabel selected studies (recorded as reviews)")
    def relabel(self, request, queryset):
        form = RelabelForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                count = services.studies_relabel(
                    studies=queryset, reviewer=request.user, **form.cleaned_data
                )
            except PermissionDenied as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            subtype = form.cleaned_data["subtype"]
            self.message_user(
                request,
                f"Relabeled {count} studies as {form.cleaned_data['label']}"
                + (f" ({subtype})." if subtype else "."),
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Relabel studies",
            "form": form,
            "queryset": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/diagnosis/relabel.html", context)


class AuditTrailAdmin(admin.ModelAdmin):
    """Read-only: audit trails are append-only, written by services."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Review)
class ReviewAdmin(AuditTrailAdmin):
    list_display = ["id", "study", "reviewer", "created_at", "previous_label", "label"]
    list_filter = ["label", "unusable_reason", "created_at"]
    search_fields = ["reviewer__username", "note"]


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "status", "label", "probability", "model_version", "created_at"]
    list_filter = ["status", "label", "model_version"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "name", "architecture", "threshold", "is_active", "parent", "created_at", "activated_at"
    ]  # fmt: skip
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ["activate"]

    def has_add_permission(self, request) -> bool:
        return False  # Registered with `manage.py register_model`, which checks the file.

    @admin.action(description="Activate the selected model version")
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        try:
            version = services.model_version_promote(
                version=queryset.get(), user=request.user, reason="activated in the admin"
            )
        except PermissionDenied as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"{version.name} is now active.")


@admin.register(ModelActivation)
class ModelActivationAdmin(AuditTrailAdmin):
    list_display = ["created_at", "action", "previous", "version", "user", "reason"]
    list_filter = ["action"]


@admin.register(TrainingJob)
class TrainingJobAdmin(AuditTrailAdmin):
    """Read-only here: start retraining on the models page, the API or `manage.py retrain`."""

    list_display = ["id", "created_at", "created_by", "init", "status", "candidate", "promoted"]
    list_filter = ["status", "promoted"]


@admin.register(ValidationSplit)
class ValidationSplitAdmin(AuditTrailAdmin):
    list_display = ["id", "created_at", "created_by", "manifest", "manifest_hash"]


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "title", "created_at"]
    search_fields = ["name", "title"]


@admin.register(SiteAudit)
class SiteAuditAdmin(AuditTrailAdmin):
    """Read-only: audits come from `manage.py site_audit`; the site page shows them."""

    list_display = ["id", "created_at", "site", "model_version", "threshold_in_force", "candidate"]
    list_filter = ["site"]


@admin.register(SiteThreshold)
class SiteThresholdAdmin(AuditTrailAdmin):
    """Read-only: a site threshold is activated on the site page, the API or the command."""

    list_display = [
        "created_at", "site", "model_version", "threshold", "subtype_threshold", "created_by",
        "reason",
    ]  # fmt: skip
    list_filter = ["site"]


# The PACS link: what was taken from Orthanc, what is owed back, how far the feed was read.
# Read-only records; the services write them.
@admin.register(PacsInstance)
class PacsInstanceAdmin(AuditTrailAdmin):
    list_display = ["id", "received_at", "status", "study", "site", "reason"]
    list_filter = ["status", "site"]
    readonly_fields = [f.name for f in PacsInstance._meta.fields]


@admin.register(PacsDelivery)
class PacsDeliveryAdmin(AuditTrailAdmin):
    list_display = ["id", "created_at", "kind", "status", "attempts", "delivered_at", "prediction"]
    list_filter = ["status", "kind"]
    readonly_fields = [f.name for f in PacsDelivery._meta.fields]


@admin.register(PacsFeed)
class PacsFeedAdmin(AuditTrailAdmin):
    list_display = ["source", "last_seq", "updated_at"]
    readonly_fields = [f.name for f in PacsFeed._meta.fields]
