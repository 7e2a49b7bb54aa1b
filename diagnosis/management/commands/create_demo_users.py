from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from diagnosis import roles

DEMO_USERS = [
    ("admin", None, True),
    ("radiologist", roles.RADIOLOGIST, False),
    ("uploader", roles.UPLOADER, False),
]


class Command(BaseCommand):
    help = (
        "Create the demo accounts admin, radiologist and uploader, each with a new random "
        "password, and print the credentials. For local use only."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--password", default="", help="Use this password for all three instead."
        )

    def handle(self, *args, password: str, **options):
        User = get_user_model()
        for username, group, superuser in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            secret = password or secrets.token_urlsafe(9)
            user.set_password(secret)
            user.is_staff = user.is_superuser = superuser
            user.save()
            if group:
                user.groups.add(Group.objects.get_or_create(name=group)[0])
            self.stdout.write(f"  {username:<12} password: {secret}")
