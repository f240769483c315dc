"""What the audit writer takes, hands back and raises, shared by its parts.

``log.py`` (the chain) and its mixins ``restoring.py`` and ``upkeep.py`` all
need these, so they live here and no part imports another. ``fsync_dir`` is
here for the same reason: opening a new day's file and deleting expired ones
must both make the directory's change survive a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple


class AuditLogError(RuntimeError):
    """The log cannot be written: another process holds it, or its last line is damaged."""


class StagedLine(NamedTuple):
    """A line as written: its seq, the name of its day's file, its bytes (no newline)."""

    seq: int
    file: str
    line: bytes


class AuditRecord(NamedTuple):
    """An event waiting for its place in the chain. (A tuple: one is made per
    message, and a tuple is the cheapest immutable record to make.)"""

    ts: float
    event: str
    fields: dict[str, Any]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
