"""The Celery application: `celery -A pneumo_site worker` runs the inference worker."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumo_site.settings")

app = Celery("pneumo_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
