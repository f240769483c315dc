"""The audit outbox and the meta key/values: what lets the audit log survive a power cut.

A small batch's audit lines are staged here, in the same transaction as the
decisions they record, until their day file is fsynced (see the committer);
the meta table keeps the audit head, and the schema version.

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


class AuditOutbox:
    # Provided by Store.
    _db: sqlite3.Connection

    # --- the audit outbox ---------------------------------------------------

    def stage_audit(self, lines: Iterable[tuple[int, str, bytes]]) -> None:
        """Keep audit lines (seq, file name, bytes) durable until their file is fsynced."""
        self._db.executemany("INSERT INTO audit_outbox (seq, file, line) VALUES (?, ?, ?)", lines)

    def audit_outbox(self) -> list[tuple[int, str, bytes]]:
        rows = self._db.execute("SELECT seq, file, line FROM audit_outbox ORDER BY seq")
        return [(int(seq), str(file), bytes(line)) for seq, file, line in rows]

    def trim_audit_outbox(self, upto: int) -> None:
        """Forget the lines up to ``upto``: the audit files hold them, fsynced."""
        self._db.execute("DELETE FROM audit_outbox WHERE seq <= ?", (upto,))

    # --- meta -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
