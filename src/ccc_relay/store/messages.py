"""The message queue: what is still owed to each recipient, in delivery order.

A message is a row until its recipient acknowledges it, then it is deleted;
``delivery`` (AUTOINCREMENT, never reused) is the per-recipient order.
Scheduled messages (``deliver_at``) stay in the queue and are skipped until due.

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ccc_relay.store.records import MESSAGE_COLUMNS, StoredMessage, message_from_row

_IN_CHUNK = 512  # ids per DELETE (SQLite allows 32,766 parameters; a frame carries 1,024)


class MessageQueue:
    # Provided by Store.
    _db: sqlite3.Connection

    def insert_messages(self, messages: Sequence[StoredMessage]) -> None:
        self._db.executemany(
            "INSERT INTO messages (delivery, id, sender, recipient, body, thread, reply_to,"
            " sent_at, deliver_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.delivery,
                    m.id,
                    m.sender,
                    m.recipient,
                    m.body,
                    m.thread,
                    m.reply_to,
                    m.sent_at,
                    m.deliver_at,
                )
                for m in messages
            ],
        )

    def max_delivery(self) -> int:
        """The highest delivery number ever used (AUTOINCREMENT never reuses one)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return int(row[0]) if row else 0

    def ack(
        self,
        recipient: str,
        known: Sequence[tuple[int, str, int]],
        by_id: Sequence[str] = (),
    ) -> list[tuple[str, int]]:
        """Delete acknowledged messages; only the recipient's own count. Returns the
        (sender, body bytes) of each row deleted.

        ``known`` are (delivery number, sender, body bytes) of messages the relay
        has in flight: their delete is a primary-key lookup that reads back only
        the numbers of the rows it found, not their bodies. ``by_id`` are ids the
        relay has no record of; their rows are found by the id's index.
        """
        deleted: list[tuple[str, int]] = []
        db = self._db
        for start in range(0, len(known), _IN_CHUNK):
            chunk = {
                delivery: (sender, size)
                for delivery, sender, size in known[start : start + _IN_CHUNK]
            }
            marks = ",".join("?" * len(chunk))
            found = db.execute(
                f"DELETE FROM messages WHERE recipient = ? AND delivery IN ({marks})"  # noqa: S608
                " RETURNING delivery",
                (recipient, *chunk),
            ).fetchall()
            deleted += [chunk[delivery] for (delivery,) in found]
        for start in range(0, len(by_id), _IN_CHUNK):
            ids = by_id[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(ids))
            deleted += db.execute(
                f"DELETE FROM messages WHERE recipient = ? AND id IN ({marks})"  # noqa: S608
                " RETURNING sender, length(CAST(body AS BLOB))",
                (recipient, *ids),
            ).fetchall()
        return deleted

    def queue_totals(self) -> list[tuple[str, str, int, int]]:
        """(sender, recipient, messages, body bytes) waiting, per pair."""
        return self._db.execute(
            "SELECT sender, recipient, count(*), sum(length(CAST(body AS BLOB)))"
            " FROM messages GROUP BY sender, recipient"
        ).fetchall()

    def due(
        self,
        recipient: str,
        now: float,
        limit: int,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> list[StoredMessage]:
        """Messages owed to ``recipient`` that are due, oldest first."""
        rows = self._db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?"  # noqa: S608
            " AND (deliver_at IS NULL OR deliver_at <= ?) ORDER BY delivery LIMIT ?",
            (recipient, now, limit + len(exclude)),
        ).fetchall()
        found = [message_from_row(r) for r in rows if r[1] not in exclude]
        return found[:limit]

    def pending_count(self, recipient: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM messages WHERE recipient = ?", (recipient,)
        ).fetchone()
        return int(row[0])

    def queue_depths(self, now: float | None = None) -> dict[str, int]:
        """Messages waiting per recipient; with ``now``, only those due by then."""
        if now is None:
            rows = self._db.execute("SELECT recipient, COUNT(*) FROM messages GROUP BY recipient")
        else:
            rows = self._db.execute(
                "SELECT recipient, COUNT(*) FROM messages"
                " WHERE deliver_at IS NULL OR deliver_at <= ? GROUP BY recipient",
                (now,),
            )
        return {str(r): int(n) for r, n in rows}

    def scheduled_depths(self, now: float) -> dict[str, int]:
        """Messages per recipient that wait for a later ``deliver_at``."""
        rows = self._db.execute(
            "SELECT recipient, COUNT(*) FROM messages WHERE deliver_at > ? GROUP BY recipient",
            (now,),
        )
        return {str(r): int(n) for r, n in rows}

    def next_scheduled(self, after: float) -> float | None:
        row = self._db.execute(
            "SELECT MIN(deliver_at) FROM messages WHERE deliver_at > ?", (after,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def recipients_due(self, now: float, since: float) -> list[str]:
        """Recipients with a scheduled message that fell due in (since, now]."""
        rows = self._db.execute(
            "SELECT DISTINCT recipient FROM messages WHERE deliver_at > ? AND deliver_at <= ?",
            (since, now),
        )
        return [str(r[0]) for r in rows]
