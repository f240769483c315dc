"""Direct mode's durable memory: the one place that survives a restart.

The rule: a received message and the sender's seq high-water mark are
committed in one SQLite transaction (WAL, ``synchronous=FULL``) before the
sender is told ``accepted``, and the seq check runs inside that transaction
against the stored mark -- so a restarted listener refuses a replay exactly as
a running one does, and no accepted message is ever lost.

The store also remembers the last seq this agent used toward each peer, so a
restarted sender goes on where it stopped.

It lives in the agent's private state dir, never in the shared socket dir.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ccc_relay.daemon.sockets import SocketPathError, ensure_private_dir
from ccc_relay.peer.frames import check_seq
from ccc_relay.peer.keys import PeerConfigError

BUSY_TIMEOUT_MS = 10_000  # a listener and 'ccc peer inbox' share the file; commits take ~1 ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sent_at REAL NOT NULL,
    received_at REAL NOT NULL,
    body TEXT NOT NULL,
    changes TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS received_unread ON received (read, n);
CREATE TABLE IF NOT EXISTS received_seq (sender TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent_seq (recipient TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Received:
    """A message as the listener accepted it: the body is already sanitised."""

    id: str
    sender: str
    recipient: str
    seq: int
    sent_at: float  # the sender's clock, covered by the signature
    received_at: float  # the listener's clock
    body: str
    changes: list[str] = field(default_factory=list)
    n: int = 0  # position in this inbox, strictly increasing


class PeerStore:
    def __init__(self, path: Path) -> None:
        """Open (creating, mode 0600) the store at ``path``.

        Raises PeerConfigError for an unsafe directory, a symlink at ``path``
        or a file that is not a store.
        """
        self.path = path
        try:
            ensure_private_dir(path.parent, 0o700)
            # Create it ourselves: SQLite would follow a symlink and use the umask.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
            # Not used by two threads at once: a listener opens it before its
            # event loop starts (perhaps in another thread) and then uses it only there.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)  # fmt: skip
        except (SocketPathError, OSError, sqlite3.Error) as exc:
            raise PeerConfigError(f"the direct-mode store {path} cannot be used: {exc}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise PeerConfigError(f"the direct-mode store {path} cannot be used: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PeerStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock first, so the seq read and the update
        # cannot interleave with another writer's.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- receiving ------------------------------------------------------------

    def last_received(self, sender: str) -> int:
        row = self._db.execute(
            "SELECT last_seq FROM received_seq WHERE sender = ?", (sender,)
        ).fetchone()
        return int(row[0]) if row else 0

    def commit_received(self, sender: str, seq: int, message: Received | None = None) -> int:
        """Consume ``seq`` of ``sender`` and store ``message`` with it, atomically.

        ``message`` None consumes the seq alone (a frame refused after its
        signature was proven, as the relay does). Returns the message's
        position in the inbox (0 without a message). Raises
        ProtocolError(REPLAY/OUT_OF_ORDER) and leaves nothing changed when
        ``seq`` is not the next one; sqlite3.Error when the disk fails.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT last_seq FROM received_seq WHERE sender = ?", (sender,)
            ).fetchone()
            check_seq(int(row[0]) if row else 0, seq)
            db.execute(
                "INSERT INTO received_seq (sender, last_seq) VALUES (?, ?) "
                "ON CONFLICT (sender) DO UPDATE SET last_seq = excluded.last_seq",
                (sender, seq),
            )
            if message is None:
                return 0
            cursor = db.execute(
                "INSERT INTO received (id, sender, recipient, seq, sent_at, received_at, body, "
                "changes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message.id, message.sender, message.recipient, message.seq, message.sent_at,
                 message.received_at, message.body, json.dumps(message.changes)),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

    def messages(self, limit: int = 100, *, unread_only: bool = True) -> list[Received]:
        """The oldest ``limit`` messages (only unread ones by default), oldest first."""
        where = "WHERE read = 0 " if unread_only else ""
        rows = self._db.execute(
            "SELECT id, sender, recipient, seq, sent_at, received_at, body, changes, n "  # noqa: S608 - fixed text
            f"FROM received {where}ORDER BY n LIMIT ?",
            (limit,),
        ).fetchall()
        return [_received(row) for row in rows]

    def mark_read(self, ids: Iterable[str]) -> int:
        """Mark messages read; returns how many were unread."""
        with self._transaction() as db:
            cursor = db.executemany(
                "UPDATE received SET read = 1 WHERE id = ? AND read = 0", [(i,) for i in ids]
            )
            return cursor.rowcount

    # --- sending --------------------------------------------------------------

    def last_sent(self, recipient: str) -> int:
        row = self._db.execute(
            "SELECT last_seq FROM sent_seq WHERE recipient = ?", (recipient,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_last_sent(self, recipient: str, seq: int) -> None:
        """Remember ``seq`` as used toward ``recipient`` (lower only after a signed resync)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sent_seq (recipient, last_seq) VALUES (?, ?) "
                "ON CONFLICT (recipient) DO UPDATE SET last_seq = excluded.last_seq",
                (recipient, seq),
            )


def _received(row: tuple[str, str, str, int, float, float, str, str, int]) -> Received:
    # Columns in the dataclass's field order; changes are stored as JSON.
    return Received(*row[:7], changes=json.loads(row[7]), n=row[8])
