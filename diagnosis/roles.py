"""Roles are Django groups: `uploader` and `radiologist`; admins are superusers.

A radiologist can do everything an uploader can, and also review; an admin can do
everything. A signed-in user with none of these roles can do nothing.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

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
