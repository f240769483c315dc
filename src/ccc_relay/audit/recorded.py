"""What relay.db records about the audit log, read without the relay.

``meta.audit_head`` is the head the relay last committed: ``verify`` checks
that the log reaches it, so a cut tail shows. ``meta.audit_clean_stop`` is that
head again when the relay stopped cleanly there (cleared when it starts), so
lines after it were not the relay's. ``audit_outbox`` holds the lines
committed but not yet fsynced to their file. The database is opened read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Head:
        """``"<seq> <sha256>"`` as relay.db keeps it. Raises ValueError if malformed."""
        seq, digest = text.split()
        if not seq.isdigit() or len(digest) != 64:
            raise ValueError(f"not '<seq> <sha256>': {text!r}")
        int(digest, 16)
        return cls(int(seq), digest)

    def __str__(self) -> str:
        return f"{self.seq} {self.hash}"


class HeadUnavailable(OSError):
    """relay.db exists but its recorded head cannot be read."""


def _read(db_path: Path, what: str, query: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``query`` on relay.db opened read-only. Raises HeadUnavailable."""
    uri = f"file:{quote(str(db_path.absolute()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
        try:
            return query(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise HeadUnavailable(f"cannot read {what} from {db_path}: {exc}") from None


def read_recorded_head(db_path: Path) -> Head | None:
    """The head relay.db recorded; None when there is no database or no head yet.

    Opens the database read-only. Raises HeadUnavailable when it cannot be
    read or its ``audit_head`` is malformed.
    """
    if not db_path.exists():
        return None
    row = _read(db_path, "the recorded head", lambda db: db.execute(
        "SELECT value FROM meta WHERE key = 'audit_head'").fetchone())  # fmt: skip
    if row is None:
        return None
    try:
        return Head.parse(str(row[0]))
    except ValueError as exc:
        raise HeadUnavailable(f"{db_path}: audit_head is malformed: {exc}") from None


CLEAN_STOP = "audit_clean_stop"


def read_clean_stop(db_path: Path) -> Head | None:
    """The head at which the relay last stopped cleanly, if it is stopped since.

    Raises HeadUnavailable when relay.db cannot be read.
    """
    if not db_path.exists():
        return None
    row = _read(db_path, "the clean stop", lambda db: db.execute(
        "SELECT value FROM meta WHERE key = ?", (CLEAN_STOP,)).fetchone())  # fmt: skip
    try:
        return None if row is None or not row[0] else Head.parse(str(row[0]))
    except ValueError:
        return None


def read_outbox(db_path: Path) -> list[tuple[int, bytes]]:
    """The audit lines relay.db keeps until their file is fsynced: (seq, line), oldest first.

    Raises HeadUnavailable when the database cannot be read.
    """
    if not db_path.exists():
        return []

    def query(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_outbox'"
        ).fetchone()
        rows = db.execute("SELECT seq, line FROM audit_outbox ORDER BY seq") if exists else []
        return [(int(seq), bytes(line)) for seq, line in rows]

    return _read(db_path, "the audit outbox", query)
