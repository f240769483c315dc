"""The hash-chained audit log: one JSON line per decision.

``AuditRecord`` (what a decision hands the writer) imports no file code, so the
relay core can build records; the writer is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccc_relay.audit.records import AuditRecord

if TYPE_CHECKING:
    from ccc_relay.audit.files import GENESIS
    from ccc_relay.audit.log import AuditLog

__all__ = ["GENESIS", "AuditLog", "AuditRecord"]


def __getattr__(name: str) -> Any:
    if name == "AuditLog":
        from ccc_relay.audit.log import AuditLog

        return AuditLog
    if name == "GENESIS":
        from ccc_relay.audit.files import GENESIS

        return GENESIS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
