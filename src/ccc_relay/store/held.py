"""Messages held for the operator's approval, kept apart from the queue.

A held message is not owed to anyone yet, so it has no delivery number: one
the operator approves is taken out here and queued afresh; one rejected is
taken out and its sender told.

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3

from ccc_relay.store.records import StoredMessage, message_from_row


class HeldMessages:
    # Provided by Store.
    _db: sqlite3.Connection

    def hold(self, m: StoredMessage) -> None:
        self._db.execute(
            "INSERT INTO held (id, sender, recipient, body, thread, reply_to, sent_at, deliver_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (m.id, m.sender, m.recipient, m.body, m.thread, m.reply_to, m.sent_at, m.deliver_at),
        )

    def held(self) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT 0, id, sender, recipient, body, thread, reply_to, sent_at, deliver_at"
            " FROM held ORDER BY sent_at"
        )
        return [message_from_row(row) for row in rows]

    def held_message(self, message_id: str) -> StoredMessage | None:
        """The held message ``message_id``, or None."""
        row = self._db.execute(
            "SELECT 0, id, sender, recipient, body, thread, reply_to, sent_at, deliver_at"
            " FROM held WHERE id = ?",
            (message_id,),
        ).fetchone()
        return None if row is None else message_from_row(row)

    def take_held(self, message_id: str) -> StoredMessage | None:
        """Remove a held message and return it (None when there is no such id)."""
        held = self.held_message(message_id)
        if held is not None:
            self._db.execute("DELETE FROM held WHERE id = ?", (message_id,))
        return held

    def held_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0])
