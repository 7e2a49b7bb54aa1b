from __future__ import annotations

from diagnosis import roles, selectors


def platform(request) -> dict:
    user = request.user
    if not roles.has_any_role(user):
        return {}
    return {
        "active_model": selectors.model_version_active(),
        "can_upload": roles.can_upload(user),
        "can_review": roles.can_review(user),
        "is_admin": roles.is_admin(user),
    }
