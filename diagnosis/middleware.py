"""Answers for failures that are nobody's fault in the request: the storage is down."""

from __future__ import annotations

import logging

from django.http import JsonResponse
from django.shortcuts import render

from diagnosis.files import is_outage

logger = logging.getLogger(__name__)

STORAGE_DOWN = (
    "The file storage is not answering, so nothing was saved or read. Try again in a minute."
)
RETRY_AFTER_SECONDS = 30


class StorageOutageMiddleware:
    """A request that failed because the object storage did not answer gets a 503 with
    Retry-After, as JSON for the API and XHR uploads, as a page otherwise, never a 500. The
    services write files inside atomic_files(), so the failed request left no row behind."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not is_outage(exception):
            return None
        logger.error("Storage unavailable during %s %s: %r", request.method, request.path,
                     exception)  # fmt: skip
        wants_json = request.path.startswith("/api/") or "json" in request.headers.get("Accept", "")
        if wants_json:
            # "summary" is what the upload page's script shows (static/diagnosis/upload.js).
            response = JsonResponse({"detail": STORAGE_DOWN, "summary": STORAGE_DOWN}, status=503)
        else:
            response = render(request, "503.html", {"message": STORAGE_DOWN}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
