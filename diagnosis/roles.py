"""Roles are Django groups: `uploader` and `radiologist`; admins are superusers.

A radiologist can do everything an uploader can, and also review; an admin can do
everything. A signed-in user with none of these roles can do nothing.

Services that change what every prediction uses (promotion, rollback, retraining, a site's
threshold) take the acting user and refuse one who may not (`require`); None is refused too,
so a caller that forgets to say who acts is an error, not a bypass. The platform's own actions
(a gate that promotes, an adaptation that sets its candidate's threshold) and a management
command run at the server's shell without --user act as `SYSTEM`: allowed, and recorded with
no user and a reason that starts with "system:".
"""

from __future__ import annotations

import functools

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied

UPLOADER = "uploader"
RADIOLOGIST = "radiologist"
GROUPS = (UPLOADER, RADIOLOGIST)

User = AbstractBaseUser | AnonymousUser


def _groups(user: User) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    # Cached on the user object: a page asks several of these questions.
    if not hasattr(user, "_role_groups"):
        user._role_groups = set(user.groups.values_list("name", flat=True))
    return user._role_groups


def is_admin(user: User) -> bool:
    return user.is_authenticated and user.is_active and user.is_superuser


def is_radiologist(user: User) -> bool:
    return is_admin(user) or RADIOLOGIST in _groups(user)


def can_upload(user: User) -> bool:
    return is_radiologist(user) or UPLOADER in _groups(user)


def can_review(user: User) -> bool:
    return is_radiologist(user)


def can_promote(user: User) -> bool:
    """Retraining and promotion change what every prediction uses: admins only."""
    return is_admin(user)


def sees_all_studies(user: User) -> bool:
    """Uploaders see their own studies; radiologists and admins see every study."""
    return is_radiologist(user)


def has_any_role(user: User) -> bool:
    return can_upload(user)


def role_required(allowed):
    """A page view for signed-in users for whom `allowed(user)` holds: anonymous users go to
    the sign-in page, others get 403. The pages' one way of saying who may see them."""

    def decorate(view):
        @functools.wraps(view)
        def checked(request, *args, **kwargs):
            if not allowed(request.user):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return login_required(checked)

    return decorate


class System:
    """The platform acting on its own, or an operator at the server's shell (see above)."""

    is_authenticated = False  # never a person: every role check on it is False

    def __repr__(self) -> str:
        return "SYSTEM"


SYSTEM = System()


def require(user, allowed, message: str) -> None:
    """PermissionDenied(message) unless `user` is SYSTEM or `allowed(user)`; None is refused."""
    if user is SYSTEM:
        return
    if user is None:
        raise PermissionDenied(f"{message} No acting user was given.")
    if not allowed(user):
        raise PermissionDenied(message)


def recorded_user(user):
    """What a created_by / user column stores for `user`: the person, or None for SYSTEM."""
    return None if user is SYSTEM else user


def recorded_reason(user, reason: str) -> str:
    """The reason kept in an audit trail: marked "system:" when the platform acted."""
    if user is not SYSTEM:
        return reason
    return f"system: {reason}" if reason else "system"
