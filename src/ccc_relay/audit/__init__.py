"""The hash-chained audit log: one JSON line per decision."""

from ccc_relay.audit.log import GENESIS, AuditLog, AuditRecord

__all__ = ["GENESIS", "AuditLog", "AuditRecord"]
