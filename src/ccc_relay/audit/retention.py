"""Retention: which whole day files are past ``retention``, and what the cut line says.

A file is past retention when its whole UTC day ended at least ``retention``
seconds ago; only whole files go, oldest first, so what is left is always one
unbroken stretch of the chain. Before any file is deleted a ``retention_cut``
line goes into the chain naming the files and the ``last_seq`` and
``last_hash`` of the last line they held. The first line that remains then has
``seq == last_seq + 1`` and ``prev == last_hash``: the cut explains the start
of the log, and ``verify`` accepts it only when such a line exists.

Pure functions only: ``AuditLog.apply_retention`` does the file work.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping, Sequence
from typing import Any

RETENTION_CUT = "retention_cut"
SECONDS_PER_DAY = 86400


def day_start(day: str) -> float:
    """Unix time of 00:00 UTC of ``day`` (``YYYY-MM-DD``). Raises ValueError if malformed."""
    return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))


def expired_count(days: Sequence[str], now: float, retention: float) -> int:
    """How many of ``days`` (oldest first) lie wholly before ``now - retention``.

    Counting stops at the first day still inside the window, so the result is
    always a prefix of ``days`` even if the list is not sorted.
    """
    cutoff = now - retention
    count = 0
    for day in days:
        if day_start(day) + SECONDS_PER_DAY > cutoff:
            break
        count += 1
    return count


def cut_fields(
    files: Sequence[str], last_seq: int, last_hash: str, retention: float
) -> dict[str, Any]:
    """The fields of the ``retention_cut`` line recorded before ``files`` are deleted."""
    return {
        "files": list(files),
        "last_seq": last_seq,
        "last_hash": last_hash,
        "retention": retention,
    }


def explains_start(cut: Mapping[str, Any], seq: int, prev: str) -> bool:
    """Whether ``cut`` accounts for a log whose first line has ``seq`` and ``prev``."""
    return cut.get("last_seq") == seq - 1 and cut.get("last_hash") == prev
