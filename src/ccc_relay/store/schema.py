"""The relay.db schema: its tables, its version, and bringing an older file up to it.

Every statement here is idempotent (``IF NOT EXISTS``, a column added only
when missing), so opening a file any number of times leaves it the same.
"""

from __future__ import annotations

import sqlite3

# 2: group_members (groups the operator adds at run time); a version-1 file
# gains the empty table when it is opened.
# 3: federation_outbox and federation_seen (relays that federate); an older
# file gains both, empty, when it is opened.
# 4: federation_sent (which message ids went to which host, so only a refusal
# of one of those is believed); an older file gains it, filled from the
# messages its outbox still holds.
SCHEMA_VERSION = 4

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, member)
);
CREATE TABLE IF NOT EXISTS federation_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL UNIQUE,
    to_host TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS federation_seen (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS federation_seen_at ON federation_seen (at);
CREATE TABLE IF NOT EXISTS federation_sent (
    id TEXT NOT NULL,
    to_host TEXT NOT NULL,
    sender TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (id, to_host)
);
CREATE INDEX IF NOT EXISTS federation_sent_at ON federation_sent (at);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    line BLOB NOT NULL
);
"""


def apply_schema(db: sqlite3.Connection) -> None:
    """Create what is missing, migrate what is old, and record the schema version."""
    found = _version(db)
    db.executescript(SCHEMA)
    migrate(db, found)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('schema', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def _version(db: sqlite3.Connection) -> int:
    """The file's schema version before this open (0: a new file)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, found: int = SCHEMA_VERSION) -> None:
    if 0 < found < 4:
        # Messages still waiting to be published were sent as far as a refusal
        # of them goes; older ones' refusals are no longer believed.
        db.execute(
            "INSERT OR IGNORE INTO federation_sent (id, to_host, sender, at)"
            " SELECT stream_id, to_host, sender, created FROM federation_outbox"
            " WHERE stream_id NOT LIKE 'refused:%'"
        )
    columns = {row[1] for row in db.execute("PRAGMA table_info(agents)")}
    if "quarantined" not in columns:
        db.execute("ALTER TABLE agents ADD COLUMN quarantined TEXT")
