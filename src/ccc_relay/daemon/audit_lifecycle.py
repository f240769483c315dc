"""The audit log's start and stop: open it, restore what relay.db kept, close it cleanly."""

from __future__ import annotations

import logging
import sqlite3

from ccc_relay.audit.log import AuditLog, StagedLine
from ccc_relay.daemon.sockets import group_id
from ccc_relay.policy.config import Config
from ccc_relay.store import Store

log = logging.getLogger("ccc_relay.daemon")


def open_audit_log(config: Config) -> AuditLog:
    """The audit log at ``audit.log_path``, its files group-readable with ``audit.log_group``."""
    if config.audit.log_group is not None:
        return AuditLog(
            config.audit.log_path, file_mode=0o640, group_id=group_id(config.audit.log_group)
        )
    return AuditLog(config.audit.log_path)


def restore_audit_outbox(store: Store, audit: AuditLog) -> None:
    """Copy committed audit lines a power cut kept from the files back into them.

    Raises AuditLogError when relay.db's outbox does not continue the log.
    """
    rows = [StagedLine(*row) for row in store.audit_outbox()]
    if not rows:
        return
    audit.restore(rows)
    store.trim_audit_outbox(audit.seq)  # one statement: its own transaction


def close_audit(store: Store, audit: AuditLog) -> None:
    """At shutdown: fsync the audit file, then forget the outbox lines it now holds."""
    try:
        store.trim_audit_outbox(audit.sync_owed()())
    except (OSError, sqlite3.Error) as exc:  # kept lines are restored at the next start
        log.error("audit: could not fsync the log at shutdown: %s", exc)
    audit.close()
