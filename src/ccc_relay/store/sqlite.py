"""SQLite persistence: agents, policy rules, sessions and queued messages.

WAL mode with ``synchronous=FULL``: a COMMIT that returned is on disk. The
object is used from exactly one thread (the committer's); the daemon never
touches the connection from the event loop. Acknowledged messages are deleted
-- the audit log, not the queue, is the history -- so the file holds only what
is still owed to someone, and a queue of 100,000 messages costs disk, not RAM.

Any ``sqlite3.Error`` during a write is turned into ``StoreFailure`` by the
caller and stops acceptance; nothing here retries.

This module owns opening the file and the transactions; the tables' reads and
writes are mixins: ``messages`` (the queue), ``held`` (held for approval),
``agents`` (agents, rules, sessions), ``groups`` (groups set at run time),
``audit_outbox`` (the outbox, meta) and ``federation`` (envelopes bound for
other relays, ids of envelopes stored).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ccc_relay.store.agents import AgentRegistry
from ccc_relay.store.audit_outbox import AuditOutbox
from ccc_relay.store.federation import FederationTables
from ccc_relay.store.groups import GroupRegistry
from ccc_relay.store.held import HeldMessages
from ccc_relay.store.messages import MessageQueue
from ccc_relay.store.records import AgentRecord, SessionRecord, StoredMessage
from ccc_relay.store.schema import SCHEMA_VERSION, apply_schema

# Importers of this module before the split found these here.
__all__ = [
    "SCHEMA_VERSION",
    "AgentRecord",
    "SessionRecord",
    "Store",
    "StoreFailure",
    "StoredMessage",
]


class StoreFailure(RuntimeError):
    """The durable store could not complete a write; acceptance must stop."""


class Store(
    MessageQueue, HeldMessages, AgentRegistry, GroupRegistry, AuditOutbox, FederationTables
):
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
        apply_schema(self._db)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

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
