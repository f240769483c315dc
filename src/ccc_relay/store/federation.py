"""What federation keeps in relay.db: the outbox and the ids already seen.

``federation_outbox`` holds every envelope bound for another relay (a message,
or the notice that one was refused) from the commit that accepted it until
JetStream acknowledged its publish; a relay that restarts, or whose link comes
back, publishes what is left in order (``seq``). ``federation_seen`` holds the
``from_host/stream id`` of every envelope stored here for 30 days, so one that
the stream delivers again -- the relay died between its commit and its ack to
the stream -- is dropped instead of delivered twice. ``federation_sent`` holds
``(id, to_host)`` of every message put in the outbox, with its sender, until a
refusal of it came back or it is as old as the seen keys kept: a refusal from
a host is believed only for a message sent to that host, and only once.

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from ccc_relay.store.records import OutboxEntry

_IN_CHUNK = 512  # parameters per IN (...)


class FederationTables:
    # Provided by Store.
    _db: sqlite3.Connection

    def queue_remote(self, entries: Sequence[OutboxEntry]) -> None:
        # Recorded with the outbox row, not at the publish-ack: the other relay
        # may refuse it before this one has stored the ack.
        self._db.executemany(
            "INSERT OR IGNORE INTO federation_sent (id, to_host, sender, at) VALUES (?, ?, ?, ?)",
            [
                (e.message_id, e.to_host, e.sender, e.created)
                for e in entries
                if e.message_id is not None
            ],
        )
        self._db.executemany(
            "INSERT INTO federation_outbox (stream_id, to_host, sender, recipient, size,"
            " payload, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (e.stream_id, e.to_host, e.sender, e.recipient, e.size, e.payload, e.created)
                for e in entries
            ],
        )

    def outbox(self, limit: int, after: int = 0) -> list[OutboxEntry]:
        """Envelopes not yet acknowledged by the stream, oldest first, past ``after``."""
        rows = self._db.execute(
            "SELECT seq, stream_id, to_host, sender, recipient, size, payload, created"
            " FROM federation_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            OutboxEntry(
                stream_id=str(sid),
                to_host=str(host),
                sender=str(sender),
                recipient=str(recipient),
                size=int(size),
                payload=bytes(payload),
                created=float(created),
                seq=int(seq),
            )
            for seq, sid, host, sender, recipient, size, payload, created in rows
        ]

    def forwarded(self, stream_ids: Sequence[str]) -> list[tuple[str, str, int]]:
        """Delete these envelopes (the stream holds them); (sender, recipient, size) of each."""
        out: list[tuple[str, str, int]] = []
        for start in range(0, len(stream_ids), _IN_CHUNK):
            chunk = stream_ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            out += self._db.execute(
                f"DELETE FROM federation_outbox WHERE stream_id IN ({marks})"  # noqa: S608
                " RETURNING sender, recipient, size",
                tuple(chunk),
            ).fetchall()
        return out

    def unsent(self, stream_ids: Sequence[str], to_host: str) -> None:
        """These messages were never published: no refusal of them can come."""
        self._db.executemany(
            "DELETE FROM federation_sent WHERE id = ? AND to_host = ?",
            [(sid, to_host) for sid in stream_ids],
        )

    def sent_of(self, refused: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Of these (id, host): ``host/id`` -> sender of each message sent to that host
        and not refused yet."""
        out: dict[str, str] = {}
        for mid, host in refused:
            row = self._db.execute(
                "SELECT sender FROM federation_sent WHERE id = ? AND to_host = ?", (mid, host)
            ).fetchone()
            if row is not None:
                out[f"{host}/{mid}"] = str(row[0])
        return out

    def bounced(self, refused: Sequence[tuple[str, str]]) -> None:
        """A refusal of these (id, host) was taken: another is not believed."""
        self._db.executemany(
            "DELETE FROM federation_sent WHERE id = ? AND to_host = ?", list(refused)
        )

    def outbox_totals(self) -> list[tuple[str, str, int, int]]:
        """(sender, recipient, envelopes, bytes) waiting for the stream, per pair."""
        return self._db.execute(
            "SELECT sender, recipient, count(*), sum(size) FROM federation_outbox"
            " GROUP BY sender, recipient"
        ).fetchall()

    def seen_of(self, keys: Sequence[str]) -> set[str]:
        """Which of these ``from_host/stream id`` keys were stored here already."""
        return self._present("federation_seen", "id", keys)

    def ids_in_use(self, ids: Sequence[str]) -> set[str]:
        """Which of these message ids a queued or held message has already."""
        return self._present("messages", "id", ids) | self._present("held", "id", ids)

    def _present(self, table: str, column: str, values: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                str(row[0])
                for row in self._db.execute(
                    f"SELECT {column} FROM {table} WHERE {column} IN ({marks})",  # noqa: S608
                    tuple(chunk),
                )
            )
        return found

    def remember_seen(self, keys: Iterable[str], at: float) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO federation_seen (id, at) VALUES (?, ?)",
            [(key, at) for key in keys],
        )

    def forget_seen(self, before: float) -> int:
        """Forget seen keys and sent ids older than ``before``; how many seen keys."""
        self._db.execute("DELETE FROM federation_sent WHERE at < ?", (before,))
        return self._db.execute("DELETE FROM federation_seen WHERE at < ?", (before,)).rowcount
