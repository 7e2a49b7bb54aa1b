"""Files written alongside database rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.files.storage import default_storage


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
            default_storage.delete(name)
        raise
