from __future__ import annotations

from django.urls import path

from diagnosis import views

urlpatterns = [
    path("", views.study_list, name="study-list"),
    path("studies/upload/", views.study_upload, name="study-upload"),
    path("studies/<int:pk>/", views.study_detail, name="study-detail"),
    path("studies/<int:pk>/image/", views.study_image, name="study-image"),
    path("studies/<int:pk>/thumbnail.jpg", views.study_thumbnail, name="study-thumbnail"),
    path(
        "studies/<int:pk>/predictions/<int:prediction_pk>/heatmap/",
        views.prediction_heatmap,
        name="prediction-heatmap",
    ),
    path("studies/<int:pk>/reviews/", views.review_create, name="review-create"),
    path("worklist/", views.worklist, name="worklist"),
    path("worklist/next/", views.worklist_next, name="worklist-next"),
    path("agreement/", views.agreement, name="agreement"),
    path("cleaning/", views.cleaning, name="cleaning"),
    path("cleaning/decide/", views.cleaning_decide, name="cleaning-decide"),
    path("cleaning/images/<int:pk>/", views.cleaning_image, name="cleaning-image"),
    path("models/", views.model_list, name="model-list"),
    path("sites/", views.site_list, name="site-list"),
    path("sites/<slug:name>/", views.site_detail, name="site-detail"),
    path(
        "sites/<slug:name>/thresholds/",
        views.site_threshold_activate,
        name="site-threshold-activate",
    ),
    path("models/<int:pk>/promote/", views.model_promote, name="model-promote"),
    path("models/retrain/", views.training_job_create, name="training-job-create"),
    path("models/jobs/<int:pk>/", views.training_job, name="training-job"),
    path(
        "models/plots/<slug:owner>/<int:pk>/<slug:plot>.png",
        views.plot,
        name="plot",
    ),
]
