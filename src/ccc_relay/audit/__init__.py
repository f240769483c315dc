"""The hash-chained audit log: one JSON line per decision."""

from ccc_relay.audit.files import GENESIS
from ccc_relay.audit.log import AuditLog, AuditRecord

__all__ = ["GENESIS", "AuditLog", "AuditRecord"]
