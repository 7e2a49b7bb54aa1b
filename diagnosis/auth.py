"""Sign-in throttling: repeated failures for one user name from one address are refused for
a while (LOGIN_FAILURE_LIMIT within LOGIN_FAILURE_WINDOW_SECONDS), so that passwords cannot
be guessed at speed. Wraps the site's and the admin's sign-in views; counters live in the
default cache."""

from __future__ import annotations

import functools
import hashlib

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse


def _key(request) -> str:
    username = (request.POST.get("username") or "").strip().lower()
    where = request.META.get("REMOTE_ADDR", "")
    digest = hashlib.sha256(f"{username}\0{where}".encode()).hexdigest()
    return f"login-failures:{digest}"


def throttle_login(view):
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.method != "POST":
            return view(request, *args, **kwargs)
        key = _key(request)
        if cache.get(key, 0) >= settings.LOGIN_FAILURE_LIMIT:
            minutes = max(1, settings.LOGIN_FAILURE_WINDOW_SECONDS // 60)
            return HttpResponse(
                f"Too many failed sign-ins. Try again in {minutes} minutes.",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
        response = view(request, *args, **kwargs)
        if response.status_code == 302:  # signed in
            cache.delete(key)
        else:  # the form again, with its error
            cache.add(key, 0, timeout=settings.LOGIN_FAILURE_WINDOW_SECONDS)
            cache.incr(key)
        return response

    return wrapped
