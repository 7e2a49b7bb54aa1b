"""Stored files served to the pages and the API. A file the database names but the storage no
longer holds (deleted by hand, a disk restored from an older backup) answers 404 with a message
that says so, and is logged for the administrator: never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO

from django.http import FileResponse, Http404

logger = logging.getLogger(__name__)


def file_response(
    open_file: Callable[[], IO[bytes]], *, content_type: str, what: str, name: str
) -> FileResponse:
    """FileResponse of what `open_file()` opens; `what` ("the image of study 7") and `name`
    (its storage name) go into the 404's message and the log line."""
    try:
        handle = open_file()
    except OSError as exc:  # FileNotFoundError, a permission error, a vanished mount
        logger.error("%s is missing from storage (%s): %s", what, name, exc)
        raise Http404(
            f"{what[:1].upper()}{what[1:]} is missing from storage; the administrator can "
            "find the details in the log."
        ) from exc
    return FileResponse(handle, content_type=content_type)
