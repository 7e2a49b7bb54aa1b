from __future__ import annotations

from rest_framework.permissions import BasePermission

from diagnosis import roles


class CanUpload(BasePermission):
    message = "Your account has no role on this platform (uploader, radiologist or admin)."

    def has_permission(self, request, view) -> bool:
        return roles.can_upload(request.user)


class CanReview(BasePermission):
    message = "Only radiologists and admins may review studies."

    def has_permission(self, request, view) -> bool:
        return roles.can_review(request.user)


class CanPromote(BasePermission):
    message = "Only admins may retrain and promote models."

    def has_permission(self, request, view) -> bool:
        return roles.can_promote(request.user)
