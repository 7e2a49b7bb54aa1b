from __future__ import annotations

from rest_framework.throttling import UserRateThrottle


class UploadRateThrottle(UserRateThrottle):
    """Uploads (POST to the study list) per user, on top of the general API rate."""

    scope = "uploads"

    def allow_request(self, request, view) -> bool:
        if request.method != "POST" or getattr(view, "throttle_scope", "") != "uploads":
            return True
        return super().allow_request(request, view)
