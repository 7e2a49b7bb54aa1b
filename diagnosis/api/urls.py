from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from diagnosis.api import sites, views

app_name = "api"

urlpatterns = [
    path("studies/", views.StudyListCreateApi.as_view(), name="study-list"),
    path("studies/<int:pk>/", views.StudyDetailApi.as_view(), name="study-detail"),
    path("studies/<int:pk>/image/", views.StudyImageApi.as_view(), name="study-image"),
    path(
        "studies/<int:pk>/predictions/<int:prediction_pk>/heatmap/",
        views.PredictionHeatmapApi.as_view(),
        name="prediction-heatmap",
    ),
    path("studies/<int:pk>/reviews/", views.ReviewCreateApi.as_view(), name="study-reviews"),
    path("worklist/", views.WorklistApi.as_view(), name="worklist"),
    path("agreement/", views.AgreementApi.as_view(), name="agreement"),
    path("models/", views.ModelVersionListApi.as_view(), name="model-list"),
    path(
        "models/<slug:name>/promote/",
        views.ModelVersionPromoteApi.as_view(),
        name="model-promote",
    ),
    path("sites/", sites.SiteListApi.as_view(), name="site-list"),
    path("sites/<slug:name>/", sites.SiteDetailApi.as_view(), name="site-detail"),
    path(
        "sites/<slug:name>/thresholds/",
        sites.SiteThresholdActivateApi.as_view(),
        name="site-threshold-activate",
    ),
    path("training-jobs/", views.TrainingJobListCreateApi.as_view(), name="training-job-list"),
    path(
        "training-jobs/<int:pk>/",
        views.TrainingJobDetailApi.as_view(),
        name="training-job-detail",
    ),
    path(
        "plots/<slug:owner>/<int:pk>/<slug:plot>/",
        views.PlotApi.as_view(),
        name="plot",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
