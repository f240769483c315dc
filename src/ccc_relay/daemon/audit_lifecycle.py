"""The audit log's start and stop: open it with its seal key, restore what relay.db
kept, check it against relay.db's recorded head (tamper alarms), close it cleanly.

Unacknowledged tamper alarms are kept in relay.db (``meta.audit_alarms``, a
JSON list) for ``ccc status``; ``ccc audit acknowledge`` removes one there and
writes a ``tamper_alarm_acknowledged`` line, after which verify accepts it. A
clean stop records its head as ``meta.audit_clean_stop``; the next start reads
and clears it: lines after that head were not written by the relay.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ccc_relay.audit.log import AuditLog, StagedLine
from ccc_relay.audit.recorded import CLEAN_STOP, Head
from ccc_relay.audit.sealing import SEED_FILE, Sealer
from ccc_relay.daemon.sockets import group_id
from ccc_relay.policy.config import Config
from ccc_relay.store import Store
from ccc_relay.store.ops import StoreOp

log = logging.getLogger("ccc_relay.daemon")

ALARMS_META = "audit_alarms"


def open_audit_log(config: Config) -> AuditLog:
    """The audit log at ``audit.log_path``, its files group-readable with
    ``audit.log_group``, sealing with the seal key in the state dir (made on first start).

    Raises AuditLogError, SealKeyError (a damaged or exposed seal key file) and OSError.
    """
    if config.audit.log_group is not None:
        audit = AuditLog(
            config.audit.log_path, file_mode=0o640, group_id=group_id(config.audit.log_group)
        )
    else:
        audit = AuditLog(config.audit.log_path)
    try:
        audit.sealer = Sealer.open(config.state_dir)
    except BaseException:
        audit.close()
        raise
    if (config.state_dir / SEED_FILE).exists():
        log.warning(
            "the audit seal key has not been exported: run 'ccc audit seal-key export' and keep "
            "its line off this host; until then sealing cannot prove anything"
        )
    return audit


def restore_audit_outbox(store: Store, audit: AuditLog, now: float | None = None) -> None:
    """At start: copy committed audit lines a power cut kept from the files back into
    them, then check the log against relay.db's recorded head and the seal key.

    A mismatch raises a tamper alarm (see ``audit/tamper.py``): a chained
    line, a CRITICAL log line and an entry in relay.db's ``audit_alarms``.
    Raises AuditLogError when relay.db's outbox does not continue the log.
    """
    now = time.time() if now is None else now
    rows = [StagedLine(*row) for row in store.audit_outbox()]
    if rows:
        audit.restore(rows)
        store.trim_audit_outbox(audit.seq)  # one statement: its own transaction
    recorded = _recorded_head(store)
    clean = recorded is not None and store.get_meta(CLEAN_STOP) == str(recorded)
    raised = []
    if (alarm := audit.check_recorded_head(recorded, now, stopped_cleanly=clean)) is not None:
        raised.append(alarm)
    raised += audit.check_seal_state(now)
    moved = recorded is None or (audit.seq, audit.head) != (recorded.seq, recorded.hash)
    if moved or store.get_meta(CLEAN_STOP):
        # Lines written here (alarms, seal_key_created) are committed like any other;
        # and from now on a stop is not clean until close_audit says so.
        store.begin()
        try:
            store.set_meta("audit_head", f"{audit.seq} {audit.head}")
            store.set_meta(CLEAN_STOP, "")
            if raised:
                store.set_meta(ALARMS_META, json.dumps(read_alarms(store) + raised))
            store.commit()
        except BaseException:
            store.rollback()
            raise


def _recorded_head(store: Store) -> Head | None:
    text = store.get_meta("audit_head")
    if text is None:
        return None
    try:
        return Head.parse(text)
    except ValueError as exc:
        log.error("relay.db's audit head is malformed (%s); the log is not checked against it", exc)
        return None


def read_alarms(store: Store) -> list[dict[str, Any]]:
    """The unacknowledged tamper alarms relay.db keeps, oldest first."""
    text = store.get_meta(ALARMS_META)
    if not text:
        return []
    try:
        alarms = json.loads(text)
    except ValueError:
        return [{"seq": None, "reason": "unreadable", "detail": f"{ALARMS_META}: {text[:200]}"}]
    return [a for a in alarms if isinstance(a, dict)] if isinstance(alarms, list) else []


@dataclass(frozen=True, slots=True)
class ReadAuditAlarms(StoreOp[list[dict[str, Any]]]):
    """The unacknowledged tamper alarms (for ``status``)."""

    def apply(self, store: Store) -> list[dict[str, Any]]:
        return read_alarms(store)


@dataclass(frozen=True, slots=True)
class AcknowledgeAuditAlarm(StoreOp[dict[str, Any] | None]):
    """Forget the alarm at ``seq`` (its acknowledgement line rides in the same commit);
    the alarm, or None when relay.db keeps no such alarm."""

    seq: int

    def apply(self, store: Store) -> dict[str, Any] | None:
        alarms = read_alarms(store)
        found = next((a for a in alarms if a.get("seq") == self.seq), None)
        if found is not None:
            store.set_meta(ALARMS_META, json.dumps([a for a in alarms if a is not found]))
        return found


def close_audit(store: Store, audit: AuditLog) -> None:
    """At shutdown: fsync the audit file, then forget the outbox lines it now holds;
    destroy the last sealed epoch's key once relay.db committed its seal; record the
    clean stop when relay.db's head is the log's last line."""
    try:
        store.trim_audit_outbox(audit.sync_owed()())
        recorded = _recorded_head(store)
        if recorded is not None:
            audit.settle_seal(recorded.seq)
            if (recorded.seq, recorded.hash) == (audit.seq, audit.head):
                store.set_meta(CLEAN_STOP, str(recorded))
    except (OSError, sqlite3.Error) as exc:  # kept lines are restored at the next start
        log.error("audit: could not fsync the log at shutdown: %s", exc)
    audit.close()
