"""The durable floor: the least storage that keeps ccc-relay's durability promise.

Rule: a message is in a SQLite file (WAL, ``synchronous=FULL``, the settings
ccc-statusd commits with) before its sender hears ``ok`` and before its
recipient sees it, and its row is deleted when the recipient acks it. Nothing
else: no audit line, no session table, no checks. Commits are grouped the way a
fast relay groups them: one commit at a time on a worker thread (sqlite3 lets go
of the interpreter's lock while SQLite writes and fsyncs), and everything that
arrives meanwhile rides the next one. What ccc-statusd spends beyond this relay
with this store is the cost of its checks and its audit, not of durability.

With an ``AuditLog`` (``benchmarks/ladder.py`` asks for one) each message also
gets ccc-relay's own ``accepted`` line, body and all, chained and written on
the commit thread and fsynced beside the statements before COMMIT, as
ccc-statusd does for a big batch: the floor plus the audit, nothing else.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only the ladder's rung with checks loads ccc-relay's audit log
    from ccc_relay.audit.log import AuditLog

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    "id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, sender TEXT NOT NULL, body TEXT NOT NULL)"
)

StoredRow = tuple[int, str, str, str]  # id, recipient, sender, body
Batch = list[tuple[StoredRow, Any]]  # each message a commit stored, with its ``after``
# What to do once a batch is durable: called on the event loop, in the order added.
Committed = Callable[[Batch], None]


def open_database(path: Path) -> sqlite3.Connection:
    """``path`` opened the way ccc-statusd opens ``relay.db``: WAL, synchronous=FULL."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(SCHEMA)
    return db


class DurableQueue:
    """Messages stored by group commit, and deleted by id when acked."""

    def __init__(self, path: Path, committed: Committed, *, audit: AuditLog | None = None) -> None:
        self._db = open_database(path)
        self._audit = audit
        if audit is not None:
            from ccc_relay.audit.log import AuditRecord

            self._record = AuditRecord
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="baseline-sync")
        (last,) = self._db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        self._next_id: int = last + 1
        self._committed = committed
        self._rows: list[StoredRow] = []
        self._after: list[Any] = []
        self._acks: list[tuple[int]] = []
        self._writing = False
        self._scheduled = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="baseline-commit")

    def add(self, sender: str, recipient: str, body: str, after: Any) -> None:
        """Store a message in the next commit; ``committed`` gets it and ``after`` once durable."""
        message_id = self._next_id
        self._next_id += 1
        self._rows.append((message_id, recipient, sender, body))
        self._after.append(after)
        self._schedule()

    def ack(self, ids: list[int]) -> None:
        """Delete these messages in the next commit (nobody waits for it)."""
        self._acks.extend((i,) for i in ids)
        self._schedule()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._syncer.shutdown(wait=True)
        self._db.close()
        if self._audit is not None:
            self._audit.close()

    def _schedule(self) -> None:
        # One call per loop turn gathers every frame that turn read; while a
        # commit is being written, new work waits for it to finish.
        if not self._writing and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_commit)

    def _start_commit(self) -> None:
        self._scheduled = False
        if self._writing or not (self._rows or self._acks):
            return
        rows, after, acks = self._rows, self._after, self._acks
        self._rows, self._after, self._acks = [], [], []
        self._writing = True
        work = asyncio.get_running_loop().run_in_executor(self._pool, self._write, rows, acks)
        batch = list(zip(rows, after, strict=True))
        work.add_done_callback(lambda done: self._finish_commit(done, batch))

    def _write(self, rows: list[StoredRow], acks: list[tuple[int]]) -> None:
        db, audit, synced = self._db, self._audit, None
        if audit is not None and rows:
            now = time.time()
            audit.append_unsynced([self._record(now, "accepted", {
                "id": i, "from": sender, "to": recipient, "body": body,
                "size": len(body.encode()),  # bytes, as ccc-relay's lines give it
            }) for i, recipient, sender, body in rows])  # fmt: skip
            synced = self._syncer.submit(audit.sync_owed())
        db.execute("BEGIN")
        try:
            if rows:
                db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", rows)
            if acks:
                db.executemany("DELETE FROM messages WHERE id = ?", acks)
            if synced is not None:
                synced.result()  # the lines are on disk before the decision is
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _finish_commit(self, done: asyncio.Future[None], batch: Batch) -> None:
        self._writing = False
        if (exc := done.exception()) is not None:
            # Nothing of that batch was answered; stop serving rather than limp on.
            raise SystemExit(f"the baseline relay's commit failed: {exc}")
        if batch:
            self._committed(batch)
        if self._rows or self._acks:
            self._schedule()
