"""Files written alongside database rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)


@contextmanager
def atomic_files() -> Iterator[list[str]]:
    """Collects the names of files saved inside the block and deletes them if it raises.

    Put it around the `transaction.atomic()` that creates the rows pointing at the files:
    a failure then leaves neither a row nor an orphan file.
    """
    written: list[str] = []
    try:
        yield written
    except BaseException:
        for name in written:
            try:
                default_storage.delete(name)
            except Exception:  # the storage went down meanwhile: say which file is left
                logger.exception("Could not delete %s after a failed write; remove it.", name)
        raise
