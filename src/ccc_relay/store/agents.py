"""Who the relay knows: registered agents, the policy rules added at run time, sessions.

Removing an agent removes everything that names it -- rules, group
memberships, sessions, queued and held messages -- in the caller's transaction.

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ccc_relay.store.records import AgentRecord, SessionRecord


class AgentRegistry:
    # Provided by Store.
    _db: sqlite3.Connection

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
        """Remove an agent with its rules, group memberships, sessions and queued messages."""
        cur = self._db.execute("DELETE FROM agents WHERE name = ?", (name,))
        self._db.execute("DELETE FROM rules WHERE sender = ? OR recipient = ?", (name, name))
        self._db.execute("DELETE FROM group_members WHERE member = ?", (name,))
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
            "SELECT id, agent, created, expires, last_seq FROM sessions WHERE expires > ?"
            " ORDER BY created",
            (now,),
        )
        return [SessionRecord(*row) for row in rows]

    def update_session_seqs(self, updates: Iterable[tuple[str, int]]) -> None:
        # Committed with the messages a session sent; a session's seq only moves forward.
        self._db.executemany(
            "UPDATE sessions SET last_seq = ? WHERE id = ? AND last_seq < ?",
            [(seq, sid, seq) for sid, seq in updates],
        )

    def delete_expired_sessions(self, now: float) -> int:
        return self._db.execute("DELETE FROM sessions WHERE expires <= ?", (now,)).rowcount

    def delete_sessions(self, ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM sessions WHERE id = ?", [(sid,) for sid in ids])

    def delete_sessions_of(self, agent: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE agent = ?", (agent,))
