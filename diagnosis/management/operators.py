"""The person a management command acts as, named by `--user` and recorded in the audit trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def operator(username: str | None) -> AbstractBaseUser | None:
    """The user named `username`, or None when no name is given (the command acts as no one).
    A name that matches no user is a CommandError, so a typo never goes unrecorded."""
    if not username:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user named {username!r}.")
    return user


def actor(username: str | None):
    """Who a command that changes what predictions use acts as: the user named `username`
    (whose role the services check), or roles.SYSTEM when none is named: an operator at the
    server's shell, recorded as the system."""
    from diagnosis.roles import SYSTEM

    return operator(username) or SYSTEM
