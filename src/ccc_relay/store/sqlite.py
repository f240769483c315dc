"""SQLite persistence: agents, policy rules, sessions and queued messages.

WAL mode with ``synchronous=FULL``: a COMMIT that returned is on disk. The
object is used from exactly one thread (the committer's); the daemon never
touches the connection from the event loop. Acknowledged messages are deleted
-- the audit log, not the queue, is the history -- so the file holds only what
is still owed to someone, and a queue of 100,000 messages costs disk, not RAM.

Any ``sqlite3.Error`` during a write is turned into ``StoreFailure`` by the
caller and stops acceptance; nothing here retries.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    cred_hash TEXT NOT NULL,
    created REAL NOT NULL,
    uid INTEGER,
    gid INTEGER,
    quarantined TEXT
);
CREATE TABLE IF NOT EXISTS rules (
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    action TEXT NOT NULL,
    PRIMARY KEY (sender, recipient)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_agent ON sessions (agent);
CREATE TABLE IF NOT EXISTS messages (
    delivery INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    thread TEXT,
    reply_to TEXT,
    sent_at REAL NOT NULL,
    deliver_at REAL
);
CREATE INDEX IF NOT EXISTS messages_recipient ON messages (recipient, delivery);
CREATE TABLE IF NOT EXISTS held (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    thread TEXT,
    reply_to TEXT,
    sent_at REAL NOT NULL,
    deliver_at REAL
);
CREATE INDEX IF NOT EXISTS messages_scheduled ON messages (deliver_at) WHERE deliver_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    line BLOB NOT NULL
);
"""


class StoreFailure(RuntimeError):
    """The durable store could not complete a write; acceptance must stop."""


class StoredMessage(msgspec.Struct, frozen=True):
    id: str
    sender: str
    recipient: str
    body: str
    sent_at: float
    thread: str | None = None
    reply_to: str | None = None
    deliver_at: float | None = None
    delivery: int = 0  # per-recipient order; assigned by the relay in commit order


class AgentRecord(msgspec.Struct, frozen=True):
    name: str
    cred_hash: str
    created: float
    uid: int | None = None
    gid: int | None = None
    quarantined: str | None = None  # why, while the agent is quarantined


class SessionRecord(msgspec.Struct, frozen=True):
    id: str
    agent: str
    created: float
    expires: float
    last_seq: int


_MESSAGE_COLUMNS = "delivery, id, sender, recipient, body, thread, reply_to, sent_at, deliver_at"


def _message(row: Sequence[object]) -> StoredMessage:
    delivery, mid, sender, recipient, body, thread, reply_to, sent_at, deliver_at = row
    return StoredMessage(
        id=str(mid),
        sender=str(sender),
        recipient=str(recipient),
        body=str(body),
        sent_at=float(sent_at),  # type: ignore[arg-type]
        thread=thread,  # type: ignore[arg-type]
        reply_to=reply_to,  # type: ignore[arg-type]
        deliver_at=deliver_at,  # type: ignore[arg-type]
        delivery=int(delivery),  # type: ignore[call-overload]
    )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        # The file is created 0600 before SQLite opens it: the queue holds bodies.
        if not existed:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Temporary tables and sorts stay in memory: the confined daemon may
        # not write outside its state directory (Landlock), /tmp included.
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(agents)")}
        if "quarantined" not in columns:
            self._db.execute("ALTER TABLE agents ADD COLUMN quarantined TEXT")

    def close(self) -> None:
        self._db.close()

    # --- transactions (driven by the committer) ---------------------------

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def savepoint(self) -> None:
        self._db.execute("SAVEPOINT op")

    def release(self) -> None:
        self._db.execute("RELEASE op")

    def rollback_savepoint(self) -> None:
        self._db.execute("ROLLBACK TO op")
        self._db.execute("RELEASE op")

    # --- messages -----------------------------------------------------------

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

    def update_session_seqs(self, updates: Iterable[tuple[str, int]]) -> None:
        self._db.executemany(
            "UPDATE sessions SET last_seq = ? WHERE id = ? AND last_seq < ?",
            [(seq, sid, seq) for sid, seq in updates],
        )

    def ack(self, recipient: str, items: Sequence[tuple[int | None, str]]) -> int:
        """Delete acknowledged messages; only the recipient's own count.

        ``items`` are (delivery number when known, id): with the number the
        delete is a primary-key lookup, without it the id's index is used. The
        id and the recipient must match either way.
        """
        by_key = [(d, mid, recipient) for d, mid in items if d is not None]
        by_id = [(mid, recipient) for d, mid in items if d is None]
        before = self._db.total_changes
        if by_key:
            self._db.executemany(
                "DELETE FROM messages WHERE delivery = ? AND id = ? AND recipient = ?", by_key
            )
        if by_id:
            self._db.executemany("DELETE FROM messages WHERE id = ? AND recipient = ?", by_id)
        return self._db.total_changes - before

    def due(
        self,
        recipient: str,
        now: float,
        limit: int,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> list[StoredMessage]:
        """Messages owed to ``recipient`` that are due, oldest first."""
        rows = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE recipient = ?"  # noqa: S608
            " AND (deliver_at IS NULL OR deliver_at <= ?) ORDER BY delivery LIMIT ?",
            (recipient, now, limit + len(exclude)),
        ).fetchall()
        found = [_message(r) for r in rows if r[1] not in exclude]
        return found[:limit]

    def pending_count(self, recipient: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM messages WHERE recipient = ?", (recipient,)
        ).fetchone()
        return int(row[0])

    def queue_depths(self) -> dict[str, int]:
        rows = self._db.execute("SELECT recipient, COUNT(*) FROM messages GROUP BY recipient")
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

    # --- held for approval --------------------------------------------------

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
        return [_message(row) for row in rows]

    def take_held(self, message_id: str) -> StoredMessage | None:
        """Remove a held message and return it (None when there is no such id)."""
        row = self._db.execute(
            "SELECT 0, id, sender, recipient, body, thread, reply_to, sent_at, deliver_at"
            " FROM held WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM held WHERE id = ?", (message_id,))
        return _message(row)

    def held_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0])

    # --- agents and policy -------------------------------------------------

    def agents(self) -> list[AgentRecord]:
        rows = self._db.execute(
            "SELECT name, cred_hash, created, uid, gid, quarantined FROM agents ORDER BY name"
        )
        return [AgentRecord(*row) for row in rows]

    def set_quarantine(self, name: str, reason: str | None) -> bool:
        cur = self._db.execute("UPDATE agents SET quarantined = ? WHERE name = ?", (reason, name))
        return cur.rowcount == 1

    def add_agent(self, record: AgentRecord) -> None:
        self._db.execute(
            "INSERT INTO agents (name, cred_hash, created, uid, gid, quarantined)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.cred_hash,
                record.created,
                record.uid,
                record.gid,
                record.quarantined,
            ),
        )

    def set_credential(self, name: str, cred_hash: str) -> bool:
        cur = self._db.execute("UPDATE agents SET cred_hash = ? WHERE name = ?", (cred_hash, name))
        return cur.rowcount == 1

    def remove_agent(self, name: str) -> bool:
        """Remove an agent with its rules, sessions and queued messages."""
        cur = self._db.execute("DELETE FROM agents WHERE name = ?", (name,))
        self._db.execute("DELETE FROM rules WHERE sender = ? OR recipient = ?", (name, name))
        self._db.execute("DELETE FROM sessions WHERE agent = ?", (name,))
        self._db.execute("DELETE FROM messages WHERE recipient = ?", (name,))
        self._db.execute("DELETE FROM held WHERE sender = ? OR recipient = ?", (name, name))
        return cur.rowcount == 1

    def rules(self) -> list[tuple[str, str, str]]:
        rows = self._db.execute("SELECT sender, recipient, action FROM rules ORDER BY 1, 2")
        return [(str(s), str(r), str(a)) for s, r, a in rows]

    def set_rule(self, sender: str, recipient: str, action: str) -> None:
        self._db.execute(
            "INSERT INTO rules (sender, recipient, action) VALUES (?, ?, ?)"
            " ON CONFLICT (sender, recipient) DO UPDATE SET action = excluded.action",
            (sender, recipient, action),
        )

    def delete_rule(self, sender: str, recipient: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM rules WHERE sender = ? AND recipient = ?", (sender, recipient)
        )
        return cur.rowcount == 1

    # --- sessions -------------------------------------------------------------

    def create_session(self, record: SessionRecord) -> None:
        self._db.execute(
            "INSERT INTO sessions (id, agent, created, expires, last_seq) VALUES (?, ?, ?, ?, ?)",
            (record.id, record.agent, record.created, record.expires, record.last_seq),
        )

    def session(self, session_id: str) -> SessionRecord | None:
        row = self._db.execute(
            "SELECT id, agent, created, expires, last_seq FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        return SessionRecord(*row) if row else None

    def live_sessions(self, now: float) -> list[SessionRecord]:
        rows = self._db.execute(
            "SELECT id, agent, created, expires, last_seq FROM sessions WHERE expires > ?", (now,)
        )
        return [SessionRecord(*row) for row in rows]

    def delete_expired_sessions(self, now: float) -> int:
        return self._db.execute("DELETE FROM sessions WHERE expires <= ?", (now,)).rowcount

    def delete_sessions_of(self, agent: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE agent = ?", (agent,))

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
