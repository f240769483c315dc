"""What the audit writer takes, hands back and raises, shared by its parts.

``log.py`` (the chain) and its mixins ``restoring.py`` and ``upkeep.py`` all
need these, so they live here and no part imports another. ``fsync_dir`` is
here for the same reason: opening a new day's file and deleting expired ones
must both make the directory's change survive a power cut.
"""

from __future__ import annotations

import contextlib
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


def write_new_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, never through a symlink) holding ``data``, fsynced.

    Raises FileExistsError when something is already there, OSError otherwise;
    a file half written is removed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
